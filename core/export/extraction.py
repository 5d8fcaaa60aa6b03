"""Extract an adapter from a full fine-tune and register it, with what the rank costs: the logits of base +
extracted adapter against the fine-tuned model itself on the parity prompts.

    extract(base, tuned, name, rank=16)       -> LORAFORGE_HOME/adapters/<name>, registered as "extracted"
    extract(base, tuned, name, energy=0.9)    -> per-layer ranks keeping 90% of each layer's energy

The adapter is written aside and renamed into place when complete (core.export.output), so a failure leaves
nothing behind and nothing registered.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from core import paths
from core.errors import LoraForgeError
from core.export.output import commit, staging
from core.export.parity import ModelOutputs, ParityCheck, compare_outputs, model_outputs
from core.jobs.adapters import register_adapter
from core.lora.extract import ExtractionReport, check_choice, extract_from_checkpoints
from core.lora.model import active_adapters
from core.lora.peft_format import load_adapter
from core.lora.targets import Targets
from core.models.loading import load_base_model, resolve_source
from core.store.database import Store

EXTRACTED = "extracted"
REPORTED_TOLERANCE = 1e-3  # of the largest |logit|: beyond it the check names the difference (it never fails)


@dataclass
class Extraction:
    report: ExtractionReport
    parity: ParityCheck
    adapter: dict


def rank_choice(rank: str, energy: float | None) -> tuple[int | None, float | None]:
    """(rank, energy) from what a person gave: a whole number, or 'auto' with an energy share."""
    rank = str(rank).strip().lower()
    if rank == "auto":
        if energy is None:
            raise LoraForgeError("A rank of 'auto' needs an energy share, the part of each layer's change to keep "
                                 "(e.g. 0.9).")
        return None, energy
    if energy is not None:
        raise LoraForgeError("An energy share goes with the rank 'auto'; give one or the other.")
    if not rank.isdigit():
        raise LoraForgeError(f"The rank {rank!r} is neither a whole number nor 'auto'. Use e.g. 16.")
    return int(rank), None


def check_extraction(base: str, tuned: str, name: str, rank: int | None, energy: float | None) -> Path:
    """The new adapter's folder, once the name is free, both models are local folders and the rank choice is
    valid: everything that can be wrong before any tensor is read (a background extraction checks it first)."""
    check_choice(rank, energy)
    folder = paths.named_path(paths.home() / "adapters", paths.slug(name), what="The adapter name")
    with Store() as store:
        if name.strip() in {row["name"] for row in store.adapters()}:
            raise LoraForgeError(f"An adapter named {name.strip()!r} already exists. Choose another name.")
    if folder.exists():
        raise LoraForgeError(f"{folder} already exists. Choose another name for the new adapter.")
    _local_folder(base, "base")
    _local_folder(tuned, "fine-tuned model")
    return folder


def extract(base: str, tuned: str, name: str, rank: int | None = None, energy: float | None = None,
            targets: Targets = "all-linear", progress: Callable[[str], None] | None = None) -> Extraction:
    """Extract, check against the tuned model, register; LoraForgeError naming the fix for any bad request."""
    say = progress or (lambda _line: None)
    folder = check_extraction(base, tuned, name, rank, energy)
    folder.parent.mkdir(exist_ok=True)
    with staging(folder) as tmp:
        say(f"Extracting from {tuned} against {base}")
        report = extract_from_checkpoints(_local_folder(base, "base"), _local_folder(tuned, "fine-tuned model"),
                                          tmp, rank=rank, energy=energy, targets=targets)
        say("Comparing base + extracted adapter with the fine-tuned model on the parity prompts")
        parity = _parity(base, tuned, tmp)
        commit(tmp, folder)
    with Store() as store:
        adapter = register_adapter(store, folder, source=EXTRACTED, name=name.strip())
    return Extraction(report, parity, adapter)


def _local_folder(source: str, what: str) -> Path:
    folder, _, _ = resolve_source(source)
    if not Path(folder).is_dir():
        raise LoraForgeError(f"The {what} {source} is not a local model folder; extraction reads safetensors files "
                             "tensor by tensor. Download it and pass its folder.")
    return Path(folder)


def _parity(base: str, tuned: str, adapter: Path) -> ParityCheck:
    tuned_model = load_base_model(tuned, dtype="fp32")
    reference: ModelOutputs = model_outputs(tuned_model.model, tuned_model.tokenizer)
    del tuned_model
    loaded = load_base_model(base, dtype="fp32")
    load_adapter(loaded.model, adapter, name=EXTRACTED, activate=False)
    with active_adapters(loaded.model, EXTRACTED):
        candidate = model_outputs(loaded.model, loaded.tokenizer)
    return compare_outputs(reference, candidate, EXTRACTED, REPORTED_TOLERANCE, greedy_required=False)
