"""Where a model computes: the device and dtype names people choose, and what "auto" means on this machine."""

import torch

from core.models.errors import ModelSourceError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelSourceError(
            f"Device {device!r} was asked for, but this machine has no CUDA GPU that torch can use. "
            "Use device 'cpu' or 'auto', or install a CUDA build of torch."
        )
    try:
        return torch.device(device)
    except RuntimeError:
        raise ModelSourceError(f"Unknown device {device!r}. Use 'auto', 'cpu', 'cuda' or 'cuda:N'.") from None


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in DTYPES:
        raise ModelSourceError(f"Unknown dtype {dtype!r}. Choose one of: auto, {', '.join(DTYPES)}.")
    return DTYPES[dtype]


def training_dtype(dtype: str, quantization: str, device: str) -> str:
    """The dtype a training run loads its base in: `dtype`, except that "auto" on a CPU with bf16 dot-product
    instructions (AVX512-BF16 or AMX) trains a full-precision base in bf16. There its matrix products run about
    4x as fast as fp32's (886 against 197 GFLOP/s on a 2-core AMD EPYC); the adapter, its optimizer, RMSNorm,
    attention and the loss stay in fp32. Elsewhere bf16 products are emulated and slower, so "auto" stays fp32."""
    if dtype != "auto" or quantization != "none" or resolve_device(device).type != "cpu":
        return dtype
    return "bf16" if cpu_has_bf16_products() else dtype


def cpu_has_bf16_products() -> bool:
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
