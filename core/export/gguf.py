"""Write a merged model as a GGUF file that llama.cpp, Ollama and transformers read.

Families, as llama.cpp's own converter writes them (FAMILIES):
    llama, mistral   architecture `llama`; q/k rows permuted (below)
    qwen2            architecture `qwen2`; q/k/v biases; NEOX rotary (no permutation)
    qwen3            architecture `qwen3`; per-head q/k RMS norms; NEOX rotary

Layout:
    metadata   <arch>.* hyperparameters, tokenizer.ggml.* (byte-level BPE "gpt2": tokens, types, merges,
               special ids, add_bos, the pre-tokenizer llama.cpp names for its split pattern),
               tokenizer.chat_template
    tensors    token_embd, blk.N.{attn_norm, attn_q, attn_k, attn_v, attn_output, ffn_norm, ffn_gate,
               ffn_up, ffn_down} (+ attn_q/k/v.bias, attn_q_norm, attn_k_norm), output_norm, output (absent
               when the embeddings are tied)

Tensor names come from the `gguf` package's own name map. llama.cpp's `llama` architecture stores attn_q and
attn_k with the rotary halves of each head interleaved (its rope there works on adjacent pairs, Hugging Face's on
halves), and every GGUF reader undoes that on load, so the permutation is applied for that architecture. Weights
are f16, bf16 or q8_0; norms and biases stay f32, and a matrix whose rows are not a multiple of the q8_0 block
falls back to f16. The k-quants (q4_k_m and friends) are llama.cpp's own: core.export.llamacpp makes them from
an f16 file.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from core.errors import LoraForgeError

# Types this module writes itself, and those llama.cpp's quantizer makes from an f16 file (core.export.llamacpp).
WRITTEN_TYPES = {"f16": gguf.GGMLQuantizationType.F16, "bf16": gguf.GGMLQuantizationType.BF16,
                 "q8_0": gguf.GGMLQuantizationType.Q8_0}
FILE_TYPES = {"f16": gguf.LlamaFileType.MOSTLY_F16, "bf16": gguf.LlamaFileType.MOSTLY_BF16,
              "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
LLAMA_CPP_TYPES = ("q4_0", "q4_k_m", "q5_k_m", "q6_k")
GGUF_TYPES = (*WRITTEN_TYPES, *LLAMA_CPP_TYPES)


class GgufExportError(LoraForgeError):
    """The model or its tokenizer cannot be written as GGUF."""


@dataclass(frozen=True)
class Family:
    """How llama.cpp stores one model family: its architecture, and whether q/k rows are permuted for its rope."""

    arch: gguf.MODEL_ARCH
    permute_qk: bool


FAMILIES = {
    "llama": Family(gguf.MODEL_ARCH.LLAMA, permute_qk=True),
    "mistral": Family(gguf.MODEL_ARCH.LLAMA, permute_qk=True),  # llama.cpp's converter writes Mistral as llama
    "qwen2": Family(gguf.MODEL_ARCH.QWEN2, permute_qk=False),
    "qwen3": Family(gguf.MODEL_ARCH.QWEN3, permute_qk=False),
}
# llama.cpp's names for byte-level BPE split patterns (`tokenizer.ggml.pre`), keyed by the pattern itself.
_CONTRACTIONS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|"
_REST = r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
PRE_TOKENIZERS = {
    _CONTRACTIONS + r"\p{N}{1,3}" + _REST: "llama-bpe",  # Llama 3: digits in threes
    _CONTRACTIONS + r"\p{N}" + _REST: "qwen2",  # Qwen 2 and 3: one digit at a time
}


def write_gguf(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    path: str | Path,
    gguf_type: str = "f16",
    name: str = "model",
    pre_tokenizer: str = "default",
) -> Path:
    """Write `model` (a plain, merged LlamaForCausalLM) and its tokenizer to the GGUF file `path`.

    `pre_tokenizer` is llama.cpp's name for how text is split before BPE (`tokenizer.ggml.pre`), used when the
    tokenizer's split pattern is not one PRE_TOKENIZERS knows: pass the base GGUF's value when the model came
    from one.
    """
    if gguf_type not in WRITTEN_TYPES:
        raise GgufExportError(f"GGUF type {gguf_type!r} is not written directly. Choose one of: "
                              f"{', '.join(WRITTEN_TYPES)}; {', '.join(LLAMA_CPP_TYPES)} are quantized by llama.cpp.")
    config = model.config
    family = _check_supported(config)
    vocab = _byte_level_vocab(tokenizer, config.vocab_size)
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[family.arch])
    try:
        _add_hyperparameters(writer, config, name, FILE_TYPES[gguf_type])
        _add_tokenizer(writer, tokenizer, vocab, _split_pattern_name(tokenizer) or pre_tokenizer)
        for tensor_name, array, quant in _tensors(model, family, gguf_type):
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


def permute_rotary(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Hugging Face q/k rows (per head: first half, second half) to llama.cpp's (pairs interleaved)."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def _check_supported(config) -> Family:
    family = FAMILIES.get(config.model_type)
    if family is None:
        raise GgufExportError(
            f"GGUF export supports {', '.join(FAMILIES)} models; this one is {config.model_type!r}. Export a merged "
            "Hugging Face folder instead and convert it with llama.cpp's convert_hf_to_gguf.py."
        )
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    extras = []
    if rope.get("rope_type", "default") != "default":
        extras.append(f"rope scaling {rope.get('rope_type')!r}")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        extras.append("bias terms in attention or MLP")
    if extras:
        raise GgufExportError(
            f"GGUF export does not yet write {' and '.join(extras)}. Export a merged Hugging Face folder instead "
            "and convert it with llama.cpp's convert_hf_to_gguf.py."
        )
    return family


def _add_hyperparameters(writer: gguf.GGUFWriter, config, name: str, file_type: gguf.LlamaFileType) -> None:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    rope = getattr(config, "rope_parameters", None) or {}
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads or config.num_attention_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(file_type)


def _byte_level_vocab(tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> dict:
    """Tokens in id order, their llama.cpp types and the merges, from a fast byte-level BPE tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = json.loads(backend.to_str()) if backend is not None else {}
    model = spec.get("model", {})
    if model.get("type") != "BPE" or "ByteLevel" not in json.dumps(spec.get("pre_tokenizer")):
        raise GgufExportError(
            "GGUF export writes byte-level BPE tokenizers (GPT-2 style, as in SmolLM2, Llama 3, Qwen); this "
            f"model's tokenizer is {model.get('type') or type(tokenizer).__name__}. Export a merged Hugging Face "
            "folder instead and convert it with llama.cpp's convert_hf_to_gguf.py."
        )
    added = {entry["id"]: entry for entry in spec.get("added_tokens", [])}
    by_id = {index: token for token, index in model["vocab"].items()}
    by_id.update({index: entry["content"] for index, entry in added.items()})
    tokens, types = [], []
    for index in range(vocab_size):
        if index not in by_id:  # embedding rows the tokenizer never produces (padding to a round size)
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
        elif index in added:
            tokens.append(by_id[index])
            types.append(gguf.TokenType.CONTROL if added[index]["special"] else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[index])
            types.append(gguf.TokenType.NORMAL)
    merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in model.get("merges", [])]
    return {"tokens": tokens, "types": types, "merges": merges}


