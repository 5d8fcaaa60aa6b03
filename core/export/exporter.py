"""Export adapters as a merged Hugging Face folder, a GGUF file, or a PEFT adapter, each parity-checked.

One call does everything a front-end needs:

    result = export_adapters(["r-2024...", "path/to/adapter"], "gguf", "exports/my-model",
                             weights=[1.0, 0.5], gguf_type="q8_0", progress=print)
    result.status      "done" (every parity check passed) or "parity_failed" (export kept, check failed)
    result.parity      {"passed": ..., "checks": [{"target", "max_logit_diff", "greedy_agree", ...}]}
    result.warnings    one line per failed check, for the user to see

Outputs: merged -> a folder (config, safetensors in the base's precision or the one asked for, tokenizer, chat
template, generation config);
gguf -> a folder with `<name>.<type>.gguf` and an Ollama `Modelfile`; peft -> an adapter folder, or a
zip when `out` ends in .zip. The export is written aside and renamed into place when complete, and only
then recorded in the store, so a failure (full disk included) leaves neither files nor a record.
"""

import math
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from core.export import llamacpp
from core.export.gguf import GGUF_TYPES, LLAMA_CPP_TYPES, WRITTEN_TYPES, gguf_pre_tokenizer, write_gguf
from core.export.gguf_families import restore_rope
from core.export.merged import (
    AUTO_DTYPE,
    DEFAULT_SHARD_BYTES,
    AdapterChoice,
    load_with_adapters,
    save_merged,
    stored_dtype,
)
from core.export.modelfile import write_modelfile
from core.export.output import ExportError, check_target, commit, folder_bytes, staging
from core.export.parity import (
    LLAMA_CPP_TOLERANCES,
    RELATIVE_TOLERANCES,
    TOP1_MINIMUMS,
    ModelOutputs,
    ParityReport,
    compare_outputs,
    model_outputs,
)
from core.jobs.adapters import AdapterSource, adapter_source
from core.lora.compose import combine_adapters
from core.lora.model import active_adapters, active_gains, merge_and_unload
from core.lora.peft_format import CONFIG_FILE, WEIGHTS_FILE, load_adapter, save_adapter
from core.models.devices import DTYPES
from core.models.loading import DEFAULT_MODEL, LoadedModel, default_gguf_path
from core.store.database import Store

FORMATS = ("merged", "gguf", "peft")
STATUS_DONE = "done"
STATUS_PARITY_FAILED = "parity_failed"

Progress = Callable[[str], None]


@dataclass
class ExportResult:
    """What was written, where, and how it compares with the live adapter."""

    format: str
    path: str
    status: str
    parity: dict
    export_id: int
    size_bytes: int
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


