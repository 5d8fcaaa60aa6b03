"""Batching: packed examples never attend to each other, grouping cuts padding, iteration resumes exactly."""

import random

import pytest
import torch
from transformers import AutoModelForCausalLM

from core.data import BatchSettings, DataPosition, RenderedExample, epoch_plan, iterate_batches, padding_share
from core.data.render import IGNORE_INDEX
from core.models.packed_attention import NAME as PACKED
from core.models.packed_attention import use_packed_attention
from core.training.loss import trained_token_loss


def make_examples(lengths, vocab=300, seed=0):
    rng = random.Random(seed)
    examples = []
    for number, length in enumerate(lengths, start=1):
        ids = [rng.randrange(3, vocab) for _ in range(length)]
        labels = [IGNORE_INDEX] * (length // 2) + ids[length // 2 :]
        examples.append(RenderedExample(number, ids, labels, length))
    return examples


@pytest.mark.parametrize("attention", ["sdpa", "eager", PACKED])
def test_packed_examples_do_not_attend_to_each_other(tiny_llama_dir, attention):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, attn_implementation="sdpa").eval()
    if attention == PACKED:
        use_packed_attention(model)
    else:
        model.set_attn_implementation(attention)
    assert model.config._attn_implementation == attention
    examples = make_examples([9, 14, 5, 11])
    batch = next(iterate_batches(examples, BatchSettings(packing=True, batch_size=4), pad_token_id=0))
    assert batch.input_ids.shape == (1, 39) and batch.attention_mask is None
    with torch.no_grad():
        packed = model(**batch.model_inputs()).logits[0]
        start = 0
        for number in batch.example_numbers:
            alone_ids = torch.tensor([examples[number - 1].input_ids])
            alone = model(input_ids=alone_ids).logits[0]
            torch.testing.assert_close(packed[start : start + len(alone)], alone, atol=1e-5, rtol=0)
            start += len(alone)
        # Without isolation the later examples' logits would differ by far more than the tolerance.
        leaky = model(input_ids=batch.input_ids).logits[0]
    assert (leaky[9:] - packed[9:]).abs().max() > 1e-2


def test_per_example_attention_gives_the_masked_rows_loss_and_gradients(tiny_llama_dir):
    examples = make_examples([9, 14, 5, 11, 30])
    batch = next(iterate_batches(examples, BatchSettings(packing=True, batch_size=5), pad_token_id=0))
    results = []
    for packed in (False, True):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, attn_implementation="sdpa").train()
        if packed:
            use_packed_attention(model)
        loss, count = trained_token_loss(model, batch.model_inputs())
        (loss / count).backward()
        results.append((loss.detach(), {name: p.grad for name, p in model.named_parameters()}))
    (masked_loss, masked_grads), (packed_loss, packed_grads) = results
    torch.testing.assert_close(packed_loss, masked_loss, rtol=1e-5, atol=1e-5)
    for name, grad in masked_grads.items():
        torch.testing.assert_close(packed_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_packed_batch_layout():
    examples = make_examples([4, 3])
    batch = next(iterate_batches(examples, BatchSettings(packing=True, batch_size=2, seed=1), pad_token_id=0))
    first, second = (examples[n - 1] for n in batch.example_numbers)
    assert batch.position_ids.tolist() == [list(range(len(first.input_ids))) + list(range(len(second.input_ids)))]
    assert batch.input_ids.tolist() == [first.input_ids + second.input_ids]
    assert batch.labels.tolist() == [first.labels + second.labels]
    assert (batch.tokens, batch.trained_tokens) == (7, 2 + 2)


def test_packing_flattens_batch_size_examples_and_uses_every_example_once():
    lengths = [random.Random(i).randrange(5, 120) for i in range(300)]
    plan = epoch_plan(lengths, BatchSettings(packing=True, batch_size=8), epoch=0)
    assert sorted(i for batch in plan for i in batch) == list(range(300))
    assert [len(batch) for batch in plan] == [8] * 37 + [4]


def test_length_grouping_cuts_padding():
    lengths = [random.Random(i).randrange(8, 512) for i in range(1024)]
    grouped = padding_share(lengths, epoch_plan(lengths, BatchSettings(packing=False, batch_size=8), epoch=0))
    shuffled = padding_share(
        lengths, epoch_plan(lengths, BatchSettings(packing=False, batch_size=8, group_by_length=False), epoch=0)
    )
    assert shuffled > 0.4 and grouped < 0.08  # measured: 0.444 vs 0.052


def test_padded_batches_mask_padding():
    examples = make_examples([6, 3])
    batch = next(iterate_batches(examples, BatchSettings(packing=False, batch_size=2), pad_token_id=0))
    by_length = {int(row.sum()): i for i, row in enumerate(batch.attention_mask)}
    short = by_length[3]
    assert batch.input_ids.shape == (2, 6) and batch.tokens == 9
    assert batch.input_ids[short, 3:].tolist() == [0, 0, 0] and batch.labels[short, 3:].tolist() == [IGNORE_INDEX] * 3


@pytest.mark.parametrize("packing", [True, False])
def test_resuming_from_a_position_gives_the_same_batches(packing):
    examples = make_examples([random.Random(i).randrange(4, 40) for i in range(60)])
    settings = BatchSettings(packing=packing, batch_size=4, seed=3)
    stream = iterate_batches(examples, settings, pad_token_id=0, epochs=3)
    uninterrupted = [(b.position, b.example_numbers, b.input_ids.tolist()) for b in stream]
    per_epoch = sum(1 for p, _, _ in uninterrupted if p.epoch == 0)
    cut = per_epoch + 2  # stop inside the second epoch
    saved = next(b for i, b in enumerate(iterate_batches(examples, settings, pad_token_id=0))
                 if i == cut - 1).next_position
    assert saved == DataPosition(1, 2)
    resumed = [(b.position, b.example_numbers, b.input_ids.tolist())
               for b in iterate_batches(examples, settings, 0, start=saved, epochs=3)]
    assert resumed == uninterrupted[cut:]
    # Epochs are shuffled differently, and the same seed gives the same order.
    epoch0 = [n for p, numbers, _ in uninterrupted if p.epoch == 0 for n in numbers]
    epoch1 = [n for p, numbers, _ in uninterrupted if p.epoch == 1 for n in numbers]
    assert epoch0 != epoch1 and sorted(epoch0) == sorted(epoch1) == list(range(1, 61))


def test_different_seeds_give_different_orders():
    lengths = [10] * 50
    plans = [epoch_plan(lengths, BatchSettings(packing=False, batch_size=5, seed=seed), 0) for seed in (0, 1)]
    assert plans[0] != plans[1]
