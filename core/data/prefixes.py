"""Which examples of a packed batch open with the same tokens, grouped so that each group's opening is computed once.

A shared prefix holds only tokens that nothing is trained on and that predict nothing trained (the chat
template's system prompt, a fixed instruction): its hidden states then feed no loss of their own and do not
depend on what follows, so one copy serves every example of the group with the same loss and gradients.
Every example keeps at least one token after its prefix.

The batch's examples are sorted by their tokens, so examples that open alike sit side by side, and the sorted
list is cut into runs that save the most tokens in all: a run of n examples sharing p tokens saves (n - 1) p. The
prefix of a sorted run is the shortest common opening of neighbours, capped by each example's untrained opening.
"""

from dataclasses import dataclass

from core.data.render import IGNORE_INDEX, RenderedExample


@dataclass(frozen=True)
class PrefixGroup:
    """Examples whose first `prefix` tokens are the same and computed once (0: an example on its own)."""

    prefix: int
    examples: list[RenderedExample]


def prefix_groups(chosen: list[RenderedExample]) -> list[PrefixGroup]:
    """The batch as groups that leave the fewest tokens to compute (a small search: a batch is a few examples)."""
    ordered = sorted(chosen, key=lambda example: example.input_ids)
    limits = [_untrained_opening(example) for example in ordered]
    common = [_common_length(a.input_ids, b.input_ids) for a, b in zip(ordered, ordered[1:])]

    def prefix(start: int, end: int) -> int:
        return min(min(common[start : end - 1]), min(limits[start:end])) if end - start > 1 else 0

    def saving(start: int, end: int) -> int:
        return (end - start - 1) * prefix(start, end)

    saved, cut = [0] * (len(ordered) + 1), [0] * (len(ordered) + 1)  # the first `end` examples: most saved, last run
    for end in range(1, len(ordered) + 1):
        cut[end] = max(range(end), key=lambda start: (saved[start] + saving(start, end), -start))  # ties: longer runs
        saved[end] = saved[cut[end]] + saving(cut[end], end)
    groups, end = [], len(ordered)
    while end:
        start = cut[end]
        groups.append(PrefixGroup(prefix(start, end), ordered[start:end]))
        end = start
    return groups[::-1]


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
