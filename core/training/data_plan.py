"""The data a run trains and evaluates on: a train set, an eval set (a file, or a held-out share), and
the fixed prompts whose answers are sampled at every checkpoint. SFT runs train on examples (TrainingData),
DPO and ORPO runs on preference pairs (PreferenceData); the loop asks either for batches, each batch's weight
in the step (trained tokens, or pairs) and the eval scores."""

import dataclasses
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from core.chat.generate import Message, greedy_answers
from core.data import Batch, BatchSettings, DataPosition, PreparedDataset, iterate_batches, prepare_dataset
from core.data.preference import PreparedPreferences, iterate_pair_batches, prepare_preferences
from core.data.problems import MAX_LISTED
from core.models.packed_attention import can_use_packed_attention
from core.training.config import TrainConfig
from core.training.distributed import World
from core.training.loss import trained_token_loss
from core.training.preference import PreferenceObjective, pair_count
from core.training.run_folder import RunFolder

SAMPLE_PROMPTS = 3


@dataclass
class TrainingData:
    train: PreparedDataset
    eval: PreparedDataset | None
    sample_prompts: list[list[Message]]
    pad_token_id: int

    def batches(self, settings: BatchSettings, start: DataPosition = DataPosition(),
                share: tuple[int, int] = (0, 1)) -> Iterator[Batch]:
        """The training batches from `start` on, epoch after epoch (this rank's `share` of each)."""
        return iterate_batches(self.train.examples, settings, self.pad_token_id, start=start, share=share)

    def weight(self, batch: Batch) -> int:
        """What a batch's summed loss is divided by, over the step's window: its trained tokens."""
        return batch.trained_tokens

    def eval_scores(self, model: torch.nn.Module, settings: BatchSettings, world: World = World()
                    ) -> dict[str, float] | None:
        """The eval set's scores (None without one): the mean loss per trained token."""
        loss = self.eval_loss(model, settings, world)
        return None if loss is None else {"loss": loss}

    def eval_loss(self, model: torch.nn.Module, settings: BatchSettings, world: World = World()) -> float | None:
        """Mean loss per trained token over the whole eval set (None without one), each rank scoring its share."""
        if self.eval is None:
            return None
        return mean_loss(model, self.eval, settings, self.pad_token_id, world)

    def record_skipped_rows(self, folder: RunFolder) -> int:
        """Write the invalid rows the run leaves out (skip_invalid) to its folder, the first MAX_LISTED of each file
        with their line and problem, so a run that trained on part of a file says which part; return their count.
        With none, a list an earlier start of the run wrote is removed (its data was fixed before a resume)."""
        reports = [data.report for data in (self.train, self.eval) if data and not data.report.ok]
        # keyed by what each says: a held-out share, or an eval file that is the dataset, is one file, listed once
        listed = {report.listing(MAX_LISTED): report.invalid_rows for report in reports}
        folder.write_skipped_rows("\n\n".join(listed) + "\n" if listed else None)
        return sum(listed.values())


@dataclass
class PreferenceData(TrainingData):
    """A DPO or ORPO run's pairs; `objective` scores them."""

    objective: PreferenceObjective = PreferenceObjective("dpo")

    def batches(self, settings: BatchSettings, start: DataPosition = DataPosition(),
                share: tuple[int, int] = (0, 1)) -> Iterator[Batch]:
        """The pair batches from `start` on, epoch after epoch (this rank's `share` of each batch's pairs)."""
        return iterate_pair_batches(self.train.examples, settings, self.pad_token_id, start=start, share=share)

    def weight(self, batch: Batch) -> int:
        """Pairs: the loss and metrics are means over the step's pairs."""
        return pair_count(batch)

    def eval_scores(self, model: torch.nn.Module, settings: BatchSettings, world: World = World()
                    ) -> dict[str, float] | None:
        """Mean loss, rewards, margin and preference accuracy per eval pair (None without an eval set), each rank
        scoring its share of every batch."""
        if self.eval is None:
            return None
        batches = iterate_pair_batches(self.eval.examples, settings, self.pad_token_id, epochs=1, share=world.share)
        return self.objective.evaluate(model, batches, world)

    def eval_loss(self, model: torch.nn.Module, settings: BatchSettings, world: World = World()) -> float | None:
        scores = self.eval_scores(model, settings, world)
        return None if scores is None else scores["loss"]