def export_adapters(
    adapters: list[str],
    format: str,
    out: str | Path,
    weights: list[float] | None = None,
    gguf_type: str = "f16",
    base: str | None = None,
    force: bool = False,
    progress: Progress | None = None,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    export_id: int | None = None,
    merged_dtype: str = AUTO_DTYPE,
    on_written: Callable[[Store], dict] | None = None,
    rank: int | None = None,
) -> ExportResult:
    """Export one adapter, or the weighted sum of several, and check the export against the live model.

    Args:
        adapters: run ids or PEFT adapter folders.
        format: "merged", "gguf" or "peft".
        out: the output folder (a .zip path for a zipped PEFT adapter).
        weights: one weight per adapter (default 1.0 each).
        gguf_type: "f16" or "q8_0" (format "gguf" only).
        base: the base model; default: the one the adapters' runs were trained on, else the embedded default.
        force: replace an existing non-empty output.
        progress: called with a short line at each stage.
        max_shard_bytes: largest safetensors file of a merged folder; bigger models are sharded with an index.
        export_id: the store's row for this export when a background job made it beforehand; else one is added.
        merged_dtype: "auto" (the precision the base is stored in), "fp32", "bf16" or "fp16" (format "merged" only).
        on_written: called with the store once the files are in place, before the export is recorded as
            finished; the fields it returns join that record (a composition registers its adapter here, so no
            reader sees the job done before the adapter exists).
        rank: format "peft" only: compress the weighted sum to this rank by SVD (core.lora.compose); the
            parity check then reports what that costs instead of requiring agreement.
    """
    say = progress or (lambda _line: None)
    out, weights, sources = check_export(adapters, format, out, weights, gguf_type, force, merged_dtype)
    check_rank(rank, format)
    base = base or _common_base([source.trained_on for source in sources])
    choices = [AdapterChoice(source.folder, weight) for source, weight in zip(sources, weights)]

    say(f"Loading {base} in full precision with {len(choices)} adapter(s)")
    loaded = load_with_adapters(base, choices)
    say("Running the parity prompts through the live adapter")
    reference = model_outputs(loaded.model, loaded.tokenizer)
    with staging(out) as tmp:
        say(f"Writing the {format} export")
        if format == "peft":
            report, compression = _export_peft(loaded, choices, tmp, out, reference, rank)
        elif format == "merged":
            dtype = stored_dtype(loaded.facts.folder) if merged_dtype == AUTO_DTYPE else merged_dtype
            report = _export_merged(loaded, tmp, reference, say, max_shard_bytes, dtype)
        else:
            report = _export_gguf(loaded, tmp, out.name, gguf_type, _pre_tokenizer(base), reference, say)
        commit(tmp, out)
    status = STATUS_DONE if report.passed else STATUS_PARITY_FAILED
    label = export_label(format, gguf_type)
    size = folder_bytes(out)
    with Store() as store:
        one = sources[0] if len(sources) == 1 else AdapterSource(out)
        record = dict(format=label, path=str(out), adapter_id=one.adapter_id, run_id=one.run_id,
                      parity=report.to_json(), status=status, size_bytes=size)
        if on_written is not None:
            record.update(on_written(store))
        if export_id is None:
            export_id = store.add_export(**record)
        else:
            store.update_export(export_id, **record, progress=None)
    warnings = [f"parity check failed: {problem}" for problem in report.problems]
    if format == "peft" and rank is not None:
        warnings.append(f"compressed to rank {rank}: largest relative error of a layer's update {compression:.3g}")
    return ExportResult(record["format"], str(out), status, report.to_json(), export_id, size, warnings)


def export_label(format: str, gguf_type: str) -> str:
    """How the store and the page name an export: its format, with the weight type for a GGUF."""
    return f"gguf-{gguf_type}" if format == "gguf" else format


def check_export(
    adapters: list[str], format: str, out: str | Path, weights: list[float] | None, gguf_type: str, force: bool,
    merged_dtype: str = AUTO_DTYPE,
) -> tuple[Path, list[float], list[AdapterSource]]:
    """Everything about a request that can be wrong before any model loads: (output path, one weight per
    adapter, where each adapter is and what it was trained on). A background export runs this before it starts."""
    out = Path(os.path.abspath(Path(out).expanduser()))  # not resolved: a link given as --out is refused
    weights = _check_request(adapters, format, weights, gguf_type, merged_dtype)
    with Store() as store:
        # an export recorded at this path is LoRA Forge's even without the marker (written before there was one)
        check_target(out, force, recorded=any(row["path"] == str(out) for row in store.exports()))
        sources = [adapter_source(store, reference) for reference in adapters]
    for folder in (source.folder for source in sources):
        for required in (CONFIG_FILE, WEIGHTS_FILE):
            if not (folder / required).is_file():
                raise ExportError(
                    f"{folder} has no {required}, so it is not a PEFT adapter. Pass a run id or an adapter folder."
                )
    return out, weights, sources


def check_rank(rank: int | None, format: str) -> None:
    """A compression rank, where one is asked for: a whole number from 1, for a PEFT export or a composition."""
    if rank is None:
        return
    if format != "peft":
        raise ExportError(f"A rank applies to PEFT exports and compositions only, not to a {format} export.")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= 4096:
        raise ExportError(f"The rank {rank!r} is not a whole number from 1 to 4096. Choose e.g. 16, or leave it "
                          "empty for the exact sum.")


