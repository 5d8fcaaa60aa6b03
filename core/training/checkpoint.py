"""Training checkpoints that resume exactly and never appear half-written.

    run_dir/checkpoints/step-000050/
        trainable.safetensors   every trainable tensor, by parameter name (exact restore)
        optimizer.safetensors   the optimizer's tensors (Adam moments, step counters)
        rng.safetensors         torch CPU (and CUDA) random states, so dropout continues identically
        state.json              step, data position, optimizer hyper-parameters, running figures
        adapter/                the adapter at this step in PEFT format, usable on its own

A checkpoint is written into a hidden temporary folder, every file fsynced, then renamed into place:
a crash or a full disk mid-save leaves the previous checkpoint as it was. Nothing here unpickles.
"""

import errno
import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from core.errors import LoraForgeError
from core.lora.peft_format import save_adapter
from core.models.safetensors_file import save_tensors

CHECKPOINTS = "checkpoints"
_STEP_FOLDER = re.compile(r"^step-(\d+)$")


class CheckpointError(LoraForgeError):
    """A checkpoint could not be written or read."""


def save_checkpoint(
    run_dir: Path, step: int, model: nn.Module, adapter: str, optimizer: torch.optim.Optimizer, state: dict, keep: int
) -> Path:
    """Write checkpoint `step` atomically, then drop all but the newest `keep` checkpoints."""
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    staging = root / f".step-{step:06d}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir()
        save_tensors(_trainable_tensors(model), staging / "trainable.safetensors")
        tensors, hyper = _flatten_optimizer(optimizer)
        save_tensors(tensors, staging / "optimizer.safetensors")
        save_tensors(rng_states(), staging / "rng.safetensors")
        (staging / "state.json").write_text(json.dumps({**state, "step": step, "optimizer": hyper}, indent=1))
        save_adapter(model, adapter, staging / "adapter")
        _fsync_tree(staging)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
        _fsync_dir(root)
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        previous = newest_checkpoint(run_dir)
        kept = f"The previous checkpoint ({previous.name}) is intact." if previous else "No earlier checkpoint exists."
        cause = "The disk is full" if error.errno == errno.ENOSPC else f"Writing failed ({error.strerror or error})"
        raise CheckpointError(f"{cause} while saving the checkpoint at step {step} in {root}. {kept} "
                              "Free some space, then resume the run.") from None
    for old in checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    found = (
        [p for p in root.iterdir() if _STEP_FOLDER.match(p.name) and (p / "state.json").is_file()]
        if root.is_dir() else []
    )
    return sorted(found, key=lambda p: int(_STEP_FOLDER.match(p.name).group(1)))


def newest_checkpoint(run_dir: Path) -> Path | None:
    found = checkpoints(run_dir)
    return found[-1] if found else None


def resume_step(run_dir: Path) -> int:
    """The step a (re)started run continues after: its newest checkpoint's, 0 when it has none (it starts over)."""
    newest = newest_checkpoint(run_dir)
    return int(_STEP_FOLDER.match(newest.name).group(1)) if newest else 0


def load_checkpoint(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Restore trainable tensors, optimizer and random states from `folder`; return its state.json."""
    try:
        state = json.loads((folder / "state.json").read_text())
        trainable = load_file(folder / "trainable.safetensors")
        optimizer_tensors = load_file(folder / "optimizer.safetensors")
        rng = load_file(folder / "rng.safetensors")
    except (OSError, ValueError) as error:
        raise CheckpointError(f"Checkpoint {folder} cannot be read ({error}). Delete that folder to resume "
                              "from the one before it.") from None
    parameters = dict(model.named_parameters())
    missing = sorted(set(trainable) - set(parameters))
    if missing:
        raise CheckpointError(f"Checkpoint {folder} holds tensors this model lacks ({', '.join(missing[:3])}); "
                              "it belongs to another configuration.")
    with torch.no_grad():
        for name, tensor in trainable.items():
            parameters[name].copy_(tensor)
    saved = _unflatten_optimizer(optimizer_tensors, state["optimizer"])
    _keep_implementation(saved, optimizer)
    optimizer.load_state_dict(saved)
    restore_rng_states(rng)
    return state


def _trainable_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state dict into tensors (for safetensors) and plain values (for JSON), keyed by
    paths like `3/exp_avg`; nested dicts (bitsandbytes' 8-bit optimizers keep their quantization state in
    one) give longer paths."""
    full = optimizer.state_dict()
    tensors, plain = {}, {}

    def visit(prefix: str, values: dict) -> None:
        for key, value in values.items():
            path = f"{prefix}/{key}"
            if isinstance(value, dict):
                visit(path, value)
            elif isinstance(value, torch.Tensor):
                # always a copy: bitsandbytes shares its code tables between parameters, which safetensors refuses
                tensors[path] = value.detach().to("cpu", copy=True, memory_format=torch.contiguous_format)
            else:
                plain[path] = value

    for index, values in full["state"].items():
        visit(str(index), values)
    return tensors, {"param_groups": full["param_groups"], "plain": plain}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], hyper: dict) -> dict:
    state: dict[int, dict] = {}
    for flat, value in [*tensors.items(), *hyper["plain"].items()]:
        index, *keys = flat.split("/")
        node = state.setdefault(int(index), {})
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    return {"state": state, "param_groups": hyper["param_groups"]}


def _keep_implementation(saved: dict, optimizer: torch.optim.Optimizer) -> None:
    """How the optimizer computes (one fused kernel or a loop) is this version's choice, not the run's state, so a
    checkpoint written by an older version resumes with the current one rather than the one it was saved with."""
    for saved_group, live_group in zip(saved["param_groups"], optimizer.param_groups):
        for key in ("fused", "foreach"):
            if key in live_group:
                saved_group[key] = live_group[key]


def rng_states() -> dict[str, torch.Tensor]:
    """The random generators' states (CPU, and each GPU's), as a checkpoint stores them."""
    states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        states.update({f"cuda{i:02d}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return states


def restore_rng_states(states: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(states["cpu"])
    if torch.cuda.is_available():
        torch.cuda.set_rng_state_all([states[key] for key in sorted(states) if key.startswith("cuda")])


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    for path in [folder, *[p for p in folder.rglob("*") if p.is_dir()]]:
        _fsync_dir(path)


def _fsync_dir(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
