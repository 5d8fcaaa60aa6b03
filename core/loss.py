"""The training loss, computed only where it counts.

A causal LM predicts token t+1 from position t. Prompt tokens masked out of the loss need no
LM-head logits at all, so we run the decoder, keep the hidden states of the trained positions only,
and apply the LM head and cross-entropy to those. For chat data, where answers are a small share of
the tokens, this skips most of the LM head's work (49152 x 576 multiply-adds per token for SmolLM2).
"""

import torch
import torch.nn.functional as F

from core.data import IGNORE_INDEX


def trained_token_loss(model: torch.nn.Module, inputs: dict) -> tuple[torch.Tensor, int]:
    """Sum of cross-entropies over trained positions of one batch, and how many there were.

    `inputs` is `Batch.model_inputs()`: input_ids, labels and position_ids (packed) or attention_mask (padded).
    """
    labels = inputs["labels"]
    decoder_inputs = {key: value for key, value in inputs.items() if key != "labels"}
    hidden = model.base_model(**decoder_inputs).last_hidden_state
    targets = labels[:, 1:]
    chosen = targets != IGNORE_INDEX
    count = int(chosen.sum())
    if count == 0:
        return hidden.sum() * 0.0, 0
    logits = model.get_output_embeddings()(hidden[:, :-1][chosen]).float()
    softcap = getattr(model.config, "final_logit_softcapping", None)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits, targets[chosen], reduction="sum"), count
