"""The training loss, computed only where it counts and never with every logit in memory at once.

A causal LM predicts token t+1 from position t. Prompt tokens masked out of the loss need no
LM-head logits at all, so we run the decoder, keep the hidden states of the trained positions only,
and apply the LM head and cross-entropy to those. For chat data, where answers are a small share of
the tokens, this skips most of the LM head's work (49152 x 576 multiply-adds per token for SmolLM2).

The logits themselves are the largest tensors of a step: fp32, trained tokens x vocabulary (8192 x 128256
is 4.2 GB, and autograd would keep them, their softmax and their gradient). With a frozen LM head (always
so under LoRA) `frozen_head_cross_entropy` works through the rows a chunk at a time and computes the
gradient for the hidden states in the same pass, so only one chunk of logits is ever alive.
"""

import torch
import torch.nn.functional as F
from torch import nn

from core.data import IGNORE_INDEX

LOGITS_PER_CHUNK = 2**26  # fp32 logits alive at once: 256 MB (523 rows of a 128256-token vocabulary)


def trained_token_loss(model: torch.nn.Module, inputs: dict, decoder: nn.Module | None = None
                       ) -> tuple[torch.Tensor, int]:
    """Sum of cross-entropies over trained positions of one batch, and how many there were.

    `inputs` is `Batch.model_inputs()`: input_ids, labels and position_ids (packed) or attention_mask (padded).
    `decoder` runs the model's decoder in its place (the ranks' DistributedDataParallel wrapper of it).
    """
    labels = inputs["labels"]
    decoder_inputs = {key: value for key, value in inputs.items() if key != "labels"}
    hidden = (decoder or model.base_model)(**decoder_inputs).last_hidden_state
    targets = labels[:, 1:]
    chosen = targets != IGNORE_INDEX
    count = int(chosen.sum())
    if count == 0:
        return hidden.sum() * 0.0, 0
    head = model.get_output_embeddings()
    softcap = getattr(model.config, "final_logit_softcapping", None)
    if _is_frozen_linear(head):
        rows = max(1, LOGITS_PER_CHUNK // head.out_features)
        return frozen_head_cross_entropy(hidden[:, :-1][chosen], head, targets[chosen], softcap, rows), count
    logits = head(hidden[:, :-1][chosen]).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits, targets[chosen], reduction="sum"), count


def frozen_head_cross_entropy(
    hidden: torch.Tensor, head: nn.Linear, targets: torch.Tensor, softcap: float | None, rows: int
) -> torch.Tensor:
    """Sum over rows of cross_entropy(head(hidden), targets), `rows` at a time; gradient for `hidden` only."""
    return _FrozenHeadCrossEntropy.apply(hidden, head.weight, head.bias, targets, softcap, rows)


class _FrozenHeadCrossEntropy(torch.autograd.Function):
    """The forward pass also works out d(loss)/d(hidden), chunk by chunk, while each chunk's softmax is at hand;
    the backward pass only scales it. Products run in the head's dtype (autocast's, inside an autocast region),
    the softmax in fp32, as with the plain path."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, softcap, rows):
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        gradient = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        for start in range(0, hidden.shape[0], rows):
            chunk_targets = targets[start : start + rows]
            logits = F.linear(hidden[start : start + rows], weight, bias).float()
            if softcap:
                squashed = torch.tanh(logits / softcap)
                logits = squashed * softcap
            log_probs = logits.log_softmax(dim=-1)
            del logits
            picked = log_probs.gather(1, chunk_targets[:, None])
            total -= picked.sum()
            if gradient is None:
                continue
            d_logits = log_probs.exp_()  # softmax - one-hot is the gradient of the cross-entropy for the logits
            d_logits.scatter_add_(1, chunk_targets[:, None], torch.full_like(picked, -1.0))
            if softcap:
                d_logits *= 1 - squashed * squashed
            product = d_logits.to(weight.dtype) @ weight
            gradient[start : start + rows] = product.to(hidden.dtype)
        ctx.save_for_backward(gradient)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        (gradient,) = ctx.saved_tensors
        return gradient * grad_total.to(gradient.dtype), None, None, None, None, None


def _is_frozen_linear(head: nn.Module) -> bool:
    """A plain linear LM head with nothing to train (tied embeddings included): the chunked path applies."""
    if type(head) is not nn.Linear or head.weight.requires_grad:
        return False
    return head.bias is None or not head.bias.requires_grad
