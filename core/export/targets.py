"""What each base model found under a folder will do, for the Train tab's picker and `launch.py models`: its family
and size and whether it trains, with QLoRA and per-example packing (core.models.discover), and what a GGUF export
of an adapter trained on it can write.

The GGUF column asks core.export.gguf_families.family_of (its FAMILIES and what it does not yet write, such as rope
scaling) at call time, so a family added there shows here with no change.
"""

from dataclasses import asdict, dataclass
from pathlib import Path

from core.export import llamacpp
from core.export.gguf import LLAMA_CPP_TYPES, WRITTEN_TYPES
from core.export.gguf_families import GgufExportError, family_of
from core.models.discover import scan_models
from core.models.found import FoundModel

COLUMNS = {"name": "Name", "family": "Family", "size": "Size", "train": "Train", "qlora": "QLoRA (nf4)",
           "packing": "Packing", "gguf": "GGUF export"}
MERGED_ONLY = "merged folder only"


@dataclass(frozen=True)
class ModelRow:
    """One found model, each column as text; `path` is what the base-model setting takes."""

    name: str  # the path below the scanned folder
    family: str
    size: str
    train: str
    qlora: str
    packing: str
    gguf: str
    path: str
    trainable: bool

    def as_dict(self) -> dict:
        return asdict(self)


def base_model_rows(folder: str | Path) -> tuple[list[ModelRow], list[str]]:
    """A row per model under `folder`, and notes on what the scan left out (ModelSourceError when `folder` is not
    a folder)."""
    scan = scan_models(folder)
    return [_row(found, scan.folder) for found in scan.models], scan.notes


def gguf_export_types(config) -> str:
    """The GGUF types an export writes for a model with this config, or MERGED_ONLY when it writes none."""
    try:
        family_of(config)
    except GgufExportError:
        return MERGED_ONLY
    if llamacpp.available():
        return ", ".join([*WRITTEN_TYPES, *LLAMA_CPP_TYPES])
    return f"{', '.join(WRITTEN_TYPES)} ({', '.join(LLAMA_CPP_TYPES)} with llama-cpp-python)"


def _row(found: FoundModel, folder: Path) -> ModelRow:
    name = str(found.path.relative_to(folder)) if found.path != folder else found.path.name
    return ModelRow(name=name, family=found.family or "?", size=_size(found), train=found.training(),
                    qlora=found.qlora(), packing=found.packing(),
                    gguf="" if found.problem else gguf_export_types(found.config), path=str(found.path.resolve()),
                    trainable=not found.problem)


def _size(found: FoundModel) -> str:
    parts = []
    if found.parameters:
        count = found.parameters
        parts.append(f"{count / 1e9:.1f} B parameters" if count >= 1e9 else f"{count / 1e6:.1f} M parameters")
    if found.weight_bytes:
        megabytes = found.weight_bytes / 2**20
        shown = f"{megabytes / 1024:.1f} GB" if megabytes >= 1024 else f"{megabytes:,.1f} MB"
        parts.append(f"{shown} {found.quantization}".rstrip())
    return " · ".join(parts)