def _check_request(
    adapters: list[str], format: str, weights: list[float] | None, gguf_type: str, merged_dtype: str
) -> list[float]:
    if not adapters:
        raise ExportError("No adapter given. Pass --adapter RUN_ID or --adapter DIR (once per adapter).")
    if format not in FORMATS:
        raise ExportError(f"Unknown export format {format!r}. Choose one of: {', '.join(FORMATS)}.")
    if gguf_type not in GGUF_TYPES:
        raise ExportError(f"Unknown GGUF type {gguf_type!r}. Choose one of: {', '.join(GGUF_TYPES)}.")
    if format == "gguf" and gguf_type in LLAMA_CPP_TYPES and not llamacpp.available():
        raise ExportError(f"GGUF type {gguf_type} is made by llama.cpp's own quantizer, which is not installed. Add "
                          f"it with: {llamacpp.INSTALL_HINT}. Types {', '.join(WRITTEN_TYPES)} need nothing more.")
    if merged_dtype not in (AUTO_DTYPE, *DTYPES):
        raise ExportError(f"Unknown precision {merged_dtype!r} for a merged export. Choose one of: "
                          f"{', '.join((AUTO_DTYPE, *DTYPES))}.")
    if merged_dtype != AUTO_DTYPE and format != "merged":
        raise ExportError(f"A precision ({merged_dtype}) applies to merged exports only. A GGUF export's precision "
                          "is its GGUF type (--gguf-type, e.g. f16 or q4_k_m); a PEFT export keeps the adapter's fp32.")
    weights = list(weights) if weights is not None else [1.0] * len(adapters)
    if len(weights) != len(adapters):
        raise ExportError(f"{len(adapters)} adapter(s) but {len(weights)} weight(s). Give one weight per adapter.")
    if not all(math.isfinite(weight) for weight in weights):
        raise ExportError(f"The weights {', '.join(map(str, weights))} are not all finite numbers. Give each adapter "
                          "a number, e.g. 1, 0.5.")
    if not any(weights):
        raise ExportError("Every weight is 0, so the result would be the base model unchanged. Give at least one "
                          "adapter a weight other than 0.")
    return weights


def _common_base(trained_on: list[str | None]) -> str:
    known = sorted({base for base in trained_on if base})
    if len(known) > 1:
        raise ExportError(f"The adapters were trained on different base models ({', '.join(known)}); they cannot "
                          "be merged into one. Export them separately, or pass --base to choose one explicitly.")
    return known[0] if known else DEFAULT_MODEL


def _pre_tokenizer(base: str) -> str:
    """llama.cpp's pre-tokenizer name: the base GGUF's when the base came from one, else llama.cpp's default."""
    path = default_gguf_path() if base == DEFAULT_MODEL else Path(base).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        return gguf_pre_tokenizer(path) or "default"
    return "default"


def _export_merged(
    loaded: LoadedModel, tmp: Path, reference: ModelOutputs, say: Progress, max_shard_bytes: int, dtype: str
) -> ParityReport:
    """Merge in fp32, store in `dtype`, and check the folder as transformers reloads it (upcast to fp32)."""
    model = merge_and_unload(loaded.model)
    save_merged(model, loaded.tokenizer, tmp, max_shard_bytes, dtype)
    say(f"Reloading the merged {dtype} folder with transformers for the parity check")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32)
    candidate = model_outputs(reloaded, AutoTokenizer.from_pretrained(tmp))
    tolerance = RELATIVE_TOLERANCES["merged" if dtype == "fp32" else dtype]
    check = compare_outputs(reference, candidate, "merged", tolerance, greedy_required=dtype != "bf16")
    return ParityReport([check])


