"""LoRA itself: the layer, adapters on a whole model, which modules get one, composition, and PEFT's format.

    nn.Linear --layer.LoraLayer--> y = W x + b + sum_i g_i * s_i * B_i(A_i(dropout(x)))   (fused: one autograd node)
    model --model.add_adapter(targets)--> adapters injected, base frozen; set_active, merge, unmerge, unload
    targets      presets (qv, attention, mlp, all-linear), suffix lists, regexes, rank/alpha patterns
    compose      a weighted set of adapters as one exact adapter; SVD extraction from a full delta
    peft_format  adapter_config.json + adapter_model.safetensors, the keys PEFT, vLLM and llama.cpp read
"""

from core.lazy_api import lazy_api

API = {
    "LoraSettings": "model", "active_adapters": "model", "active_gains": "model", "adapter_names": "model",
    "add_adapter": "model", "merge": "model", "merge_and_unload": "model", "set_active": "model",
    "unload": "model", "unmerge": "model",
    "PRESETS": "targets", "resolve_targets": "targets",
    "combine_adapters": "compose", "extract_adapter": "compose",
    "CONFIG_FILE": "peft_format", "WEIGHTS_FILE": "peft_format", "inspect_adapter": "peft_format",
    "load_adapter": "peft_format", "save_adapter": "peft_format",
    "AdapterConfigError": "errors", "AdapterFileError": "errors", "AdapterStateError": "errors",
}
__all__ = sorted(API)
__getattr__, __dir__ = lazy_api(__name__, API)
