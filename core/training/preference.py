"""Preference objectives: DPO (Rafailov et al. 2023) and ORPO (Hong et al. 2024) on LoRA adapters.

    pair batch (chosen 2i, rejected 2i + 1) --policy pass (adapter on)-->  log pi(y|x) summed over answer tokens
                                            --reference pass (DPO only: the same base, adapter off, no_grad)
                                                                     -->  log pi_ref(y|x)
    DPO:  loss = -log sigmoid(beta * [(pi_c - ref_c) - (pi_r - ref_r)]),  reward = beta * (pi - ref)
    ORPO: loss = -mean log pi(chosen tokens) - lambda * log sigmoid(log odds(c) - log odds(r)),
          odds(y) = p / (1 - p) with p the mean per-token probability (as the paper), reward = lambda * mean log pi

The reference model is the base the adapter sits on, so there is one copy of the weights: its log-probs are
computed with the adapter switched off (`active_adapters(model, {})`), once per batch, without a graph. Answer
log-probs are summed per sequence as the DPO paper defines them. Preference accuracy is the share of pairs whose
chosen answer gets the higher reward (a tie counts half, so an untrained adapter scores 0.5).

With several processes each scores its share of a batch's pairs; the policy pass runs through the ranks' wrapper
(core/training/distributed.py), so its gradients are summed, and the sums of losses and metrics are totaled.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from core.data.batch import Batch
from core.lora.model import active_adapters
from core.training.distributed import World
from core.training.loss import trained_token_log_probs

METRICS = ("reward_chosen", "reward_rejected", "reward_margin", "preference_accuracy")


def answer_log_probs(model: torch.nn.Module, batch: Batch, decoder: nn.Module | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example of the batch (in collated order): the summed log-probs of its trained tokens, and their count.
    `decoder` runs the model's decoder in its place (the ranks' DistributedDataParallel wrapper of it); an empty
    share's placeholder gives no examples, its (zero) sum still tied to the decoder's graph."""
    inputs = batch.model_inputs(model.device)
    log_probs, trained = trained_token_log_probs(model, inputs, decoder)
    rows, columns = trained.nonzero(as_tuple=True)
    if batch.boundaries is not None:  # packed: the segment a target token sits in (targets are labels[:, 1:])
        segments = torch.searchsorted(batch.boundaries[1:].to(columns.device), columns + 1, right=True)
    else:
        segments = rows
    owners = torch.tensor(batch.segment_examples, dtype=torch.long, device=segments.device)[segments]
    count = 2 * pair_count(batch)
    sums = torch.zeros(count, dtype=log_probs.dtype, device=log_probs.device).index_add(0, owners, log_probs)
    return sums, torch.bincount(owners, minlength=count)


def reference_log_probs(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """The base's summed answer log-probs: the same weights with every adapter switched off, no graph kept."""
    with torch.no_grad(), active_adapters(model, {}):
        return answer_log_probs(model, batch)[0]


def dpo_losses(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, reference_chosen: torch.Tensor,
               reference_rejected: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per pair: the DPO loss, and the chosen and rejected rewards (detached)."""
    chosen = beta * (policy_chosen - reference_chosen)
    rejected = beta * (policy_rejected - reference_rejected)
    return -F.logsigmoid(chosen - rejected), chosen.detach(), rejected.detach()


def orpo_losses(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, chosen_tokens: torch.Tensor,
                rejected_tokens: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per pair: the ORPO loss (the chosen answer's mean token NLL plus lambda times the odds-ratio term), and
    the chosen and rejected rewards (lambda x mean token log-prob, detached)."""
    chosen, rejected = policy_chosen / chosen_tokens, policy_rejected / rejected_tokens
    log_odds = (chosen - rejected) - (_log1m_exp(chosen) - _log1m_exp(rejected))
    return -chosen - lam * F.logsigmoid(log_odds), lam * chosen.detach(), lam * rejected.detach()


def _log1m_exp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate near 0 too (a mean log-prob of a very confident model)."""
    x = x.clamp(max=-1e-7)
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


@dataclass(frozen=True)
class PreferenceObjective:
    """One run's preference loss: `method` dpo or orpo, `beta` (DPO) and `orpo_lambda` (ORPO)."""

    method: str
    beta: float = 0.1
    orpo_lambda: float = 0.1

    def batch_loss(self, model: torch.nn.Module, batch: Batch, decoder: nn.Module | None = None
                   ) -> tuple[torch.Tensor, dict[str, float]]:
        """The batch's summed pair losses (divide by the window's pairs) and its metrics summed over pairs; the
        policy pass runs through `decoder` when given (so the ranks exchange its gradients), the reference pass
        needs no gradient and runs the model's own."""
        sums, counts = answer_log_probs(model, batch, decoder)
        policy_chosen, policy_rejected = sums[0::2], sums[1::2]
        if self.method == "dpo":
            reference = reference_log_probs(model, batch)
            losses, chosen, rejected = dpo_losses(policy_chosen, policy_rejected, reference[0::2], reference[1::2],
                                                  self.beta)
        else:
            losses, chosen, rejected = orpo_losses(policy_chosen, policy_rejected, counts[0::2], counts[1::2],
                                                   self.orpo_lambda)
        return losses.sum(), pair_metrics(chosen, rejected)

    def evaluate(self, model: torch.nn.Module, batches, world: World = World()) -> dict[str, float]:
        """Mean loss and metrics per pair over `batches` (one pass), the model in eval mode and without a graph;
        with several ranks, each scores its share of the batches and the sums are totaled."""
        was_training = model.training
        model.eval()
        total, pairs, sums = 0.0, 0, dict.fromkeys(METRICS, 0.0)
        with torch.no_grad():
            for batch in batches:
                loss, measured = self.batch_loss(model, batch)
                total, pairs = total + float(loss), pairs + pair_count(batch)
                for name, value in measured.items():
                    sums[name] += value
        model.train(was_training)
        total, pairs, *summed = world.total(total, pairs, *sums.values())
        return {"loss": total / max(pairs, 1), **{name: value / max(pairs, 1) for name, value in zip(sums, summed)}}


def pair_count(batch: Batch) -> int:
    """How many pairs a pair batch holds (two answers each)."""
    return sum(owner >= 0 for owner in batch.segment_examples) // 2


def pair_metrics(chosen: torch.Tensor, rejected: torch.Tensor) -> dict[str, float]:
    """Rewards, margin and preference accuracy, summed over the pairs (ties count half)."""
    margin = chosen - rejected
    won = (margin > 0).float() + 0.5 * (margin == 0).float()
    return {"reward_chosen": float(chosen.sum()), "reward_rejected": float(rejected.sum()),
            "reward_margin": float(margin.sum()), "preference_accuracy": float(won.sum())}
