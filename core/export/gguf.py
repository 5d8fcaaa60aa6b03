"""Write a merged model as a GGUF file that llama.cpp, Ollama and transformers read.

    metadata   general.*, the family's <arch>.* hyperparameters (core.export.gguf_families), the tokenizer
               (core.export.gguf_vocab: byte-level BPE or SentencePiece, special ids, chat template)
    tensors    every weight and bias under the name the `gguf` package's map gives it for the family
               (token_embd, blk.N.attn_q ..., output_norm, output), in the model's own order; `output` is left
               out when the embeddings are tied

Per family, as llama.cpp's converter does: the `llama` architecture stores attn_q and attn_k with the rotary
halves of each head interleaved (its rope works on adjacent pairs, Hugging Face's on halves; every GGUF reader
undoes that on load), and Gemma stores its RMSNorm weights plus one. Weights are f16, bf16 or q8_0; norms and
biases stay f32, and a matrix whose rows are not a multiple of the q8_0 block falls back to f16. The k-quants
(q4_k_m and friends) are llama.cpp's own: core.export.llamacpp makes them from an f16 file.
"""

from pathlib import Path

import gguf
import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from core.export.gguf_families import (
    Family,
    GgufExportError,
    add_hyperparameters,
    family_of,
    rope_tensors,
)
from core.export.gguf_vocab import add_tokenizer

# Types this module writes itself, and those llama.cpp's quantizer makes from an f16 file (core.export.llamacpp).
WRITTEN_TYPES = {"f16": gguf.GGMLQuantizationType.F16, "bf16": gguf.GGMLQuantizationType.BF16,
                 "q8_0": gguf.GGMLQuantizationType.Q8_0}
FILE_TYPES = {"f16": gguf.LlamaFileType.MOSTLY_F16, "bf16": gguf.LlamaFileType.MOSTLY_BF16,
              "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
LLAMA_CPP_TYPES = ("q4_0", "q4_k_m", "q5_k_m", "q6_k")
GGUF_TYPES = (*WRITTEN_TYPES, *LLAMA_CPP_TYPES)


def write_gguf(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    path: str | Path,
    gguf_type: str = "f16",
    name: str = "model",
    pre_tokenizer: str = "default",
) -> Path:
    """Write `model` (a plain, merged model of one of the FAMILIES) and its tokenizer to the GGUF file `path`.

    `pre_tokenizer` is llama.cpp's name for how text is split before byte-level BPE (`tokenizer.ggml.pre`), used
    when core.export.gguf_vocab does not know the tokenizer's split pattern: pass the base GGUF's value when the
    model came from one.
    """
    if gguf_type not in WRITTEN_TYPES:
        raise GgufExportError(f"GGUF type {gguf_type!r} is not written directly. Choose one of: "
                              f"{', '.join(WRITTEN_TYPES)}; {', '.join(LLAMA_CPP_TYPES)} are quantized by llama.cpp.")
    config = model.config
    family = family_of(config)
    tensors = list(_tensors(model, family, gguf_type))  # every refusal comes before the file is created
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[family.arch])
    try:
        writer.add_name(name)
        writer.add_file_type(FILE_TYPES[gguf_type])
        add_hyperparameters(writer, config, family)
        add_tokenizer(writer, tokenizer, config.vocab_size, pre_tokenizer, _end_ids(model))
        for tensor_name, array, quant in tensors:
            writer.add_tensor(tensor_name, array, raw_dtype=quant)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return Path(path)


def gguf_pre_tokenizer(gguf_path: str | Path) -> str | None:
    """The `tokenizer.ggml.pre` a GGUF file declares, or None."""
    field = gguf.GGUFReader(str(gguf_path)).fields.get("tokenizer.ggml.pre")
    return field.contents() if field is not None else None


def _end_ids(model: PreTrainedModel) -> tuple[int, ...]:
    ends = getattr(model.generation_config, "eos_token_id", None)
    return tuple(ends) if isinstance(ends, list) else (ends,) if ends is not None else ()


def permute_rotary(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Hugging Face q/k rows (per head: first half, second half) to llama.cpp's (pairs interleaved)."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def _tensors(model: PreTrainedModel, family: Family, gguf_type: str):
    """(GGUF name, array, type) for every weight and bias, q/k permuted where the family needs it, in the model's
    own order."""
    config = model.config
    names = gguf.get_tensor_name_map(family.arch, config.num_hidden_layers)
    kv_heads = config.num_key_value_heads or config.num_attention_heads
    seen: set[int] = set()
    for key, tensor in model.state_dict().items():
        pointer = tensor.untyped_storage().data_ptr()
        if pointer in seen:  # tied lm_head: llama.cpp reuses token_embd when `output` is absent
            continue
        seen.add(pointer)
        module, _, suffix = key.rpartition(".")
        gguf_name = names.get_name(module)
        if gguf_name is None or suffix not in ("weight", "bias"):
            raise GgufExportError(
                f"No GGUF name for tensor {key!r}; this {config.model_type} variant is not supported for GGUF export."
            )
        weight = tensor.detach().float().cpu()
        if family.permute_qk and module.endswith("self_attn.q_proj"):
            weight = permute_rotary(weight, config.num_attention_heads)
        elif family.permute_qk and module.endswith("self_attn.k_proj"):
            weight = permute_rotary(weight, kv_heads)
        elif module.endswith("norm") and suffix == "weight":
            weight = weight + family.norm_shift
        yield f"{gguf_name}.{suffix}", *_encode(weight.numpy(), gguf_type)
    for name, factors in rope_tensors(config).items():
        yield name, factors, gguf.GGMLQuantizationType.F32


def _encode(array: np.ndarray, gguf_type: str) -> tuple[np.ndarray, gguf.GGMLQuantizationType]:
    if array.ndim < 2:
        return array.astype(np.float32), gguf.GGMLQuantizationType.F32
    quant = WRITTEN_TYPES[gguf_type]
    block, _ = gguf.GGML_QUANT_SIZES[quant]
    if quant == gguf.GGMLQuantizationType.F16 or array.shape[-1] % block:
        return array.astype(np.float16), gguf.GGMLQuantizationType.F16
    return gguf.quants.quantize(array, quant), quant
