"""The trained-positions-only loss equals transformers' own loss over the same labels."""

import pytest
import torch

from core.data import IGNORE_INDEX
from core.loss import trained_token_loss
from core.models import load_base_model


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
