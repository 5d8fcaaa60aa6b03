"""Batches without padding waste, in an order fixed by (seed, epoch) so training can resume exactly.

Packing (the default) lays the `batch_size` examples of a batch end to end in one row, with
position_ids restarting at 0 for each example (padding-free flattening: a step sees the same examples
as a padded batch would, so settings mean what they mean in other trainers). transformers (5.x) turns restarting
position_ids into a block-diagonal causal mask for eager and sdpa attention (and varlen flash
attention on CUDA) only when no attention_mask and no KV cache are passed, so `model_inputs()` passes
neither (`use_cache=False`). There is no padding at all: every token in the row is real. A packed batch also
passes the examples' cumulative lengths (`cu_seq_lens_q`), which `core.models.packed_attention` uses to attend within
each example only, instead of scoring every pair of tokens in the row under a block-diagonal mask.

With `share_prefix`, examples of a packed batch that open with the same untrained tokens (the chat template's
system prompt, a fixed instruction) are grouped (core/data/prefixes.py): the row holds each group's opening once,
then each example's own rest, and `Batch.segment_prefixes` says which segment every rest continues. The same
loss and gradients as for separate examples, for less work. Only `core.models.packed_attention` knows to let each rest
attend to its prefix, so the setting is for it alone.

With packing off, examples are padded per batch; `group_by_length` sorts examples by length within
shuffled groups of `GROUP_BATCHES` batches, so each batch holds similar lengths and pads little.

The position of a batch is (epoch, index within the epoch). A checkpoint stores `next_position`
and `iterate_batches(..., start=next_position)` continues with exactly the batches that would follow.

Several processes training together (core/training/distributed.py) see the same plan: with `share=(rank, ranks)`
each collates only its contiguous share of every batch's examples, so together they train on exactly the batch
that one process would. A share with no examples (a batch smaller than the number of processes) is one token with
nothing to train, so every process still runs the same passes.
"""

import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from core.data.prefixes import PrefixGroup, prefix_groups, saved_tokens
from core.data.render import IGNORE_INDEX, RenderedExample

GROUP_BATCHES = 16


@dataclass(frozen=True)
class DataPosition:
    """Where the data stream stands: the next batch is batch `index` of epoch `epoch`."""

    epoch: int = 0
    index: int = 0


@dataclass(frozen=True)
class BatchSettings:
    """How examples become batches: `batch_size` examples each, flattened into one row or padded."""

    packing: bool = True
    batch_size: int = 8
    group_by_length: bool = True
    seed: int = 0
    share_prefix: bool = False


@dataclass
class Batch:
    input_ids: torch.Tensor
    labels: torch.Tensor
    position_ids: torch.Tensor | None
    attention_mask: torch.Tensor | None
    boundaries: torch.Tensor | None  # packed: cumulative segment lengths [0, l1, l1 + l2, ...]
    position: DataPosition
    next_position: DataPosition
    example_numbers: list[int]  # source line/row numbers, for messages about a bad batch
    segment_prefixes: tuple[int, ...] = ()  # shared prefixes: per segment, the segment it continues, or -1
    saved_tokens: int = 0  # tokens of the examples that shared prefixes left out of the row
    segment_examples: tuple[int, ...] = ()  # per segment (packed) or row (padded): its example's index in the
    # batch as collated, -1 for a shared prefix; preference losses sum each answer's log-probs by it

    @property
    def tokens(self) -> int:
        """The examples' real (non-padding) tokens, a shared prefix counted once per example."""
        if not self.example_numbers:  # an empty share's placeholder token
            return 0
        if self.attention_mask is not None:
            return int(self.attention_mask.sum())
        return self.input_ids.numel() + self.saved_tokens

    @property
    def trained_tokens(self) -> int:
        return int((self.labels != IGNORE_INDEX).sum())

    def model_inputs(self, device: torch.device | str = "cpu") -> dict:
        """Keyword arguments for `model(**...)` on `device`; no KV cache, so packed examples stay isolated.
        The boundaries stay on the CPU: they only say where to slice."""
        inputs = {"input_ids": self.input_ids, "labels": self.labels}
        if self.position_ids is not None:
            inputs["position_ids"] = self.position_ids
        if self.attention_mask is not None:
            inputs["attention_mask"] = self.attention_mask
        moved = {key: value.to(device) for key, value in inputs.items()}
        if self.boundaries is not None:
            moved["cu_seq_lens_q"] = self.boundaries
        if self.segment_prefixes:
            moved["segment_prefixes"] = self.segment_prefixes
        return {**moved, "use_cache": False}


