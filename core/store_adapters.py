"""The store's adapter records: register a PEFT folder (trained, imported or composed) from its files, list
them, and find one by id or name. A mixin of `Store`, which supplies the connection (`_write`, `_query`) and the
runs (`get_run`); kept apart so the store file stays readable."""

from pathlib import Path

from core.run_status import now_iso
from core.store_errors import AdapterNotFound
from core.store_schema import encode_row

ADAPTER_SOURCES = ("trained", "imported", "composed")


class AdapterRecords:
    def register_adapter(
        self, path: str | Path, run_id: str | None = None, source: str = "trained", name: str | None = None
    ) -> dict:
        """Record the adapter folder at `path` from its files; registering the same folder again refreshes
        its figures instead of adding a second row (an import of it keeps its origin). The name defaults to the
        run's name, else the folder's."""
        from core.peft_format import inspect_adapter  # imports torch: only the commands that touch adapters pay

        if source not in ADAPTER_SOURCES:
            raise ValueError(f"adapter source must be one of {ADAPTER_SOURCES}, not {source!r}")
        folder = Path(path).expanduser().resolve()
        info = inspect_adapter(folder)
        figures = {
            "run_id": run_id,
            "base_model": info.base_model,
            "rank": max(info.ranks, default=None),
            "alpha": info.alpha,
            "targets": info.targets,
            "parameters": info.parameters,
            "size_bytes": info.size_bytes,
            "source": source,
        }
        with self._write() as db:
            default_name = self.get_run(run_id)["name"] if run_id else folder.name
            existing = list(db.query("SELECT id FROM adapters WHERE path = ?", (str(folder),)))
            if existing:
                adapter_id = existing[0]["id"]
                if source == "imported":  # importing a folder already known keeps where it came from (its run)
                    figures = {key: value for key, value in figures.items() if key not in ("run_id", "source")}
                db["adapters"].update(adapter_id, encode_row("adapters", {**figures, **({"name": name} if name else {})}))
            else:
                row = {**figures, "name": name or default_name, "path": str(folder), "created": now_iso()}
                adapter_id = db["adapters"].insert(encode_row("adapters", row)).last_pk
            return self._query("adapters", "SELECT * FROM adapters WHERE id = ?", (adapter_id,))[0]

    def import_adapter(self, folder: str | Path) -> dict:
        """Register an existing PEFT adapter folder (adapter_config.json + adapter_model.safetensors)."""
        return self.register_adapter(Path(folder).expanduser(), source="imported")  # its reader names what is wrong

    def adapters(self) -> list[dict]:
        """All registered adapters, newest first."""
        return self._query("adapters", "SELECT * FROM adapters ORDER BY created DESC, id DESC")

    def find_adapter(self, reference: str) -> dict:
        """The registered adapter with this id or (unique) name; AdapterNotFound naming the way out otherwise."""
        column = "id" if reference.isdigit() else "name"
        found = self._query("adapters", f"SELECT * FROM adapters WHERE {column} = ? ORDER BY id", (reference,))
        if len(found) == 1:
            return found[0]
        if found:
            ids = ", ".join(str(row["id"]) for row in found)
            raise AdapterNotFound(f"Several adapters are named {reference!r} (ids {ids}). Pass the id instead; "
                                  "see them with `python launch.py adapters list`.")
        raise AdapterNotFound(f"No run or registered adapter is called {reference!r}. See the run ids with "
                              "`python launch.py runs` and the adapters with `python launch.py adapters list`, or "
                              "pass an adapter folder.")
