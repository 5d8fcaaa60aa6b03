"""A base model found on disk, described from its metadata alone: config.json and the safetensors headers of a
Hugging Face folder, the header of a GGUF file. No weight is read, so describing a multi-GB model takes
milliseconds.

What training will do is judged the way `core.models.loading` and the training loop judge it: a folder needs
safetensors weights (pickle weights are never loaded), tokenizer files and a causal-LM architecture that
transformers knows; a GGUF file is dequantized once into a safetensors folder, so it needs an architecture that
transformers' GGUF reader knows.
"""

import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoConfig, PretrainedConfig
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from core.errors import LoraForgeError
from core.files import read_text_capped
from core.models.gguf_header import read_gguf_header
from core.models.loading import PICKLE_SUFFIXES
from core.models.packed_attention import per_example_limit

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
MAX_CONFIG_BYTES = 1 << 20
MAX_HEADER_BYTES = 100 << 20  # the safetensors format's own limit on its JSON header


@dataclass
class FoundModel:
    """One model: where it is, its family and size, and `problem` (why it cannot be trained; "" when it can)."""

    path: Path
    kind: str  # "folder" (Hugging Face) or "gguf"
    family: str = ""  # transformers' model_type
    parameters: int | None = None
    weight_bytes: int = 0
    quantization: str = ""  # a GGUF file's type, e.g. Q4_1
    problem: str = ""
    config: PretrainedConfig | None = field(default=None, repr=False)

    def training(self) -> str:
        if self.problem:
            return f"no: {self.problem}"
        return "yes, converted to safetensors once" if self.kind == "gguf" else "yes"

    def qlora(self) -> str:
        """nf4 through bitsandbytes (a dependency), which has CPU kernels as well as CUDA ones."""
        if self.problem:
            return ""
        return "yes" if torch.cuda.is_available() else "yes, on the CPU"

    def packing(self) -> str:
        """Whether packed rows attend per example (core.models.packed_attention), as transformers loads the model
        by default (sdpa attention); otherwise a packed row attends under transformers' block-diagonal mask, which
        scores every pair of tokens in the row (right, but slower)."""
        if self.problem:
            return ""
        longest, why = per_example_limit(self.config)
        if longest == 0:
            return f"whole-row mask ({why})"
        if longest:
            return f"per example up to Max length {longest} ({why})"
        return "per example"


def describe_folder(folder: Path) -> FoundModel:
    """A Hugging Face folder (one with config.json) as a FoundModel; an unreadable config becomes its problem."""
    found = FoundModel(folder, "folder")
    weights = sorted(folder.glob("*.safetensors"))
    found.weight_bytes = sum(path.stat().st_size for path in weights)
    try:
        read_config_json(folder / "config.json")
        found.config = AutoConfig.from_pretrained(folder, trust_remote_code=False, local_files_only=True)
        found.family = found.config.model_type
        found.parameters = sum(safetensors_parameters(path) for path in weights) if weights else None
    except (OSError, ValueError, KeyError, LoraForgeError) as error:  # LoraForgeError: config.json not a file
        found.problem = first_line(error)
        return found
    found.problem = _folder_problem(folder, weights, found.family)
    return found


def describe_gguf(path: Path) -> FoundModel:
    """A .gguf file as a FoundModel, from its header (core.models.gguf_header)."""
    found = FoundModel(path, "gguf", weight_bytes=path.stat().st_size)
    try:
        header = read_gguf_header(path)
    except ValueError as error:
        found.problem = f"not a readable GGUF file: {first_line(error)}"
        return found
    found.parameters, found.quantization, found.family = header.parameters, header.file_type(), header.architecture
    try:
        found.config = header.config()
        found.family = found.config.model_type
    except (ValueError, TypeError) as error:  # an architecture transformers cannot convert, a value it refuses
        found.problem = first_line(error)
    return found


def read_config_json(path: Path) -> dict:
    """config.json as a dict; ValueError naming what is wrong (not JSON, not an object, no model_type)."""
    try:
        config = json.loads(read_text_capped(path, MAX_CONFIG_BYTES, what="A config.json"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"config.json is not valid JSON ({error})") from None
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise ValueError("config.json names no model_type, so transformers cannot tell the architecture")
    return config


def safetensors_parameters(path: Path) -> int:
    """Elements stored in a safetensors file, from its header: 8 bytes of length, then JSON of shapes."""
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8).ljust(8, b"\0"))
        if not 0 < length <= MAX_HEADER_BYTES:
            raise ValueError(f"{path.name} is not a safetensors file (its header length reads {length})")
        header = json.loads(handle.read(length))
    return sum(math.prod(tensor["shape"]) for name, tensor in header.items() if name != "__metadata__")


def first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0].rstrip(".")


def _folder_problem(folder: Path, weights: list[Path], family: str) -> str:
    if not weights:
        pickled = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        return (f"only pickle weights ({', '.join(pickled)}), never loaded; convert them to safetensors" if pickled
                else "no *.safetensors weights")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        return "no tokenizer files (tokenizer.json, tokenizer.model or vocab.json)"
    if family not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return f"{family!r} is not a causal language model that transformers knows"
    return ""
