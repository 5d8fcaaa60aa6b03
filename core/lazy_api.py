"""Package APIs that load on first use: each package's `__init__` names what it offers and where it lives,
and a name's module is imported only when someone uses that name. So `python -m core.jobs.worker supervisor`
and `launch.py runs` start without torch, while `from core.models import load_base_model` still works."""

import importlib
from collections.abc import Callable


def lazy_api(package: str, api: dict[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """`__getattr__` and `__dir__` for `package`, whose public names map to the submodule defining each."""

    def __getattr__(name: str) -> object:
        if name not in api:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{api[name]}"), name)

    def __dir__() -> list[str]:
        return sorted(api)

    return __getattr__, __dir__
