"""Reading and writing the frozen weight of any layer LoRA wraps, always as a dense `d_out x d_in` tensor.

LoRA math (merge, DoRA norms, SVD) wants one orientation and full precision, but the bases differ:

    nn.Linear            weight (d_out, d_in)                      read/write as is
    transformers Conv1D  weight (d_in, d_out)  (GPT-2)             transposed
    bnb Linear4bit       packed NF4/FP4 bytes + QuantState          dequantize_4bit / quantize_4bit
    bnb Linear8bitLt     int8 rows + per-row scales (SCB)           scale / int8_vectorwise_quant

Writes happen in place on the existing Parameter, so optimizers, hooks and tied references stay valid.
"""

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D


def is_bnb_4bit(layer: nn.Module) -> bool:
    return type(layer).__name__ in ("Linear4bit", "LinearNF4", "LinearFP4")


def is_bnb_8bit(layer: nn.Module) -> bool:
    return type(layer).__name__ == "Linear8bitLt"


def is_adaptable(layer: nn.Module) -> bool:
    """Layers a LoRA adapter can wrap: dense linears, GPT-2 Conv1D, and bitsandbytes k-bit linears."""
    return isinstance(layer, (nn.Linear, Conv1D)) or is_bnb_4bit(layer) or is_bnb_8bit(layer)


def is_quantized(layer: nn.Module) -> bool:
    return is_bnb_4bit(layer) or is_bnb_8bit(layer)


def layer_shape(layer: nn.Module) -> tuple[int, int]:
    """(d_in, d_out) of an adaptable layer, whatever its storage."""
    if isinstance(layer, Conv1D):
        return layer.weight.shape[0], layer.weight.shape[1]
    return layer.in_features, layer.out_features


def read_weight(layer: nn.Module) -> torch.Tensor:
    """The layer's weight as a dense (d_out, d_in) tensor (dequantized for k-bit layers; a view for dense ones)."""
    weight = layer.weight
    if isinstance(layer, Conv1D):
        return weight.T
    if is_bnb_4bit(layer):
        import bitsandbytes.functional as bnbf

        data, state = _unpacked_4bit(weight)
        return bnbf.dequantize_4bit(data, state)
    if is_bnb_8bit(layer):
        import bitsandbytes.functional as bnbf

        scales = weight.SCB if getattr(weight, "SCB", None) is not None else layer.state.SCB
        return bnbf.int8_vectorwise_dequant(weight.data, scales)
    return weight


def write_weight(layer: nn.Module, dense: torch.Tensor) -> None:
    """Store a dense (d_out, d_in) tensor as the layer's weight, requantizing k-bit layers."""
    weight = layer.weight
    if is_bnb_4bit(layer):
        import bitsandbytes.functional as bnbf

        packed, state = bnbf.quantize_4bit(
            dense.to(weight.device, weight.quant_state.dtype).contiguous(),
            blocksize=weight.blocksize,
            compress_statistics=weight.compress_statistics,
            quant_type=weight.quant_type,
            quant_storage=weight.quant_storage,
        )
        weight.data = packed
        weight.quant_state = state
        layer.quant_state = state
    elif is_bnb_8bit(layer):
        import bitsandbytes.functional as bnbf

        rows, scales, _ = bnbf.int8_vectorwise_quant(dense.to(weight.device, torch.float16).contiguous())
        weight.data = rows
        weight.CB, weight.SCB = rows, scales  # the next forward moves them into layer.state
    elif isinstance(layer, Conv1D):
        weight.data.copy_(dense.T)
    else:
        weight.data.copy_(dense)


def _unpacked_4bit(weight: torch.Tensor):
    """Undo the AVX512-BF16 CPU repacking bitsandbytes may apply at inference, so dequantize_4bit can read it."""
    state = weight.quant_state
    if getattr(state, "packing_format_for_cpu", False):
        import bitsandbytes.functional as bnbf

        data, state = bnbf._convert_weight_packed_for_cpu_inverse(weight.data, state)
        weight.data, weight.quant_state = data, state
    return weight.data, state