def epoch_plan(lengths: Sequence[int], settings: BatchSettings, epoch: int) -> list[list[int]]:
    """The example indices of every batch of one epoch; the same for the same lengths, settings and epoch."""
    rng = random.Random(settings.seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    size = settings.batch_size
    if settings.packing or not settings.group_by_length:
        return [order[start : start + size] for start in range(0, len(order), size)]
    group = size * GROUP_BATCHES
    batches = []
    for start in range(0, len(order), group):
        by_length = sorted(order[start : start + group], key=lambda i: lengths[i], reverse=True)
        batches += [by_length[i : i + size] for i in range(0, len(by_length), size)]
    rng.shuffle(batches)
    return batches


def iterate_batches(
    examples: Sequence[RenderedExample],
    settings: BatchSettings,
    pad_token_id: int,
    start: DataPosition = DataPosition(),
    epochs: int | None = None,
    share: tuple[int, int] = (0, 1),
) -> Iterator[Batch]:
    """Yield batches from `start` on, epoch after epoch (for ever when epochs is None); with `share=(rank, ranks)`,
    that process's share of each batch."""
    lengths = [len(example.input_ids) for example in examples]
    return iterate_items(lengths, lambda i: (examples[i],), settings, pad_token_id, start, epochs, share)


def iterate_items(
    lengths: Sequence[int],
    members: Callable[[int], Sequence[RenderedExample]],
    settings: BatchSettings,
    pad_token_id: int,
    start: DataPosition = DataPosition(),
    epochs: int | None = None,
    share: tuple[int, int] = (0, 1),
) -> Iterator[Batch]:
    """`iterate_batches` over items of `lengths` tokens that each collate as `members(index)`: an example, or a
    preference pair's two answers, which stay together in one rank's share."""
    epoch, index = start.epoch, start.index
    while epochs is None or epoch < epochs:
        plan = epoch_plan(lengths, settings, epoch)
        for position in range(index, len(plan)):
            chosen = [example for i in share_of(plan[position], *share) for example in members(i)]
            following = DataPosition(epoch, position + 1) if position + 1 < len(plan) else DataPosition(epoch + 1, 0)
            here = DataPosition(epoch, position)
            if not chosen:
                yield _placeholder(members(plan[position][0])[0], settings.packing, here, following)
            else:
                yield collate(chosen, settings, pad_token_id, here, following)
        epoch, index = epoch + 1, 0


def share_of(indices: list[int], rank: int, ranks: int) -> list[int]:
    """Process `rank`'s contiguous share of one batch's examples; the shares of all `ranks` differ in size by one
    at most (the first ranks take the extra ones) and, in rank order, are the batch."""
    size, extra = divmod(len(indices), ranks)
    start = rank * size + min(rank, extra)
    return indices[start : start + size + (rank < extra)]


def _placeholder(example: RenderedExample, packed: bool, position: DataPosition, following: DataPosition) -> Batch:
    """One token and no label: a pass through the model that trains nothing (an empty share of a batch)."""
    ids = torch.tensor([example.input_ids[:1]])
    if packed:
        return Batch(ids, torch.full_like(ids, IGNORE_INDEX), torch.zeros_like(ids), None, torch.tensor([0, 1]),
                     position, following, [])
    return Batch(ids, torch.full_like(ids, IGNORE_INDEX), None, torch.ones_like(ids), None, position, following, [])


def collate(chosen: list[RenderedExample], settings: BatchSettings, pad_token_id: int, position: DataPosition,
            following: DataPosition) -> Batch:
    """One batch of `chosen`, packed or padded as `settings` say."""
    if settings.packing:
        return _collate_packed(chosen, position, following, settings.share_prefix)
    return _collate_padded(chosen, pad_token_id, position, following)


def batches_per_epoch(lengths: Sequence[int], settings: BatchSettings) -> int:
    """How many batches one epoch yields (packing varies slightly by epoch; epoch 0 is representative)."""
    return len(epoch_plan(lengths, settings, 0))


def padding_share(lengths: Sequence[int], plan: list[list[int]]) -> float:
    """Share of tensor cells that are padding when each batch is padded to its longest example."""
    cells = sum(max(lengths[i] for i in batch) * len(batch) for batch in plan)
    return 1 - sum(lengths) / cells if cells else 0.0


def _collate_packed(chosen: list[RenderedExample], position: DataPosition, following: DataPosition,
                    share_prefix: bool) -> Batch:
    groups = prefix_groups(chosen) if share_prefix else [PrefixGroup(0, [example]) for example in chosen]
    index_of = {id(example): i for i, example in enumerate(chosen)}
    ids, labels, positions, lengths, prefixes, owners = [], [], [], [], [], []
    for group in groups:
        shared, prefix_segment = group.prefix, len(lengths)  # (example, first token, end, segment it continues, owner)
        segments = [(group.examples[0], 0, shared, -1, -1)] if shared else []
        segments += [(example, shared, len(example.input_ids), prefix_segment if shared else -1, index_of[id(example)])
                     for example in group.examples]
        for example, start, end, prefix, owner in segments:
            ids += example.input_ids[start:end]
            labels += example.labels[start:end]
            positions += range(start, end)
            lengths.append(end - start)
            prefixes.append(prefix)
            owners.append(owner)
    return Batch(
        input_ids=torch.tensor([ids]),
        labels=torch.tensor([labels]),
        position_ids=torch.tensor([positions]),
        attention_mask=None,
        boundaries=torch.cat([torch.zeros(1, dtype=torch.long), torch.tensor(lengths).cumsum(0)]),
        position=position,
        next_position=following,
        example_numbers=[example.number for group in groups for example in group.examples],
        segment_prefixes=tuple(prefixes) if max(prefixes) >= 0 else (),
        saved_tokens=saved_tokens(groups),
        segment_examples=tuple(owners),
    )


def _collate_padded(chosen: list[RenderedExample], pad_token_id: int, position: DataPosition,
                    following: DataPosition) -> Batch:
    width = max(len(example.input_ids) for example in chosen)
    ids = torch.full((len(chosen), width), pad_token_id)
    labels = torch.full((len(chosen), width), IGNORE_INDEX)
    mask = torch.zeros((len(chosen), width), dtype=torch.long)
    for row, example in enumerate(chosen):
        n = len(example.input_ids)
        ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        mask[row, :n] = 1
    return Batch(ids, labels, None, mask, None, position, following, [example.number for example in chosen],
                 segment_examples=tuple(range(len(chosen))))
