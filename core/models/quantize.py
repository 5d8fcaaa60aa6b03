"""k-bit base weights through bitsandbytes: NF4 with double quantization (QLoRA) or LLM.int8.

We swap each `nn.Linear` (except the LM head) for its bitsandbytes twin ourselves rather than going
through transformers' quantization config: it is a dozen lines, works the same on CPU and CUDA
(bitsandbytes >= 0.48 runs k-bit kernels on the CPU), and keeps the LoRA layers in charge of what wraps what.
"""

import logging

import torch
from torch import nn

from core.models.base_weights import is_bnb_4bit

QUANTIZATIONS = ("none", "nf4", "int8")
SKIPPED_MODULES = ("lm_head",)
# bitsandbytes notices that say nothing a person can act on, by logger: int8 logs the fp32 -> fp16 cast of its
# inputs at every layer's every forward (5,670 lines in a 3-step run), and on an AVX512-BF16 CPU its import asks
# for `pip install kernels`, an optional kernel fetched from the hub, while its built-in one runs.
QUIET_NOTICES = {
    "bitsandbytes.autograd._functions": "MatMul8bitLt: inputs will be cast",
    "bitsandbytes.backends.cpu.ops": "Failed to load CPU gemm_4bit_forward from kernels-community",
}


def _quiet_notices() -> None:
    """Drop those notices (and only those): the loggers are set up before bitsandbytes is imported, so even its
    import-time notice is filtered."""
    for logger_name, start in QUIET_NOTICES.items():
        logging.getLogger(logger_name).addFilter(lambda record, start=start: not record.getMessage().startswith(start))


_quiet_notices()


def quantize_linears(model: nn.Module, quantization: str, compute_dtype: torch.dtype, device: torch.device) -> int:
    """Replace every nn.Linear but the LM head by a quantized bitsandbytes layer on `device`, in the replaced
    layer's train/eval mode; return the count."""
    import bitsandbytes as bnb  # imported lazily: loading its native library costs a second at start-up

    replaced = 0
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            if type(child) is not nn.Linear or child_name in SKIPPED_MODULES:
                continue
            if quantization == "nf4":
                layer = bnb.nn.Linear4bit(
                    child.in_features,
                    child.out_features,
                    bias=child.bias is not None,
                    compute_dtype=compute_dtype,
                    compress_statistics=True,
                    quant_type="nf4",
                    device="meta",
                )
                layer.weight = bnb.nn.Params4bit(
                    child.weight.data, requires_grad=False, compress_statistics=True, quant_type="nf4", module=layer
                ).to(device)
            elif quantization == "int8":
                layer = bnb.nn.Linear8bitLt(
                    child.in_features, child.out_features, bias=child.bias is not None, has_fp16_weights=False,
                    device="meta",
                )
                layer.weight = bnb.nn.Int8Params(child.weight.data, requires_grad=False, has_fp16_weights=False).to(
                    device
                )
            else:
                raise ValueError(f"unknown quantization {quantization!r}")
            if child.bias is not None:
                layer.bias = nn.Parameter(child.bias.data.to(device, compute_dtype), requires_grad=False)
            setattr(parent, child_name, layer.train(child.training))  # int8 computes differently in training mode
            replaced += 1
    return replaced



def keep_4bit_layout_for_training(model: nn.Module) -> None:
    """Stop bitsandbytes from repacking 4-bit weights for its AVX512-BF16 CPU kernel. It repacks a layer at its
    first forward in eval mode without autograd (an eval pass, a sample), and the repacked layer has no
    backward: every training step after it would lose the gradient through the frozen layers, silently."""
    for module in model.modules():
        if is_bnb_4bit(module):
            module.support_avx512bf16_for_cpu = False

def weight_bytes(model: nn.Module, quantizable_only: bool = False) -> int:
    """Bytes held by the model's parameters (tied ones once), k-bit statistics included.

    With `quantizable_only`, only the linear layers that quantization shrinks (all but the LM head).
    """
    total, seen = 0, set()
    for name, module in model.named_modules():
        if quantizable_only and (not isinstance(module, nn.Linear) or name.rsplit(".", 1)[-1] in SKIPPED_MODULES):
            continue
        for param in module.parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            if quantizable_only and param is not module.weight:
                continue
            total += param.numel() * param.element_size()
            state = getattr(param, "quant_state", None)
            total += _quant_state_bytes(state) if state is not None else 0
            scales = getattr(param, "SCB", None)
            total += scales.numel() * scales.element_size() if scales is not None else 0
    return total


def _quant_state_bytes(state) -> int:
    """Bytes of a bitsandbytes QuantState's per-block scales (absmax, and with double quantization its
    own scales). The NF4 and 8-bit code tables are constants bitsandbytes shares, not per-weight storage."""
    tensors = [state.absmax]
    nested = getattr(state, "state2", None)
    if nested is not None:
        tensors.append(nested.absmax)
    return sum(t.numel() * t.element_size() for t in tensors)
