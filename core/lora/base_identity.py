"""Which base an adapter was made on, by what the base is rather than what it was called.

`base_model_name_or_path` in adapter_config.json records whatever path the trainer loaded (PEFT writes
`my-models/llama3` as readily as a hub id), so LoRA Forge never refuses an adapter on that name: its layers'
shapes decide (core.lora.peft_format). Where both sides are known it also compares a fingerprint of the base's
architecture (family, sizes, vocabulary, rope), written into the adapter's safetensors metadata, which PEFT, vLLM
and llama.cpp ignore: shapes that match on a base of another fingerprint (Llama 3 and 3.1 share every shape but not
their rope) load, with a warning that names both bases.
"""

import hashlib
import json
import logging

from safetensors import safe_open

FINGERPRINT_KEY = "loraforge.base_fingerprint"
SUMMARY_KEY = "loraforge.base_summary"
_FIELDS = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
           "num_key_value_heads", "head_dim", "vocab_size", "rope_parameters", "rope_scaling", "rope_theta",
           "tie_word_embeddings")
log = logging.getLogger("loraforge")


def base_metadata(config) -> dict[str, str]:
    """The safetensors metadata that records the base: its fingerprint and a readable summary."""
    return {FINGERPRINT_KEY: fingerprint(config), SUMMARY_KEY: summary(config)}


def fingerprint(config) -> str:
    described = {name: getattr(config, name, None) for name in _FIELDS}
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()[:16]


def summary(config) -> str:
    return (f"{config.model_type}, {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
            f"vocabulary {config.vocab_size}")


def base_mismatch(weights_file, config) -> str | None:
    """A warning when the adapter file records a base fingerprint that differs from `config`'s, else None (also
    when the file records none, as PEFT's own files do)."""
    with safe_open(weights_file, framework="pt") as handle:
        recorded = handle.metadata() or {}
    if FINGERPRINT_KEY not in recorded or recorded[FINGERPRINT_KEY] == fingerprint(config):
        return None
    message = (f"The adapter in {weights_file.parent} was made on another base ({recorded.get(SUMMARY_KEY, '?')}) "
               f"than this one ({summary(config)}). Its layer shapes fit, so it is loaded; if its answers look "
               "wrong, load it onto the base it was trained on.")
    log.warning(message)
    return message
