"""The engine stays an engine: nothing in core/ imports the UI (app/) or the peft package (a test-only oracle)."""

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "core"


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_core_imports_neither_app_nor_peft():
    offenders = {
        str(path.relative_to(CORE.parent)): sorted(n for n in imported_modules(path) if n.split(".")[0] in ("app", "peft"))
        for path in CORE.rglob("*.py")
    }
    offenders = {path: names for path, names in offenders.items() if names}
    assert len(list(CORE.rglob("*.py"))) > 20
    assert offenders == {}
