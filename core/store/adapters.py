"""The store's adapter records: record a PEFT folder (trained, imported or composed) with the figures its files
give (core.jobs.adapters reads them: the store never opens adapter files), list them, and find one by id or name.
A mixin of `Store`, which supplies the connection (`_write`, `_query`) and the
runs (`get_run`); kept apart so the store file stays readable."""

from pathlib import Path

from core.errors import NextStep
from core.store.errors import AdapterNotFound
from core.store.run_status import now_iso
from core.store.schema import encode_row

ADAPTER_SOURCES = ("trained", "imported", "composed", "extracted")


class AdapterRecords:
    def record_adapter(self, folder: Path, figures: dict, run_id: str | None = None, source: str = "trained",
                       name: str | None = None) -> dict:
        """Record the adapter at `folder` with the figures its files give (base_model, rank, alpha, targets,
        parameters, size_bytes); recording the same folder again refreshes its figures instead of adding a second
        row (an import of it keeps its origin). The name defaults to the run's name, else the folder's."""
        if source not in ADAPTER_SOURCES:
            raise ValueError(f"adapter source must be one of {ADAPTER_SOURCES}, not {source!r}")
        figures = {**figures, "run_id": run_id, "source": source}
        with self._write() as db:
            default_name = self.get_run(run_id)["name"] if run_id else folder.name
            existing = list(db.query("SELECT id FROM adapters WHERE path = ?", (str(folder),)))
            if existing:
                adapter_id = existing[0]["id"]
                if source == "imported":  # importing a folder already known keeps where it came from (its run)
                    figures = {key: value for key, value in figures.items() if key not in ("run_id", "source")}
                db["adapters"].update(
                    adapter_id, encode_row("adapters", {**figures, **({"name": name} if name else {})})
                )
            else:
                row = {**figures, "name": name or default_name, "path": str(folder), "created": now_iso()}
                adapter_id = db["adapters"].insert(encode_row("adapters", row)).last_pk
            return self._query("adapters", "SELECT * FROM adapters WHERE id = ?", (adapter_id,))[0]

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
            raise AdapterNotFound(f"Several adapters are named {reference!r} (ids {ids}). Pass the id instead.",
                                  NextStep("adapters"))
        raise AdapterNotFound(f"No run or registered adapter is called {reference!r}. Pass a run id, a registered "
                              "adapter's name or id, or an adapter folder.", NextStep("adapters"))
