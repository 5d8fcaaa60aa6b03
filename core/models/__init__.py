"""Base models: where they come from, where they compute, and the frozen weights LoRA wraps.

    "default" | folder | .gguf | hub id --loading--> LoadedModel(model, tokenizer, facts)
        devices          the device and dtype names people choose, and what "auto" means here
        quantize         NF4 (QLoRA) and int8 base weights through bitsandbytes
        base_weights     any wrapped layer's frozen weight as a dense d_out x d_in tensor
        packed_attention attention over packed rows, one example at a time
"""

from core.lazy_api import lazy_api

API = {
    "DEFAULT_MODEL": "loading", "LoadedModel": "loading", "ModelFacts": "loading", "count_parameters": "loading",
    "default_gguf_path": "loading", "load_base_model": "loading", "load_tokenizer": "loading",
    "resolve_source": "loading", "unshared_state_dict": "loading",
    "DTYPES": "devices", "resolve_device": "devices", "resolve_dtype": "devices", "training_dtype": "devices",
    "QUANTIZATIONS": "quantize", "SKIPPED_MODULES": "quantize", "keep_4bit_layout_for_training": "quantize",
    "weight_bytes": "quantize",
    "is_adaptable": "base_weights", "layer_shape": "base_weights", "read_weight": "base_weights",
    "write_weight": "base_weights",
    "can_use_packed_attention": "packed_attention", "use_packed_attention": "packed_attention",
    "per_example_limit": "packed_attention",
    "save_tensors": "safetensors_file", "quiet_libraries": "quiet", "ModelSourceError": "errors",
}
__all__ = sorted(API)
__getattr__, __dir__ = lazy_api(__name__, API)
