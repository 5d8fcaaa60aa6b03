"""Prefixes shared by a packed batch's examples are computed once, with the loss and gradients of separate examples."""

import random
from dataclasses import replace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import core.training.preflight
from core.data import BatchSettings, RenderedExample, iterate_batches, prepare_dataset
from core.data.prefixes import prefix_groups
from core.data.render import IGNORE_INDEX
from core.lora.model import LoraSettings, add_adapter
from core.models.packed_attention import packed_attention, use_packed_attention
from core.training.config import TrainConfig
from core.training.data_plan import batch_settings
from core.training.loss import trained_token_loss
from tests.job_helpers import DATES
from tests.lora_helpers import randomize

UNTRAINED = IGNORE_INDEX


def example(number, ids, untrained):
    """Token ids whose first `untrained` tokens are prompt (not trained), the rest answer."""
    return RenderedExample(number, list(ids), [UNTRAINED] * untrained + list(ids[untrained:]), len(ids))


def with_prefix(prefix, tails, seed=0):
    """Examples opening with `prefix`, then random tokens; each trains on the second half of its own tail."""
    rng = random.Random(seed)
    examples = []
    for number, length in enumerate(tails, start=1):
        tail = [rng.randrange(3, 300) for _ in range(length)]
        examples.append(example(number, prefix + tail, len(prefix) + length // 2))
    return examples


def one_batch(examples, share):
    settings = BatchSettings(packing=True, batch_size=len(examples), share_prefix=share)
    return next(iterate_batches(examples, settings, pad_token_id=0))


def shared(examples) -> list[tuple[int, list[int]]]:
    """The batch's groups as (prefix, example numbers), in the order the row holds them."""
    return [(group.prefix, sorted(example.number for example in group.examples)) for group in prefix_groups(examples)]


def test_the_prefix_ends_where_the_examples_differ_or_where_training_starts():
    common = [5, 6, 7, 8, 9, 10, 11]
    assert shared([example(1, common[:5] + [40, 41], 6), example(2, common, 6)]) == [(5, [1, 2])]
    # the second example trains on the token at 3, which position 2 predicts: position 2 stays its own
    assert shared([example(1, common, 6), example(2, common, 3)]) == [(2, [1, 2])]
    # identical examples keep a token of their own after the prefix
    assert shared([example(1, common, 7), example(2, common, 7)]) == [(6, [1, 2])]
    assert shared([example(1, common, 6)]) == [(0, [1])]
    assert [prefix for prefix, _ in shared([example(1, [1] + common, 6), example(2, common, 6)])] == [0]


def test_examples_are_grouped_by_the_longest_openings_they_share():
    """Two instructions under one system prompt: two groups sharing 10 and 8 tokens save 28 tokens, one group
    sharing the 3 tokens all five have in common would save 12."""
    system = [5, 6, 7]
    first, second = system + [20, 21, 22, 23, 24, 25, 26], system + [30, 31, 32, 33, 34]
    examples = [example(1, first + [50, 51, 52], 11), example(2, second + [60, 61], 9),
                example(3, first + [53, 54], 11), example(4, second + [62, 63, 64], 9),
                example(5, first + [55], 11)]
    assert shared(examples) == [(10, [1, 3, 5]), (8, [2, 4])]
    batch = one_batch(examples, True)
    row = [examples[number - 1] for number in batch.example_numbers]
    assert batch.segment_prefixes == (-1, 0, 0, 0, -1, 4, 4)
    assert batch.boundaries.diff().tolist() == [10] + [len(e.input_ids) - 10 for e in row[:3]] + \
        [8] + [len(e.input_ids) - 8 for e in row[3:]]
    assert batch.input_ids.tolist() == [first + [t for e in row[:3] for t in e.input_ids[10:]] +
                                        second + [t for e in row[3:] for t in e.input_ids[8:]]]
    assert batch.position_ids.tolist() == [list(range(10)) + [p for e in row[:3] for p in range(10, len(e.input_ids))] +
                                           list(range(8)) + [p for e in row[3:] for p in range(8, len(e.input_ids))]]
    assert batch.tokens == sum(len(e.input_ids) for e in examples) == batch.input_ids.shape[1] + 28


def test_a_shared_prefix_is_laid_once_and_counted_once_per_example():
    examples = with_prefix([5, 6, 7, 8], [6, 3, 9])
    plain, shared_batch = one_batch(examples, False), one_batch(examples, True)
    ordered = [examples[number - 1] for number in shared_batch.example_numbers]
    assert shared_batch.segment_prefixes == (-1, 0, 0, 0)
    assert shared_batch.input_ids.tolist() == [[5, 6, 7, 8] + [t for e in ordered for t in e.input_ids[4:]]]
    assert shared_batch.position_ids.tolist() == [
        list(range(4)) + [p for e in ordered for p in range(4, len(e.input_ids))]
    ]
    assert shared_batch.boundaries.diff().tolist() == [4] + [len(e.input_ids) - 4 for e in ordered]
    assert ((shared_batch.tokens, shared_batch.trained_tokens) == (plain.tokens, plain.trained_tokens)
            == (4 * 3 + 18, 3 + 2 + 5))
    assert shared_batch.input_ids.shape[1] == plain.input_ids.shape[1] - 2 * 4
    assert plain.segment_prefixes == () and "segment_prefixes" not in plain.model_inputs()
    assert shared_batch.model_inputs()["segment_prefixes"] == (-1, 0, 0, 0)


def test_sharing_the_prefix_gives_the_loss_gradients_and_logits_of_separate_examples(tiny_llama_dir):
    examples = with_prefix([11, 12, 13, 14, 15, 16, 17], [9, 14, 5, 11, 30])  # one group, one example alone:
    examples += with_prefix([11, 12, 40, 41, 42], [7, 12], seed=1) + with_prefix([90], [8], seed=2)
    examples = [RenderedExample(number, e.input_ids, e.labels, e.full_length) for number, e in enumerate(examples, 1)]
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, attn_implementation="sdpa")
    use_packed_attention(model)
    add_adapter(model, "a", LoraSettings(r=4, targets="all-linear"))
    randomize(model, "a")  # B != 0, so every A gets a gradient too
    model.train()
    results = []
    for share in (False, True):
        batch = one_batch(examples, share)
        loss, count = trained_token_loss(model, batch.model_inputs())
        (loss / count).backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        results.append((loss.detach(), grads))
    (plain_loss, plain_grads), (shared_loss, shared_grads) = results
    assert len(plain_grads) == 2 * 7 * 2 and all(g.abs().max() > 0 for g in plain_grads.values())
    torch.testing.assert_close(shared_loss, plain_loss, rtol=1e-5, atol=1e-5)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(shared_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)

    model.eval()
    batch = one_batch(examples, True)
    assert sorted(p for p in batch.segment_prefixes if p >= 0) != [] and batch.segment_prefixes.count(-1) == 3
    with torch.no_grad():
        row = model(**batch.model_inputs()).logits[0]
        for group in prefix_groups(examples):
            for e in group.examples:  # each example's own tokens, wherever the row holds them
                own = len(e.input_ids) - group.prefix
                start = _find(batch.input_ids[0].tolist(), e.input_ids[group.prefix :])
                alone = model(input_ids=torch.tensor([e.input_ids])).logits[0]
                torch.testing.assert_close(row[start : start + own], alone[group.prefix :], atol=1e-5, rtol=0)


def test_a_bf16_model_attends_in_fp32_on_the_cpu():
    """The CPU's bf16 flash attention is slower than its fp32 one: packed rows attend in fp32 and return bf16."""
    lengths = [5, 9, 3]
    module = torch.nn.Module()
    module.num_key_value_groups = 2
    torch.manual_seed(0)
    query, key, value = (torch.randn(1, heads, sum(lengths), 8, dtype=torch.bfloat16, requires_grad=True)
                         for heads in (4, 2, 2))
    bounds = torch.tensor([0, 5, 14, 17])
    out, _ = packed_attention(module, query, key, value, None, cu_seq_lens_q=bounds)
    assert out.dtype is torch.bfloat16 and out.shape == (1, sum(lengths), 4, 8) and out.is_contiguous()
    expected = torch.cat([
        torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True,
                                                         enable_gqa=True)
        for q, k, v in zip(query.split(lengths, 2), key.split(lengths, 2), value.split(lengths, 2))
    ], 2).transpose(1, 2).to(torch.bfloat16)
    assert torch.equal(out, expected)
    out.float().square().sum().backward()
    assert query.grad.dtype is torch.bfloat16 and key.grad.abs().max() > 0


