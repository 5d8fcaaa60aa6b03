"""Batched decoding with a different adapter per row: each row must answer as it would alone.

The oracle is `model.generate` on one prompt with that row's adapters switched on the usual way
(`active_adapters`): the path the CLI's `chat` takes.
"""

import torch

from core.chat.decoding import DecodingBatch, Row
from core.chat.generate import Sampling
from core.lora.model import LoraSettings, active_adapters, add_adapter, routed_adapters
from tests.lora_helpers import TOKENS, load, randomize

GREEDY = Sampling(max_new_tokens=12, temperature=0)
PROMPTS = [[1, 17, 42, 99, 7], [3, 8, 120, 77, 19, 2, 250, 11, 40, 41], [5, 6]]
ROW_GAINS = [{"one": 1.0}, {}, {"two": 1.0, "one": 0.5}]


def _two_adapters(folder):
    model = load(folder)
    add_adapter(model, "one", LoraSettings(r=4, targets="all-linear"), activate=False)
    add_adapter(model, "two", LoraSettings(r=2, targets="qv"), activate=False)
    randomize(model, "one", seed=1)
    randomize(model, "two", seed=2)
    return model


def _generated_alone(model, prompt, gains, new_tokens):
    ids = torch.tensor([prompt])
    with active_adapters(model, gains), torch.inference_mode():
        output = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                do_sample=False, temperature=None, top_p=None, top_k=None, eos_token_id=None,
                                pad_token_id=0)
    return output[0, len(prompt):].tolist()


def test_routed_rows_equal_each_row_alone(tiny_llama_dir):
    model = _two_adapters(tiny_llama_dir)
    with routed_adapters(model, ROW_GAINS[:2]), torch.no_grad():
        together = model(TOKENS).logits
    for row, gains in enumerate(ROW_GAINS[:2]):
        with active_adapters(model, gains), torch.no_grad():
            alone = model(TOKENS[row : row + 1]).logits[0]
        torch.testing.assert_close(together[row], alone, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        base = model(TOKENS).logits
    assert (together[0] - base[0]).abs().max() > 1e-2  # the adapter really changed row 0


def test_batch_greedy_tokens_equal_generate_alone(tiny_llama_dir):
    model = _two_adapters(tiny_llama_dir)
    batch = DecodingBatch(model)
    rows = [Row(prompt, gains, GREEDY) for prompt, gains in zip(PROMPTS, ROW_GAINS)]
    batch.admit(rows[0])
    batch.step()
    batch.admit(rows[1])  # joins mid-way, with a longer prompt: the first row is left-padded
    batch.step()
    batch.admit(rows[2])
    for _ in range(6):
        batch.step()
    batch.keep([0, 2])  # the middle row leaves; the others go on over a trimmed cache
    for _ in range(3):
        batch.step()
    for row in rows:
        assert row.generated == _generated_alone(model, row.prompt, row.gains, len(row.generated))
    assert len(rows[0].generated) == 12 and len(rows[1].generated) == 8
    assert rows[0].generated != _generated_alone(model, rows[0].prompt, {}, 12)  # adapters matter here


def test_a_lone_row_matches_generate_bit_for_bit(tiny_llama_dir):
    model = _two_adapters(tiny_llama_dir)
    batch = DecodingBatch(model)
    row = Row(PROMPTS[1], {"one": 1.0}, GREEDY)
    batch.admit(row)
    for _ in range(9):
        batch.step()
    assert row.generated == _generated_alone(model, row.prompt, row.gains, 10)


def test_seeded_sampling_is_the_same_alone_or_in_a_batch(tiny_llama_dir):
    model = _two_adapters(tiny_llama_dir)
    sampling = Sampling(temperature=1.0, top_p=0.9, seed=7)
    alone = DecodingBatch(model)
    single = Row(PROMPTS[0], {"one": 1.0}, sampling)
    alone.admit(single)
    for _ in range(8):
        alone.step()
    shared = DecodingBatch(model)
    together = Row(PROMPTS[0], {"one": 1.0}, sampling)
    shared.admit(Row(PROMPTS[1], {"two": 1.0}, Sampling(temperature=1.0, seed=3)))
    shared.admit(together)
    for _ in range(8):
        shared.step()
    assert together.generated == single.generated
    other = Row(PROMPTS[0], {"one": 1.0}, Sampling(temperature=1.0, top_p=0.9, seed=8))
    third = DecodingBatch(model)
    third.admit(other)
    for _ in range(8):
        third.step()
    assert other.generated != single.generated
