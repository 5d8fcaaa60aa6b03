"""How llama.cpp stores each model family in GGUF: its architecture, its hyperparameter keys, and how the weights
differ from Hugging Face's, as llama.cpp's own converter (convert_hf_to_gguf.py) writes them.

    llama, mistral   architecture `llama`; q/k rows permuted for llama.cpp's rope (core.export.gguf)
    qwen2, qwen3     NEOX rotary, no permutation; Qwen2's q/k/v biases, Qwen3's q/k norms
    gemma2, gemma3   RMSNorm weights stored as w + 1 (Hugging Face keeps w - 1 and adds the 1 in forward), the
                     output layer read from the embeddings (tied), soft-capping, sliding-window layers in
                     llama.cpp's fixed pattern (every 2nd / 6th layer global), Gemma 3's two rope bases
    phi3             fused qkv_proj and gate_up_proj kept fused, partial rotary dimension

Rope scaling, as llama.cpp reads it: linear (Gemma 3 4B and up, on its global layers) as a factor; Llama 3.1's
`llama3` as a per-frequency divisor tensor (rope_freqs), taken from transformers' own rope code so both agree;
Phi-3.5's `longrope` as its long and short factor tensors and attention factor. Others (yarn, dynamic) are refused.
"""

import math
from dataclasses import dataclass

import gguf
import numpy as np
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from core.errors import LoraForgeError

CONVERTER_WAY_OUT = ("Export a merged Hugging Face folder instead and convert it with llama.cpp's "
                     "convert_hf_to_gguf.py.")


class GgufExportError(LoraForgeError):
    """The model or its tokenizer cannot be written as GGUF."""


@dataclass(frozen=True)
class Family:
    """What llama.cpp expects of one family beyond the common keys and tensor names."""

    arch: gguf.MODEL_ARCH
    permute_qk: bool = False  # llama.cpp's `llama` rope works on adjacent pairs, Hugging Face's on halves
    norm_shift: float = 0.0  # added to every *norm.weight
    tied_output: bool = False  # llama.cpp always reads the output layer from token_embd
    global_every: int = 0  # llama.cpp's sliding-window pattern: layer i is global when (i + 1) % n == 0
    rope_scalings: tuple[str, ...] = ("linear",)  # the rope types llama.cpp reads for this architecture


_LLAMA = Family(gguf.MODEL_ARCH.LLAMA, permute_qk=True, rope_scalings=("linear", "llama3"))
FAMILIES = {
    "llama": _LLAMA,
    "mistral": _LLAMA,  # llama.cpp's converter writes Mistral as llama
    "qwen2": Family(gguf.MODEL_ARCH.QWEN2),
    "qwen3": Family(gguf.MODEL_ARCH.QWEN3),
    "gemma2": Family(gguf.MODEL_ARCH.GEMMA2, norm_shift=1.0, tied_output=True, global_every=2),
    "gemma3_text": Family(gguf.MODEL_ARCH.GEMMA3, norm_shift=1.0, tied_output=True, global_every=6),
    "phi3": Family(gguf.MODEL_ARCH.PHI3, rope_scalings=("linear", "longrope")),
}
FAMILY_NAMES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3")  # as people call them


def family_of(config) -> Family:
    """The model's Family, after checking that nothing in its config is beyond what the GGUF writer handles."""
    family = FAMILIES.get(config.model_type)
    if family is None:
        raise GgufExportError(f"GGUF export writes {', '.join(FAMILY_NAMES)} models; this one is "
                              f"{config.model_type!r}. {CONVERTER_WAY_OUT}")
    scalings = {layer: rope(config, layer).get("rope_type", "default") for layer in _layer_kinds(config)}
    extras = [f"rope scaling {kind!r} on {layer.replace('_', ' ')} layers" for layer, kind in sorted(scalings.items())
              if kind != "default" and (kind not in family.rope_scalings or layer == "sliding_attention")]
    if getattr(config, "mlp_bias", False) or (getattr(config, "attention_bias", False)
                                              and family.arch != gguf.MODEL_ARCH.QWEN2):
        extras.append("bias terms in attention or MLP")
    if getattr(config, "query_pre_attn_scalar", None) not in (None, _attention_scalar(config, family)):
        extras.append(f"query_pre_attn_scalar {config.query_pre_attn_scalar} (llama.cpp assumes "
                      f"{_attention_scalar(config, family)} for this size)")
    if family.tied_output and not getattr(config, "tie_word_embeddings", True):
        extras.append("an output layer of its own (untied embeddings; llama.cpp reads this family's output layer "
                      "from its embeddings)")
    if family.global_every and _global_layers(config) != _global_layers(config, family.global_every):
        extras.append(f"sliding-window layers other than every {family.global_every}th layer global")
    if extras:
        raise GgufExportError(f"GGUF export does not yet write {' and '.join(extras)}. {CONVERTER_WAY_OUT}")
    return family