def test_runs_share_the_prefix_only_when_they_attend_per_example_and_nothing_drops_out(tiny_llama_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, attn_implementation="sdpa")
    settings = batch_settings(TrainConfig(dataset="d.jsonl", batch_size=4, seed=3), model)
    assert settings == BatchSettings(packing=True, batch_size=4, seed=3, share_prefix=True)
    assert not batch_settings(TrainConfig(dataset="d.jsonl", packing=False), model).share_prefix
    assert not batch_settings(TrainConfig(dataset="d.jsonl", dropout=0.1), model).share_prefix
    model.config.sliding_window = 16  # shorter than an example may be: the attention stays plain sdpa
    assert not batch_settings(TrainConfig(dataset="d.jsonl"), model).share_prefix


def test_preflight_counts_what_the_batches_share_and_estimates_time_for_the_rest(tiny_llama_dir):
    config = TrainConfig(base=str(tiny_llama_dir), dataset=str(DATES), batch_size=8, seed=5)
    shared, separate = (core.training.preflight.preflight(config),
                        core.training.preflight.preflight(replace(config, dropout=0.05)))

    examples = prepare_dataset(DATES, AutoTokenizer.from_pretrained(tiny_llama_dir), max_length=config.max_len).examples
    batches = list(iterate_batches(examples, BatchSettings(batch_size=8, seed=5, share_prefix=True), 0, epochs=1))
    saved = sum(batch.saved_tokens for batch in batches) / sum(batch.tokens for batch in batches)
    assert shared.data.shared_token_share == pytest.approx(saved) and saved > 0.3  # the dates' instructions
    assert separate.data.shared_token_share == 0
    assert shared.estimated_seconds_per_step == pytest.approx(separate.estimated_seconds_per_step * (1 - saved))


def _find(row: list[int], part: list[int]) -> int:
    starts = [i for i in range(len(row) - len(part) + 1) if row[i : i + len(part)] == part]
    assert len(starts) == 1
    return starts[0]
