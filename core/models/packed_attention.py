"""Attention for packed rows, one example at a time, so no work is spent across example boundaries.

For a packed row (several examples end to end, position_ids restarting at 0) transformers gives sdpa a
block-diagonal mask, and sdpa then scores every pair of tokens in the row: L^2 work for a row of L tokens,
most of it masked away, and no causal fast path. This attention cuts the row at the example boundaries
(`cu_seq_lens_q`, the cumulative lengths that transformers' flash-attention kwargs also use; `Batch`
passes them) and runs causal sdpa per example: sum(l_i^2) / 2 work instead of L^2. Without boundaries
(generation, padded batches) it is plain sdpa with the usual mask.

On the CPU the examples attend in fp32 whatever the model's dtype (a bf16 model is cast there and back).

A row whose examples share opening tokens holds each shared prefix once (`segment_prefixes`, see
`core.data.batch`): a prefix attends to itself like an example, and each example's own tokens attend to their
prefix and then causally to themselves, with a mask aligned to the bottom right (query i of the example sits at
position prefix + i).
"""

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "loraforge_packed"


def packed_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    cu_seq_lens_q: torch.Tensor | None = None,
    segment_prefixes: tuple[int, ...] = (),
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature; query/key/value are (batch 1, heads, tokens, head_dim)."""
    if cu_seq_lens_q is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    lengths = _example_lengths(cu_seq_lens_q)
    dtype = query.dtype
    if query.device.type == "cpu":  # the CPU's 16-bit flash attention runs its backward at about half fp32's speed
        query, key, value = query.float(), key.float(), value.float()
    options = dict(dropout_p=dropout if module.training else 0.0, scale=scaling,
                   enable_gqa=getattr(module, "num_key_value_groups", 1) > 1)
    # split (not slicing): its backward joins the examples' gradients in one pass instead of one full-size
    # zero-filled tensor per example
    segments = list(zip(query.split(lengths, 2), key.split(lengths, 2), value.split(lengths, 2)))
    parts = []
    for (q, k, v), prefix in zip(segments, segment_prefixes or [-1] * len(segments)):
        if prefix < 0:
            parts.append(F.scaled_dot_product_attention(q, k, v, is_causal=True, **options))
            continue
        _, prefix_k, prefix_v = segments[prefix]
        mask = _after_prefix_mask(q.shape[2], prefix_k.shape[2], q.device)
        parts.append(F.scaled_dot_product_attention(q, torch.cat([prefix_k, k], 2), torch.cat([prefix_v, v], 2),
                                                    attn_mask=mask, **options))
    return torch.cat(parts, dim=2).transpose(1, 2).to(dtype, memory_format=torch.contiguous_format), None


# (boundaries, their example lengths, masks): every layer of a forward shares them
_last_lengths: list = [None, None, {}]


def _example_lengths(cu_seq_lens: torch.Tensor) -> list[int]:
    """The examples' lengths, read once per forward rather than once per layer: reading a GPU tensor on the
    host waits for the GPU, and a wait in every layer keeps the host from queueing work ahead."""
    if _last_lengths[0] is not cu_seq_lens:
        _last_lengths[:] = [cu_seq_lens, cu_seq_lens.diff().tolist(), {}]
    return _last_lengths[1]


def _after_prefix_mask(length: int, prefix: int, device: torch.device) -> torch.Tensor:
    """Which keys (the prefix, then the example's own tokens) each of an example's `length` queries sees."""
    masks = _last_lengths[2]
    if (length, prefix) not in masks:
        masks[length, prefix] = torch.ones(length, prefix + length, dtype=torch.bool, device=device).tril(prefix)
    return masks[length, prefix]


def can_use_packed_attention(model: torch.nn.Module, max_length: int) -> bool:
    """True for models whose attention is plain causal sdpa: no sliding window shorter than an example, no
    logit soft-capping, and an attention that goes through transformers' attention-function interface."""
    config = model.config
    longest, _ = per_example_limit(config)
    if longest == 0 or (longest and longest < max_length):
        return False
    return getattr(config, "_attn_implementation", None) in ("sdpa", "eager", NAME)


def per_example_limit(config) -> tuple[int | None, str]:
    """From a model's config alone (before it is loaded): the longest max length at which it can attend per
    example (None: any, 0: none) and why there is a limit: a sliding window, or logit soft-capping."""
    if getattr(config, "attn_logit_softcapping", None):
        return 0, "logit soft-capping"
    window = getattr(config, "sliding_window", None)
    return (window, f"a sliding window of {window} tokens") if window else (None, "")


def use_packed_attention(model: torch.nn.Module) -> None:
    """Switch `model` to per-example attention for packed rows (plain sdpa for everything else)."""
    AttentionInterface.register(NAME, packed_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    model.set_attn_implementation(NAME)
