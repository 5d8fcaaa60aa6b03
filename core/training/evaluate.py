"""Evaluation of a base model or an adapter on a dataset: loss, perplexity and exact match.

Exact match compares the greedy answer to the reference answer (the last assistant turn) after
trimming white space, which is what a structured task such as date rewriting needs.
"""

import math
from dataclasses import dataclass

from core.chat.generate import greedy_answers
from core.data import BatchSettings, prepare_dataset
from core.training.data_plan import mean_loss, prompt_of, reference_answer


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
