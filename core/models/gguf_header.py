"""What a GGUF file says about itself, read from its header alone: the metadata, the tensors' sizes, and the config
transformers will give the model when `core.models.loading` converts it.

The gguf package's reader and transformers' GGUF loader both build a Python object for every token and merge of the
vocabulary before anything else: 3.4 s and 5.3 s for SmolLM2's 49k tokens (about three times that for a
150k-token vocabulary), which a scan of a models folder cannot spend per file. This reader skips arrays, keeping
their length, and reads SmolLM2's header in milliseconds. The config comes from transformers' own table of GGUF
keys (GGUF_CONFIG_MAPPING), so it holds what the conversion's config holds.
"""

import math
import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path

import gguf
from transformers import AutoConfig, PretrainedConfig
from transformers.integrations.ggml import GGUF_CONFIG_MAPPING
from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
MAX_COUNT = 1 << 24  # more keys or tensors than this is a damaged header, not a model
# llama.cpp's architecture names that transformers' loader renames (transformers.modeling_gguf_pytorch_utils)
MODEL_TYPES = {"qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe", "gpt-oss": "gpt_oss", "minimax-m2": "minimax_m2",
               "gemma3": "gemma3_text"}


@dataclass
class GgufHeader:
    metadata: dict[str, object] = field(default_factory=dict)  # scalars and strings; an array as its length
    parameters: int = 0

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def file_type(self) -> str:
        """The file's quantization as llama.cpp names it (e.g. Q4_1), or ""."""
        code = self.metadata.get("general.file_type")
        try:
            return gguf.LlamaFileType(code).name.removeprefix("MOSTLY_") if code is not None else ""
        except ValueError:
            return ""

    def config(self) -> PretrainedConfig:
        """The config of the model transformers loads from this file; ValueError for an architecture it cannot."""
        arch = self.architecture
        model_type = MODEL_TYPES.get(arch, arch)
        if arch not in GGUF_SUPPORTED_ARCHITECTURES and model_type not in GGUF_SUPPORTED_ARCHITECTURES:
            raise ValueError(f"transformers cannot convert GGUF files of the {arch or 'unnamed'} architecture")
        names = GGUF_CONFIG_MAPPING.get(model_type) or GGUF_CONFIG_MAPPING.get(arch, {})
        settings = {names[key.removeprefix(f"{arch}.")]: value for key, value in self.metadata.items()
                    if key.startswith(f"{arch}.") and names.get(key.removeprefix(f"{arch}."))}
        return AutoConfig.for_model(model_type, **settings)


def read_gguf_header(path: Path) -> GgufHeader:
    """The header of the GGUF file `path`; ValueError naming what is wrong when it is not one."""
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        try:
            return _parse(data)
        except (struct.error, UnicodeDecodeError, IndexError):
            raise ValueError("its header is cut short or damaged") from None


def _parse(data) -> GgufHeader:
    if data[:4] != b"GGUF":
        raise ValueError("it does not start with GGUF's magic number")
    version, tensors, keys = struct.unpack_from("<IQQ", data, 4)
    if version < 2 or tensors > MAX_COUNT or keys > MAX_COUNT:
        raise ValueError(f"its header declares version {version}, {tensors} tensors and {keys} keys")
    header, position = GgufHeader(), 24
    for _ in range(keys):
        key, position = _string(data, position)
        (kind,) = struct.unpack_from("<I", data, position)
        header.metadata[key], position = _value(data, position + 4, kind)
    for _ in range(tensors):
        _, position = _string(data, position)
        (dims,) = struct.unpack_from("<I", data, position)
        shape = struct.unpack_from(f"<{dims}Q", data, position + 4)
        header.parameters += math.prod(shape)
        position += 4 + 8 * dims + 4 + 8  # the shape, then the type and the data offset
    return header


def _string(data, position: int) -> tuple[str, int]:
    (length,) = struct.unpack_from("<Q", data, position)
    start = position + 8
    if start + length > len(data):
        raise IndexError("a string runs past the end of the file")
    return bytes(data[start:start + length]).decode("utf-8"), start + length


def _value(data, position: int, kind: int) -> tuple[object, int]:
    if kind == _STRING:
        return _string(data, position)
    if kind == _ARRAY:
        item_kind, count = struct.unpack_from("<IQ", data, position)
        position += 12
        if item_kind in _SCALARS:
            return count, position + count * struct.calcsize(_SCALARS[item_kind])
        for _ in range(count):
            _, position = _value(data, position, item_kind)
        return count, position
    if kind not in _SCALARS:
        raise ValueError(f"a value has the unknown type {kind}")
    (value,) = struct.unpack_from(_SCALARS[kind], data, position)
    return value, position + struct.calcsize(_SCALARS[kind])