def _export_gguf(
    loaded: LoadedModel, tmp: Path, name: str, gguf_type: str, pre: str, reference: ModelOutputs, say: Progress
) -> ParityReport:
    """Write the GGUF (llama.cpp quantizes the k-quants from an f16 file), then check it in transformers and, where
    llama-cpp-python is installed, in llama.cpp itself: the reader people deploy with."""
    model = merge_and_unload(loaded.model)
    tmp.mkdir()
    gguf_name = f"{name}.{gguf_type}.gguf"
    if gguf_type in LLAMA_CPP_TYPES:
        f16 = tmp / f".{name}.f16.gguf.partial"  # removed before the export is renamed into place
        try:
            write_gguf(model, loaded.tokenizer, f16, "f16", name=name, pre_tokenizer=pre)
            say(f"Quantizing to {gguf_type} with llama.cpp")
            llamacpp.quantize(f16, tmp / gguf_name, gguf_type)
        finally:
            f16.unlink(missing_ok=True)
    else:
        write_gguf(model, loaded.tokenizer, tmp / gguf_name, gguf_type, name=name, pre_tokenizer=pre)
    write_modelfile(tmp, gguf_name, loaded.tokenizer)
    say("Reloading the GGUF with transformers for the parity check")
    config = AutoConfig.from_pretrained(tmp, gguf_file=gguf_name)
    notes = restore_rope(config, loaded.model.config)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp, gguf_file=gguf_name, config=config, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tmp, gguf_file=gguf_name)
    exact = gguf_type in ("f16", "bf16")
    top1 = TOP1_MINIMUMS.get(gguf_type)
    checks = [compare_outputs(reference, model_outputs(reloaded, tokenizer), f"gguf-{gguf_type}",
                              RELATIVE_TOLERANCES[gguf_type], greedy_required=gguf_type == "f16", top1_minimum=top1)]
    checks[0].notes = notes
    if llamacpp.available():
        say("Running the GGUF in llama.cpp for the parity check")
        ends = {loaded.tokenizer.eos_token_id} - {None}
        candidate = llamacpp.outputs(tmp / gguf_name, reference.rendered, ends)
        checks.append(compare_outputs(reference, candidate, f"gguf-{gguf_type} in llama.cpp",
                                      LLAMA_CPP_TOLERANCES[gguf_type], greedy_required=exact, reader="llama.cpp",
                                      top1_minimum=top1))
    return ParityReport(checks)


def _export_peft(
    loaded: LoadedModel, choices: list[AdapterChoice], tmp: Path, out: Path, reference: ModelOutputs,
    rank: int | None,
) -> tuple[ParityReport, float]:
    """The adapter as one PEFT folder (a weighted set becomes one exact concatenated adapter, or its SVD
    compression to `rank`), or a zip of it; with the compression's largest relative error (0 when exact)."""
    zipped = out.suffix == ".zip"
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "adapter" if zipped else tmp
        compression = _write_peft_folder(loaded, choices, folder, rank)
        if zipped:
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
                for name in (CONFIG_FILE, WEIGHTS_FILE):
                    archive.write(folder / name, name)
            folder = Path(scratch) / "unzipped"
            zipfile.ZipFile(tmp).extractall(folder)
        load_adapter(loaded.model, folder, name="exported", activate=False)
    with active_adapters(loaded.model, "exported"):
        candidate = model_outputs(loaded.model, loaded.tokenizer)
    if rank is None:
        return ParityReport([compare_outputs(reference, candidate, "peft", RELATIVE_TOLERANCES["peft"])]), 0.0
    # compressed on purpose: the figures say what the rank costs, and only NaN logits fail
    check = compare_outputs(reference, candidate, f"peft rank {rank}", float("inf"), greedy_required=False)
    return ParityReport([check]), compression


def _write_peft_folder(loaded: LoadedModel, choices: list[AdapterChoice], folder: Path, rank: int | None) -> float:
    """Copy a single unweighted adapter as it is (its bytes, with a new file's mode rather than the source's:
    one saved before save_tensors existed is 0600); otherwise save the weighted combination, exact or compressed
    to `rank`. Returns the compression's largest relative error."""
    if len(choices) == 1 and choices[0].weight == 1.0 and rank is None:
        folder.mkdir(parents=True)
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            shutil.copyfile(choices[0].folder / name, folder / name)
        return 0.0
    report = combine_adapters(loaded.model, active_gains(loaded.model), "combined", rank=rank)
    save_adapter(loaded.model, "combined", folder, base_model_name=loaded.facts.base_model_id)
    return report.max_relative_error
