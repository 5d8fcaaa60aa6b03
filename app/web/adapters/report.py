"""How the Adapters & Export tab shows the store's adapters and exports: tables, and the report of one export
(its stage while it runs, its parity figures when done, a failed check or an error in orange)."""

from pathlib import Path

import pandas as pd

from app.web.readable import servable
from core.export.parity import greedy_verdict
from core.lora.targets import targets_text

ADAPTER_COLUMNS = ["Id", "Name", "Run", "Base", "Rank", "Alpha", "Targets", "Parameters", "Size"]
EXPORT_COLUMNS = ["Id", "Format", "Adapter", "Status", "Largest logit diff", "Greedy", "Template", "Path", "Created"]
WARNING_STYLE = "color:#c2410c;font-weight:600"
FINISHED = ("done", "parity_failed")


def adapters_frame(adapters: list[dict]) -> pd.DataFrame:
    rows = [[a["id"], a["name"], a["run_id"] or a["source"], a["base_model"], a["rank"], a["alpha"],
             targets_text(a["targets"]), _count(a["parameters"]), size_text(a["size_bytes"])] for a in adapters]
    return pd.DataFrame(rows, columns=ADAPTER_COLUMNS)


def _count(value: object) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value or "")


def exports_frame(exports: list[dict], adapters: list[dict]) -> pd.DataFrame:
    names = {a["id"]: a["name"] for a in adapters}
    rows = []
    for e in exports:
        check = ((e["parity"] or {}).get("checks") or [{}])[0]
        status = f"running · {e['progress']}" if e["status"] == "running" and e["progress"] else e["status"]
        rows.append([e["id"], e["format"], _subject(e, names), status,
                     _figure(check.get("max_logit_diff")), greedy_verdict(check),
                     _yes(check.get("template_same"), "kept", "CHANGED"), e["path"], e["created"]])
    return pd.DataFrame(rows, columns=EXPORT_COLUMNS)


def _subject(export: dict, names: dict[int, str]) -> str:
    """What was exported: the registered adapter, else the run, else what the job was asked for."""
    if export["adapter_id"] in names:
        return names[export["adapter_id"]]
    request = export["request"] or {}
    return (export["run_id"] or request.get("name")
            or ", ".join(Path(reference).name for reference in request.get("adapters", [])) or "several")


def report_markdown(export: dict | None) -> str:
    """One export from the store: its stage while running, why it failed, or where it went and how it compares
    with the live adapter; a failure stands out in orange."""
    if export is None:
        return ""
    verbs = {"composed": "Composed the adapter", "extracted": "Extracted the adapter"}
    verb = verbs.get(export["format"], f"Exported `{export['format']}`")
    if export["status"] == "running":
        return f"**Running** export {export['id']} (`{export['format']}` to `{export['path']}`): {export['progress']} …"
    if export["status"] not in FINISHED:
        return f'<p style="{WARNING_STYLE}">⚠ Export {export["id"]} ({export["format"]}) failed: {export["error"]}</p>'
    lines = [f"**{verb}** to `{export['path']}` ({size_text(export['size_bytes'])}) · status **{export['status']}**",
             "", "| Check | Largest logit difference (tolerance) | Greedy answers | Chat template |",
             "|---|---|---|---|"]
    checks = export["parity"]["checks"]
    for check in checks:
        lines.append(f"| {check['target']} | {_figure(check['max_logit_diff'])} ({_figure(check['tolerance'])}) | "
                     f"{greedy_verdict(check)} ({check['greedy_matches']}/{check['prompts']}"
                     f" prompts) | {_yes(check['template_same'], 'kept', 'CHANGED')} |")
    notes = [f"{check['target']}: {note}" for check in checks for note in check.get("notes", [])]
    problems = [problem for check in checks for problem in check.get("problems", [])]
    lines += ["", *(f"Note: {note}" for note in notes)]
    lines += [*(f'<p style="{WARNING_STYLE}">⚠ parity check failed: {problem}</p>' for problem in problems)]
    return "\n".join(lines)


def download_files(export: dict | None) -> list[str]:
    """The files worth downloading from a finished export: the GGUF with its Ollama Modelfile, or the PEFT zip;
    a merged folder has none (it is many files, used where it lies)."""
    if export is None or export["status"] not in FINISHED:
        return []
    path = Path(export["path"])
    if not servable(path):
        return []  # written where the person chose: used where it lies, not served
    if path.is_file():
        return [str(path)]
    if not path.is_dir():
        return []
    ggufs = sorted(path.glob("*.gguf"))
    return [str(file) for file in ggufs + ([path / "Modelfile"] if ggufs and (path / "Modelfile").is_file() else [])]


def size_text(size_bytes: int | None) -> str:
    if size_bytes is None:
        return ""
    return f"{size_bytes / 2**10:,.0f} KB" if size_bytes < 2**20 else f"{size_bytes / 2**20:,.1f} MB"


def _figure(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2e}"


def _yes(value: bool | None, good: str, bad: str) -> str:
    return "" if value is None else (good if value else bad)
