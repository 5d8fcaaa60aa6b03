"""Which examples of a packed batch open with the same tokens, grouped so that each group's opening is computed once.

A shared prefix holds only tokens that nothing is trained on and that predict nothing trained (the chat
template's system prompt, a fixed instruction): its hidden states then feed no loss of their own and do not
depend on what follows, so one copy serves every example of the group with the same loss and gradients.
Every example keeps at least one token after its prefix.

The batch's examples are sorted by their shareable openings, so examples that open alike sit side by side, and
the sorted list is cut into runs that save the most tokens in all: a run of n examples sharing p tokens saves
(n - 1) p. The prefix of a sorted run is the shortest common opening of neighbours.
"""

import math
from dataclasses import dataclass

from core.data.render import IGNORE_INDEX, RenderedExample


@dataclass(frozen=True)
class PrefixGroup:
    """Examples whose first `prefix` tokens are the same and computed once (0: an example on its own)."""

    prefix: int
    examples: list[RenderedExample]


def prefix_groups(chosen: list[RenderedExample]) -> list[PrefixGroup]:
    """The batch as groups that leave the fewest tokens to compute: the best cut of the sorted examples into runs,
    found run end by run end (quadratic in the batch size, which is small)."""
    shareable = sorted(((example.input_ids[: _untrained_opening(example)], example) for example in chosen),
                       key=lambda pair: pair[0])
    common = [_common_length(a, b) for (a, _), (b, _) in zip(shareable, shareable[1:])]
    saved, cuts = [0], [0]  # for the first `end` examples: the most tokens saved, and where its last run starts
    for end in range(1, len(shareable) + 1):
        best, cut, prefix = saved[end - 1], end - 1, math.inf
        for start in range(end - 2, -1, -1):  # longer and longer runs ending at `end`
            prefix = min(prefix, common[start])
            if saved[start] + (end - start - 1) * prefix >= best:  # ties: the longer run
                best, cut = saved[start] + (end - start - 1) * prefix, start
        saved.append(best)
        cuts.append(cut)
    groups, end = [], len(shareable)
    while end:
        start = cuts[end]
        prefix = min(common[start : end - 1], default=0)
        groups.append(PrefixGroup(prefix, [example for _, example in shareable[start:end]]))
        end = start
    return groups[::-1]


def saved_tokens(groups: list[PrefixGroup]) -> int:
    """Tokens the groups' rows leave out: every example of a group but one skips its prefix."""
    return sum((len(group.examples) - 1) * group.prefix for group in groups)


def shared_token_share(examples: list[RenderedExample], plan: list[list[int]]) -> float:
    """Share of the examples' tokens that batches of this plan (example indices per batch) compute only once."""
    tokens = sum(len(example.input_ids) for example in examples)
    saved = sum(saved_tokens(prefix_groups([examples[i] for i in batch])) for batch in plan)
    return saved / tokens if tokens else 0.0


def _untrained_opening(example: RenderedExample) -> int:
    """The most tokens a prefix may take from this example: none trained, none predicting a trained token."""
    first_trained = next((i for i, label in enumerate(example.labels) if label != IGNORE_INDEX), len(example.labels))
    return min(first_trained, len(example.input_ids)) - 1


def _common_length(a: list[int], b: list[int]) -> int:
    length = 0
    for x, y in zip(a, b):
        if x != y:
            break
        length += 1
    return length
