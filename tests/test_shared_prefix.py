"""A prefix shared by a packed batch's examples is computed once, with the same loss and gradients as per example."""

import random

import torch
from transformers import AutoModelForCausalLM

from core.adapters import LoraSettings, add_adapter
from core.data import BatchSettings, RenderedExample, iterate_batches
from core.data.batch import shared_prefix_length
from core.data.render import IGNORE_INDEX
from core.loss import trained_token_loss
from core.packed_attention import use_packed_attention
from core.train_config import TrainConfig
from core.train_data import batch_settings
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


def test_the_prefix_ends_where_the_examples_differ_or_where_training_starts():
    common = [5, 6, 7, 8, 9, 10, 11]
    assert shared_prefix_length([example(1, common[:5] + [40, 41], 6), example(2, common, 6)]) == 5
    # the second example trains on the token at 3, which position 2 predicts: position 2 stays its own
    assert shared_prefix_length([example(1, common, 6), example(2, common, 3)]) == 2
    # identical examples keep a token of their own after the prefix
    assert shared_prefix_length([example(1, common, 7), example(2, common, 7)]) == 6
    assert shared_prefix_length([example(1, common, 6)]) == 0
    assert shared_prefix_length([example(1, [1] + common, 6), example(2, common, 6)]) == 0


def test_a_shared_prefix_is_laid_once_and_counted_once_per_example():
    examples = with_prefix([5, 6, 7, 8], [6, 3, 9])
    plain, shared = one_batch(examples, False), one_batch(examples, True)
    first, *others = (examples[number - 1] for number in shared.example_numbers)
    assert shared.shared_prefix == 4
    assert shared.input_ids.tolist() == [[5, 6, 7, 8] + [t for e in (first, *others) for t in e.input_ids[4:]]]
    assert shared.position_ids.tolist() == [list(range(4)) + [p for e in (first, *others) for p in range(4, len(e.input_ids))]]
    assert shared.boundaries.diff().tolist() == [4] + [len(e.input_ids) - 4 for e in (first, *others)]
    assert (shared.tokens, shared.trained_tokens) == (plain.tokens, plain.trained_tokens) == (4 * 3 + 18, 3 + 2 + 5)
    assert shared.input_ids.shape[1] == plain.input_ids.shape[1] - 2 * 4
    assert plain.shared_prefix == 0 and "shared_prefix_length" not in plain.model_inputs()
    assert shared.model_inputs()["shared_prefix_length"] == 4


def test_sharing_the_prefix_gives_the_loss_gradients_and_logits_of_separate_examples(tiny_llama_dir):
    examples = with_prefix([11, 12, 13, 14, 15, 16, 17], [9, 14, 5, 11, 30])
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
    with torch.no_grad():
        row = model(**batch.model_inputs()).logits[0]
        start = batch.shared_prefix
        for number in batch.example_numbers:
            ids = examples[number - 1].input_ids
            alone = model(input_ids=torch.tensor([ids])).logits[0]
            own = len(ids) - batch.shared_prefix
            torch.testing.assert_close(row[start : start + own], alone[batch.shared_prefix :], atol=1e-5, rtol=0)
            start += own


def test_runs_share_the_prefix_only_with_per_example_attention_and_no_dropout(tiny_llama_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, attn_implementation="sdpa")
    assert not batch_settings(TrainConfig(dataset="d.jsonl"), model).share_prefix
    use_packed_attention(model)
    settings = batch_settings(TrainConfig(dataset="d.jsonl", batch_size=4, seed=3), model)
    assert settings == BatchSettings(packing=True, batch_size=4, seed=3, share_prefix=True)
    assert not batch_settings(TrainConfig(dataset="d.jsonl", dropout=0.1), model).share_prefix
