"""The engine stays an engine: nothing in core/ imports the UI (app/) or the peft package (a test-only oracle);
and what the app needs at run time is declared in pyproject.toml, not brought in by the test tools."""

import ast
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "core"
# Needed at run time but never imported by our code: transformers' GGUF loader (the default model's first
# start) refuses to run without accelerate.
NEEDED_UNIMPORTED = {"accelerate"}


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


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[(]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_what_the_app_imports_is_a_runtime_dependency_not_a_test_tool():
    """`make run` installs the runtime dependencies only; `make test` adds peft, which brings accelerate, so a
    package missing from the runtime list passes every test and fails on a user's fresh machine."""
    declared = {_name(r) for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    brought = declared | {_name(r) for d in declared for r in metadata.requires(d) or [] if "extra ==" not in r}
    modules = set().union(*(imported_modules(p) for folder in ("core", "app") for p in (ROOT / folder).rglob("*.py")))
    tops = {m.split(".")[0] for m in modules} - set(sys.stdlib_module_names) - {"core", "app"}
    distributions = metadata.packages_distributions()
    imported = {_name(d) for top in tops for d in distributions[top]}
    assert "torch" in imported and "gradio" in imported
    assert imported - brought == set()
    assert NEEDED_UNIMPORTED - declared == set()
