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
    log_probs, trained = trained_token_log_probs(model, inputs, decoder)
    return -log_probs.sum(), int(trained.sum())


def trained_token_log_probs(model: torch.nn.Module, inputs: dict, decoder: nn.Module | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """The log-probability of every trained target token (fp32, in row-major order of the targets) and where they
    are: a bool mask over the targets `labels[:, 1:]`. Preference losses sum them per answer. With no trained
    token the result stays tied to the decoder's graph, so a rank's empty share still takes part in backward."""
    labels = inputs["labels"]
    decoder_inputs = {key: value for key, value in inputs.items() if key != "labels"}
    hidden = (decoder or model.base_model)(**decoder_inputs).last_hidden_state
    targets = labels[:, 1:]
    trained = targets != IGNORE_INDEX
    if not trained.any():
        return torch.zeros(0, device=hidden.device) + hidden.sum().float() * 0.0, trained  # keeps backward() valid
    head = model.get_output_embeddings()
    softcap = getattr(model.config, "final_logit_softcapping", None)
    if _is_frozen_linear(head):
        rows = max(1, LOGITS_PER_CHUNK // head.out_features)
        return frozen_head_log_probs(hidden[:, :-1][trained], head, targets[trained], softcap, rows), trained
    logits = head(hidden[:, :-1][trained]).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits.log_softmax(dim=-1).gather(1, targets[trained][:, None])[:, 0], trained


def frozen_head_cross_entropy(
    hidden: torch.Tensor, head: nn.Linear, targets: torch.Tensor, softcap: float | None, rows: int
) -> torch.Tensor:
    """Sum over rows of cross_entropy(head(hidden), targets), `rows` at a time; gradient for `hidden` only."""
    return -frozen_head_log_probs(hidden, head, targets, softcap, rows).sum()


def frozen_head_log_probs(
    hidden: torch.Tensor, head: nn.Linear, targets: torch.Tensor, softcap: float | None, rows: int
) -> torch.Tensor:
    """log_softmax(head(hidden))[row, target] for every row, `rows` at a time; gradient for `hidden` only."""
    return _FrozenHeadLogProbs.apply(hidden, head.weight, head.bias, targets, softcap, rows)


class _FrozenHeadLogProbs(torch.autograd.Function):
    """The forward pass also works out each row's d(log-prob)/d(hidden), chunk by chunk, while each chunk's softmax
    is at hand; the backward pass only scales each row by its incoming gradient. Products run in the head's dtype
    (autocast's, inside an autocast region), the softmax in fp32, as with the plain path."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, softcap, rows):
        picked_rows = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
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
            picked_rows[start : start + rows] = picked[:, 0]
            if gradient is None:
                continue
            d_logits = log_probs.exp_()  # softmax - one-hot: the gradient of minus the log-prob for the logits
            d_logits.scatter_add_(1, chunk_targets[:, None], torch.full_like(picked, -1.0))
            if softcap:
                d_logits *= 1 - squashed * squashed
            product = d_logits.to(weight.dtype) @ weight
            gradient[start : start + rows] = product.to(hidden.dtype)
        ctx.save_for_backward(gradient)
        return picked_rows

    @staticmethod
    def backward(ctx, grad_rows):
        (gradient,) = ctx.saved_tensors
        return gradient * -grad_rows[:, None].to(gradient.dtype), None, None, None, None, None


def _is_frozen_linear(head: nn.Module) -> bool:
    """A plain linear LM head with nothing to train (tied embeddings included): the chunked path applies."""
    if type(head) is not nn.Linear or head.weight.requires_grad:
        return False
    return head.bias is None or not head.bias.requires_grad
