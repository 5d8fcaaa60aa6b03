"""Decoding many prompts as one batch, each row with its own adapters and sampling: the API server's engine room.

    admit(row)  prefill the row's prompt alone (its own adapters), sample its first token, and join the batch's
                KV cache, left-padded to the longest row (the attention mask hides the padding)
    step()      one forward for every row: the base product once, each row's adapters on its rows
                (core.lora.model.routed_adapters), then each row samples its next token
    keep(rows)  finished or cancelled rows leave; padding that no remaining row needs is cut off

A lone row makes the same forward calls as `model.generate` (the prompt with logits for its last token only,
then a token at a time with the cache), so its greedy answer is the CLI's.
"""

import inspect
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from core.chat.generate import Sampling
from core.lora.model import routed_adapters


@dataclass
class Row:
    """One prompt being answered: its tokens, the adapters it is answered with ({} = the base), and how it
    samples. `generated` grows by one token per step."""

    prompt: list[int]
    gains: dict[str, float]
    sampling: Sampling
    generated: list[int] = field(default_factory=list)
    generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        if self.sampling.temperature > 0 and self.generator is None:
            self.generator = torch.Generator()
            if self.sampling.seed is None:
                self.generator.seed()
            else:
                self.generator.manual_seed(self.sampling.seed)

    @property
    def length(self) -> int:
        return len(self.prompt) + len(self.generated)


class DecodingBatch:
    """Rows decoding together over one model: one KV cache and one attention mask, row i of each is rows[i]."""

    def __init__(self, model) -> None:
        self.model = model
        self.rows: list[Row] = []
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None  # (rows, cached length): 1 for real tokens, 0 for padding
        self.device = next(model.parameters()).device
        # transformers 5 renames the forward's `past_key_values` to `cache`; pass whichever this model takes
        self.cache_argument = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def admit(self, row: Row) -> int:
        """Prefill `row` and add it to the batch; returns its first token (also appended to row.generated)."""
        cache = DynamicCache()
        ids = torch.tensor([row.prompt], device=self.device)
        with routed_adapters(self.model, [row.gains]), torch.inference_mode():
            logits = self.model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True, logits_to_keep=1,
                                **{self.cache_argument: cache}).logits
        token = _sample(logits[0, -1], row)
        row.generated.append(token)
        self._join(cache, len(row.prompt))
        self.rows.append(row)
        return token

    def step(self) -> list[int]:
        """One token for every row (each appended to its row.generated)."""
        ids = torch.tensor([[row.generated[-1]] for row in self.rows], device=self.device)
        positions = torch.tensor([[row.length - 1] for row in self.rows], device=self.device)
        self.mask = F.pad(self.mask, (0, 1), value=1)
        with routed_adapters(self.model, [row.gains for row in self.rows]), torch.inference_mode():
            logits = self.model(input_ids=ids, attention_mask=self.mask, position_ids=positions, use_cache=True,
                                logits_to_keep=1, **{self.cache_argument: self.cache}).logits
        tokens = [_sample(logits[i, -1], row) for i, row in enumerate(self.rows)]
        for row, token in zip(self.rows, tokens):
            row.generated.append(token)
        return tokens

    def keep(self, indices: list[int]) -> None:
        """Keep only the rows at `indices` (in that order), and cut padding columns none of them needs."""
        if not indices:
            self.rows, self.cache, self.mask = [], None, None
            return
        if indices == list(range(len(self.rows))):
            return
        self.rows = [self.rows[i] for i in indices]
        chosen = torch.tensor(indices, device=self.device)
        mask = self.mask.index_select(0, chosen)
        first = int(mask.any(dim=0).int().argmax())  # the first column some row still attends to
        self.mask = mask[:, first:]
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, chosen)[:, :, first:]
            layer.values = layer.values.index_select(0, chosen)[:, :, first:]

    def _join(self, cache: DynamicCache, length: int) -> None:
        """Append a prefilled row's cache (one row, `length` tokens) to the batch's, left-padding the shorter."""
        mask = torch.ones(1, length, dtype=torch.long, device=self.device)
        if self.cache is None:
            self.cache, self.mask = cache, mask
            return
        width = max(self.mask.shape[1], length)
        joined = [(torch.cat([_left_pad(mine.keys, width, dim=2), _left_pad(theirs.keys, width, dim=2)]),
                   torch.cat([_left_pad(mine.values, width, dim=2), _left_pad(theirs.values, width, dim=2)]))
                  for mine, theirs in zip(self.cache.layers, cache.layers)]  # all built before any is replaced
        self.mask = torch.cat([_left_pad(self.mask, width), _left_pad(mask, width)])
        for layer, (keys, values) in zip(self.cache.layers, joined):
            layer.keys, layer.values = keys, values


def _left_pad(tensor: torch.Tensor, width: int, dim: int = 1) -> torch.Tensor:
    """Zeros in front along `dim` (1 for a mask, 2 for keys and values) up to `width`."""
    missing = width - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def _sample(logits: torch.Tensor, row: Row) -> int:
    """Greedy at temperature 0; else temperature, then nucleus (top_p) filtering, then a draw from the row's own
    generator, so a seeded request gives the same answer whatever else shares its batch."""
    if row.sampling.temperature == 0:
        return int(logits.argmax())
    scaled = logits.float() / row.sampling.temperature
    if row.sampling.top_p < 1:
        ordered, order = scaled.sort(descending=True)
        cumulative = ordered.softmax(-1).cumsum(-1)
        cut = cumulative - ordered.softmax(-1) >= row.sampling.top_p  # tokens wholly past the nucleus
        scaled = scaled.scatter(0, order[cut], float("-inf"))
    probabilities = scaled.softmax(-1).cpu()
    if not torch.isfinite(probabilities).all():  # logits too large for the temperature: the likeliest token
        return int(logits.argmax())
    return int(torch.multinomial(probabilities, 1, generator=row.generator))
