"""The trained-positions-only loss equals transformers' own loss over the same labels."""

import pytest
import torch

import core.training.loss
from core.data import IGNORE_INDEX
from core.lora.model import LoraSettings, add_adapter
from core.models.loading import load_base_model
from core.training.loss import trained_token_loss
from tests.lora_helpers import randomize


@pytest.mark.parametrize("fixture", ["tiny_llama_dir", "tiny_gpt2_dir"])
def test_matches_the_models_own_loss(request, fixture):
    model = load_base_model(str(request.getfixturevalue(fixture))).model
    torch.manual_seed(0)
    ids = torch.randint(0, 300, (2, 24))
    labels = ids.clone()
    labels[:, :10] = IGNORE_INDEX  # a masked prompt
    labels[1, 20:] = IGNORE_INDEX
    inputs = {"input_ids": ids, "labels": labels, "use_cache": False}
    total, count = trained_token_loss(model, inputs)
    assert count == int((labels[:, 1:] != IGNORE_INDEX).sum()) == 24
    reference = model(input_ids=ids, labels=labels, use_cache=False).loss
    torch.testing.assert_close(total / count, reference, rtol=1e-5, atol=1e-6)


def test_gradients_match_the_models_own_loss(tiny_llama_dir):
    first = load_base_model(str(tiny_llama_dir)).model
    second = load_base_model(str(tiny_llama_dir)).model
    ids = torch.randint(0, 300, (1, 16), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[:, :6] = IGNORE_INDEX
    total, count = trained_token_loss(first, {"input_ids": ids, "labels": labels, "use_cache": False})
    (total / count).backward()
    second(input_ids=ids, labels=labels, use_cache=False).loss.backward()
    for (name, a), b in zip(first.named_parameters(), second.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("softcap", [None, 3.0])
def test_the_chunked_frozen_head_loss_gives_the_plain_loss_and_gradients(tiny_llama_dir, monkeypatch, softcap):
    """Under LoRA the LM head is frozen and the loss goes through a few rows of logits at a time (7 here, so
    the 32 trained rows take 5 chunks); loss and every trainable gradient equal the plain autograd path's."""
    ids = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(2))
    labels = ids.clone()
    labels[:, :8] = IGNORE_INDEX
    results = []
    for chunked in (False, True):
        model = load_base_model(str(tiny_llama_dir)).model
        model.config.final_logit_softcapping = softcap
        add_adapter(model, "a", LoraSettings(r=4, targets="all-linear"))
        randomize(model, "a")
        monkeypatch.setattr(core.training.loss, "LOGITS_PER_CHUNK", 7 * model.config.vocab_size)
        if not chunked:
            monkeypatch.setattr(core.training.loss, "_is_frozen_linear", lambda head: False)
        total, count = trained_token_loss(model, {"input_ids": ids, "labels": labels, "use_cache": False})
        (total / count).backward()
        results.append((total.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}))
        monkeypatch.undo()
    (plain, plain_grads), (chunked_total, chunked_grads) = results
    assert count == 32
    torch.testing.assert_close(chunked_total, plain, rtol=1e-6, atol=1e-5)
    assert plain_grads.keys() == chunked_grads.keys() and len(plain_grads) > 0
    for name, grad in plain_grads.items():
        torch.testing.assert_close(chunked_grads[name], grad, rtol=1e-4, atol=1e-7, msg=name)


def test_the_chunked_loss_without_gradients_gives_the_same_sum(tiny_llama_dir, monkeypatch):
    model = load_base_model(str(tiny_llama_dir)).model
    add_adapter(model, "a", LoraSettings(r=4))
    ids = torch.randint(0, 300, (1, 40), generator=torch.Generator().manual_seed(3))
    inputs = {"input_ids": ids, "labels": ids.clone(), "use_cache": False}
    with torch.no_grad():
        whole, _ = trained_token_loss(model, inputs)
        monkeypatch.setattr(core.training.loss, "LOGITS_PER_CHUNK", 3 * model.config.vocab_size)
        chunked, count = trained_token_loss(model, inputs)
    assert count == 39 and not chunked.requires_grad
    torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=1e-5)
