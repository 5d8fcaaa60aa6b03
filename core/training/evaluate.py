"""Evaluation of a base model or an adapter on a dataset: loss, perplexity and exact match; on a preference
dataset, how often the model ranks the chosen answer above the rejected one.

Exact match compares the greedy answer to the reference answer (the last assistant turn) after
trimming white space, which is what a structured task such as date rewriting needs.
"""

import math
from dataclasses import dataclass

import torch

from core.chat.generate import greedy_answers
from core.data import BatchSettings, prepare_dataset
from core.data.preference import iterate_pair_batches, prepare_preferences
from core.training.data_plan import mean_loss, prompt_of, reference_answer
from core.training.preference import answer_log_probs, reference_log_probs


@dataclass
class EvalScores:
    loss: float
    perplexity: float
    exact_match: float | None  # None when the dataset has no reference answers (plain text)
    examples: int
    skipped_rows: int  # invalid rows left out (only with skip_invalid): scores over part of a file say so


def evaluate(model, tokenizer, dataset: str, max_len: int = 512, batch_size: int = 8,
             skip_invalid: bool = False) -> EvalScores:
    """Score the model as it is now (with whichever adapters are active) on `dataset`. Invalid rows are refused
    with the row-by-row report training gives (DatasetError), or with `skip_invalid` left out and counted."""
    data = prepare_dataset(dataset, tokenizer, max_length=max_len, skip_invalid=skip_invalid)
    loss = mean_loss(model, data, BatchSettings(batch_size=batch_size), tokenizer.pad_token_id)
    pairs = [(prompt_of(s.messages), reference_answer(s.messages)) for s in data.sources]
    pairs = [(prompt, answer) for prompt, answer in pairs if prompt and answer is not None]
    exact = None
    if pairs:
        longest = max(len(tokenizer(answer, add_special_tokens=False)["input_ids"]) for _, answer in pairs)
        answers = greedy_answers(model, tokenizer, [p for p, _ in pairs], max_new_tokens=longest + 8)
        exact = sum(_same(got, want) for got, (_, want) in zip(answers, pairs)) / len(pairs)
    return EvalScores(loss=loss, perplexity=math.exp(min(loss, 50)), exact_match=exact, examples=len(data.examples),
                      skipped_rows=data.report.invalid_rows)


def _same(got: str, want: str) -> bool:
    return " ".join(got.split()) == " ".join(want.split())


@dataclass
class PreferenceScores:
    """How a model ranks the answers of a preference dataset."""

    preference_accuracy: float  # share of pairs whose chosen answer gets the higher log-prob (a tie counts half)
    mean_margin: float  # mean log p(chosen) - log p(rejected), each summed over its answer tokens (nats)
    pairs: int
    skipped_rows: int
    reward_accuracy: float | None = None  # with the adapter: DPO's implicit reward, log-probs less the base's
    reward_margin: float | None = None


def evaluate_preferences(model, tokenizer, dataset: str, max_len: int = 512, batch_size: int = 8,
                         skip_invalid: bool = False, against_base: bool = False) -> PreferenceScores:
    """Score the model as it is now on a preference dataset; `against_base` also scores the active adapter's
    rewards against the same model with every adapter off (what DPO's training metrics report)."""
    data = prepare_preferences(dataset, tokenizer, max_length=max_len, skip_invalid=skip_invalid)
    own, base = [], []
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for batch in iterate_pair_batches(data.examples, BatchSettings(batch_size=batch_size), tokenizer.pad_token_id,
                                          epochs=1):
            own.append(answer_log_probs(model, batch)[0])
            if against_base:
                base.append(reference_log_probs(model, batch))
    model.train(was_training)
    margins = _margins(own)
    scores = PreferenceScores(preference_accuracy=_won(margins), mean_margin=float(margins.mean()),
                              pairs=len(data.examples), skipped_rows=data.report.invalid_rows)
    if against_base:
        rewards = margins - _margins(base)
        scores.reward_accuracy, scores.reward_margin = _won(rewards), float(rewards.mean())
    return scores


def _margins(log_probs: list[torch.Tensor]) -> torch.Tensor:
    joined = torch.cat(log_probs)
    return joined[0::2] - joined[1::2]


def _won(margins: torch.Tensor) -> float:
    return float(((margins > 0).float() + 0.5 * (margins == 0).float()).mean())