def _add_tokenizer(writer: gguf.GGUFWriter, tokenizer: PreTrainedTokenizerBase, vocab: dict, pre: str) -> None:
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(vocab["tokens"])
    writer.add_token_types(vocab["types"])
    writer.add_token_merges(vocab["merges"])
    special = {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id,
               "unk": tokenizer.unk_token_id, "pad": tokenizer.pad_token_id}
    for kind, token_id in special.items():
        if token_id is not None:
            getattr(writer, f"add_{kind}_token_id")(token_id)
    probe = tokenizer("a")["input_ids"]
    writer.add_add_bos_token(bool(probe) and probe[0] == tokenizer.bos_token_id)
    writer.add_add_eos_token(bool(probe) and probe[-1] == tokenizer.eos_token_id)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)


def _split_pattern_name(tokenizer: PreTrainedTokenizerBase) -> str | None:
    """llama.cpp's pre-tokenizer name for the tokenizer's split regex, when PRE_TOKENIZERS knows it."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = json.loads(backend.to_str()) if backend is not None else {}
    steps = spec.get("pre_tokenizer") or {}
    for step in steps.get("pretokenizers", [steps]):
        pattern = (step.get("pattern") or {}).get("Regex") if step.get("type") == "Split" else None
        if pattern in PRE_TOKENIZERS:
            return PRE_TOKENIZERS[pattern]
    return None


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
        yield f"{gguf_name}.{suffix}", *_encode(weight.numpy(), gguf_type)


def _encode(array: np.ndarray, gguf_type: str) -> tuple[np.ndarray, gguf.GGMLQuantizationType]:
    if array.ndim < 2:
        return array.astype(np.float32), gguf.GGMLQuantizationType.F32
    quant = WRITTEN_TYPES[gguf_type]
    block, _ = gguf.GGML_QUANT_SIZES[quant]
    if quant == gguf.GGMLQuantizationType.F16 or array.shape[-1] % block:
        return array.astype(np.float16), gguf.GGMLQuantizationType.F16
    return gguf.quants.quantize(array, quant), quant
