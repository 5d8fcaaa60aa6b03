"""The engine stays an engine: its packages import one way only (LAYERS), nothing in core/ imports the UI (app/)
or the peft package (a test-only oracle); and what the app needs at run time is declared in pyproject.toml, not
brought in by the test tools."""

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


# core's packages from the bottom up: a package may import those below it, never one beside or above it. The
# modules directly in core/ (errors, paths, hub, lazy_api) are the base every package may import.
LAYERS = (("models",), ("lora", "data"), ("chat",), ("training",), ("store",), ("jobs",), ("export", "serve"))


def backward_edges(core: Path) -> list[str]:
    """Every import in the package tree `core` that points beside or above its own package (or at a package
    that LAYERS does not know), as 'module -> imported module'."""
    rank = {package: level for level, packages in enumerate(LAYERS, start=1) for package in packages}
    edges = []
    for path in sorted(core.rglob("*.py")):
        parts = path.relative_to(core).with_suffix("").parts
        own = parts[0] if len(parts) > 1 else None  # None: a base module directly in core/
        for name in sorted(imported_modules(path)):
            target = name.split(".")
            if target[0] != "core" or len(target) < 2:
                continue
            package = target[1] if (core / target[1]).is_dir() else None
            if package == own or package is None and own is not None:
                continue  # within its own package, or the base
            if own is None or package not in rank or own not in rank or rank[package] >= rank[own]:
                edges.append(f"{'.'.join(('core', *parts))} -> {name}")
    return edges


def test_core_packages_import_only_the_layers_below():
    assert {path.name for path in CORE.iterdir() if path.is_dir() and path.name != "__pycache__"} == {
        package for packages in LAYERS for package in packages}
    assert backward_edges(CORE) == []


def test_the_layer_check_finds_an_edge_that_runs_backwards(tmp_path):
    core = tmp_path / "core"
    for package in ("models", "store", "jobs"):
        (core / package).mkdir(parents=True)
        (core / package / "__init__.py").write_text("")
    (core / "errors.py").write_text("")
    (core / "store" / "database.py").write_text("from core.errors import LoraForgeError\nfrom core.models import x\n")
    (core / "jobs" / "runs.py").write_text("from core.store.database import Store\nfrom core.jobs import y\n")
    assert backward_edges(core) == []
    (core / "models" / "loading.py").write_text("def load():\n    from core.jobs.runs import create_run\n")
    (core / "errors.py").write_text("import core.store\n")
    assert backward_edges(core) == ["core.errors -> core.store", "core.models.loading -> core.jobs.runs"]


def test_core_imports_neither_app_nor_peft():
    offenders = {
        str(path.relative_to(CORE.parent)): sorted(
            n for n in imported_modules(path) if n.split(".")[0] in ("app", "peft")
        )
        for path in CORE.rglob("*.py")
    }
    offenders = {path: names for path, names in offenders.items() if names}
    assert len(list(CORE.rglob("*.py"))) > 20
    assert offenders == {}


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[(]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_what_the_app_imports_is_a_runtime_dependency_not_a_test_tool():
    """`make run` installs the runtime dependencies only; `make test` adds peft, which brings accelerate, so a
    package missing from the runtime list passes every test and fails on a user's fresh machine. An optional
    extra other than dev (llamacpp) may be imported too: the code checks that it is installed and says how to
    add it when it is not (tests/test_export_llamacpp.py)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_name(r) for r in project["dependencies"]}
    optional = {_name(r) for extra, rs in project["optional-dependencies"].items() if extra != "dev" for r in rs}
    brought = declared | optional | {_name(r) for d in declared for r in metadata.requires(d) or []
                                     if "extra ==" not in r}
    modules = set().union(*(imported_modules(p) for folder in ("core", "app") for p in (ROOT / folder).rglob("*.py")))
    tops = {m.split(".")[0] for m in modules} - set(sys.stdlib_module_names) - {"core", "app"}
    distributions = metadata.packages_distributions()
    imported = {_name(d) for top in tops for d in distributions[top]}
    assert "torch" in imported and "gradio" in imported
    assert imported - brought == set()
    assert NEEDED_UNIMPORTED - declared == set()