def add_hyperparameters(writer: gguf.GGUFWriter, config, family: Family) -> None:
    """The `<arch>.*` keys llama.cpp reads for this family."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    rotary = float(rope(config).get("partial_rotary_factor", getattr(config, "partial_rotary_factor", None) or 1.0))
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads or config.num_attention_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(int(head_dim * rotary))
    writer.add_rope_freq_base(_theta(config, "full_attention"))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)
    if getattr(config, "sliding_window", None) and family.arch != gguf.MODEL_ARCH.LLAMA:
        writer.add_sliding_window(config.sliding_window)
    if family.arch == gguf.MODEL_ARCH.GEMMA3:
        writer.add_rope_freq_base_swa(_theta(config, "sliding_attention"))
    _add_rope_scaling(writer, config)
    for key in ("attn_logit_softcapping", "final_logit_softcapping"):
        if getattr(config, key, None) is not None:
            getattr(writer, f"add_{key}")(float(getattr(config, key)))


def rope_tensors(config) -> dict[str, np.ndarray]:
    """The tensors llama.cpp reads its rope scaling from: Llama 3.1's frequency divisors, Phi-3.5's factors."""
    settings = rope(config, "full_attention")
    kind = settings.get("rope_type", "default")
    if kind == "llama3":
        plain, _ = ROPE_INIT_FUNCTIONS["linear"](_unscaled(config), "cpu")
        scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
        return {"rope_freqs.weight": (plain / scaled).float().numpy()}
    if kind == "longrope":
        return {f"rope_factors_{length}.weight": np.asarray(settings[f"{length}_factor"], dtype=np.float32)
                for length in ("long", "short")}
    return {}


def restore_rope(gguf_config, source_config) -> list[str]:
    """Give the config transformers read from a GGUF the source's rope scaling, which transformers' GGUF reader
    drops (llama.cpp reads it from the file): the settings restored, by name, for the parity report."""
    source = getattr(source_config, "rope_parameters", None)
    scaled = {rope(source_config, layer).get("rope_type", "default") for layer in _layer_kinds(source_config)}
    if not source or scaled == {"default"}:
        return []
    gguf_config.rope_parameters = source
    for key in ("original_max_position_embeddings", "max_position_embeddings"):
        if getattr(source_config, key, None) is not None:
            setattr(gguf_config, key, getattr(source_config, key))
    return [f"rope scaling {', '.join(sorted(scaled - {'default'}))} from the model's config (transformers' GGUF "
            "reader does not read it)"]


def _add_rope_scaling(writer: gguf.GGUFWriter, config) -> None:
    settings = rope(config, "full_attention")
    kind = settings.get("rope_type", "default")
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(settings["factor"]))
    elif kind == "longrope":
        original = int(settings.get("original_max_position_embeddings")
                       or getattr(config, "original_max_position_embeddings", None) or config.max_position_embeddings)
        scale = config.max_position_embeddings / original
        attention = settings.get("attention_factor") or (
            math.sqrt(1 + math.log(scale) / math.log(original)) if scale > 1 else 1.0)
        writer.add_rope_scaling_orig_ctx_len(original)
        writer.add_rope_scaling_attn_factors(float(attention))


def _unscaled(config):
    """A copy of the config whose rope is the same base with a linear factor of 1: transformers' plain frequencies."""
    plain = config.__class__.from_dict(config.to_dict())
    plain.rope_parameters = {**rope(config), "rope_type": "linear", "factor": 1.0}
    return plain


def rope(config, layer_kind: str | None = None) -> dict:
    """The rope settings of one kind of layer: transformers keeps one dict, or one per layer kind (Gemma 3)."""
    settings = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if layer_kind in settings or "full_attention" in settings:
        return settings.get(layer_kind or "full_attention") or {}
    return settings


def _attention_scalar(config, family: Family) -> int:
    """What llama.cpp scales Gemma's queries by: the head size, or hidden size per head for the 27B models, which
    it knows by their layer count."""
    biggest = {gguf.MODEL_ARCH.GEMMA2: 46, gguf.MODEL_ARCH.GEMMA3: 62}.get(family.arch)
    if config.num_hidden_layers == biggest:
        return config.hidden_size // config.num_attention_heads
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _theta(config, layer_kind: str) -> float:
    return float(rope(config, layer_kind).get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def _layer_kinds(config) -> set[str]:
    return set(getattr(config, "layer_types", None) or ["full_attention"])


def _global_layers(config, every: int = 0) -> list[int]:
    """Global-attention layer numbers: the config's own, or those llama.cpp's pattern `every` makes."""
    if every:
        return [layer for layer in range(config.num_hidden_layers) if (layer + 1) % every == 0]
    kinds = getattr(config, "layer_types", None) or ["full_attention"] * config.num_hidden_layers
    return [layer for layer, kind in enumerate(kinds) if kind == "full_attention"]