def load_training_data(config: TrainConfig, tokenizer) -> TrainingData:
    """Validate and render the dataset (refusing bad rows unless skip_invalid) and set the eval set aside."""
    if config.method == "sft":
        options = dict(max_length=config.max_len, train_on=config.train_on, skip_invalid=config.skip_invalid)
        prepare = prepare_dataset
    else:
        options = dict(max_length=config.max_len, skip_invalid=config.skip_invalid)
        prepare = prepare_preferences
    train = prepare(config.dataset, tokenizer, **options)
    if config.eval_file:
        held_out = prepare(config.eval_file, tokenizer, **options)
    elif config.eval_share > 0 and len(train.examples) > 1:
        train, held_out = split(train, config.eval_share, config.seed)
    else:
        held_out = None
    prompts = [[{"role": "user", "content": text}] for text in config.sample_prompts]
    if not prompts:
        prompts = [_prompt(source) for source in (held_out or train).sources[:SAMPLE_PROMPTS]]
    prompts = [p for p in prompts if p]
    if config.method == "sft":
        return TrainingData(train, held_out, prompts, tokenizer.pad_token_id)
    objective = PreferenceObjective(config.method, config.beta, config.orpo_lambda)
    return PreferenceData(train, held_out, prompts, tokenizer.pad_token_id, objective)


def _prompt(source) -> list[Message]:
    """A sample prompt from a row: an SFT example's conversation before its answer, or a pair's prompt."""
    return list(source.prompt) if hasattr(source, "prompt") else prompt_of(source.messages)


def attends_per_example(config: TrainConfig, model: torch.nn.Module) -> bool:
    """Whether the run packs its examples into rows and attends within each (core.models.packed_attention)."""
    return config.packing and can_use_packed_attention(model, config.max_len)


def batch_settings(config: TrainConfig, model: torch.nn.Module) -> BatchSettings:
    """How the run's examples become batches. Openings that a batch's examples share are computed once when the
    model attends per example (only that attention knows the layout), nothing drops out (dropout on a shared
    prefix would draw one mask for every example where separate rows draw one each), and on the CPU: on a GPU,
    sdpa has no fused kernel for grouped-query attention under a mask and would keep every score for the
    backward pass, so it waits for a measurement there."""
    no_dropout = config.dropout == 0 and not getattr(model.config, "attention_dropout", 0)
    share_prefix = attends_per_example(config, model) and no_dropout and model.device.type == "cpu"
    return BatchSettings(packing=config.packing, batch_size=config.batch_size, seed=config.seed,
                         share_prefix=share_prefix)


def split(data: PreparedDataset | PreparedPreferences, share: float, seed: int) -> tuple:
    """A deterministic random split: `share` of the examples (or pairs; at least one) for evaluation."""
    order = list(range(len(data.examples)))
    random.Random(seed).shuffle(order)
    count = held_out_count(share, len(order))
    held, kept = sorted(order[:count]), sorted(order[count:])

    def subset(indices: list[int]):
        return dataclasses.replace(data, examples=[data.examples[i] for i in indices],
                                   sources=[data.sources[i] for i in indices])

    return subset(kept), subset(held)


def held_out_count(share: float, examples: int) -> int:
    """How many of `examples` the split sets aside for evaluation (at least one when share > 0)."""
    return max(1, math.floor(share * examples)) if share > 0 and examples > 1 else 0


def train_examples(config: TrainConfig, valid_examples: int) -> int:
    """The examples a run trains on: all valid ones, less the held-out share when no eval file is given."""
    return valid_examples - (0 if config.eval_file else held_out_count(config.eval_share, valid_examples))


def prompt_of(messages: tuple[Message, ...]) -> list[Message]:
    """The conversation up to (not including) its last assistant answer; empty for plain text rows."""
    last_answer = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    return list(messages[:last_answer]) if last_answer else []


def reference_answer(messages: tuple[Message, ...]) -> str | None:
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    return answers[-1] if answers else None


def mean_loss(model: torch.nn.Module, data: PreparedDataset, settings: BatchSettings, pad_token_id: int,
              world: World = World()) -> float:
    """Loss per trained token over `data`; with several ranks each scores its share of every batch."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.inference_mode():
        for batch in iterate_batches(data.examples, settings, pad_token_id, epochs=1, share=world.share):
            loss, n = trained_token_loss(model, batch.model_inputs(model.device))
            total, count = total + float(loss), count + n
    model.train(was_training)
    total, count = world.total(total, count)
    return total / max(count, 1)


def sample_outputs(model, tokenizer, prompts: list[list[Message]], max_new_tokens: int) -> list[dict]:
    """Greedy answers to the fixed sample prompts, for the prompt-by-step grid."""
    answers = greedy_answers(model, tokenizer, prompts, max_new_tokens)
    return [
        {"prompt_index": i, "prompt": p[-1]["content"], "output": a} for i, (p, a) in enumerate(zip(prompts, answers))
    ]
