"""Weighted combination (exact and SVD-compressed) and SVD extraction from a full fine-tune."""

import pytest
import torch

from core.lora.compose import combine_adapters, extract_adapter
from core.lora.errors import AdapterConfigError
from core.lora.model import LoraSettings, adapter_modules, add_adapter, set_active
from tests.lora_helpers import load, logits, randomize

Q0 = "model.layers.0.self_attn.q_proj"


@pytest.fixture
def two_adapters(tiny_llama_dir):
    model = load(tiny_llama_dir)
    add_adapter(model, "a", LoraSettings(r=4, alpha=8, targets="qv"))
    add_adapter(model, "b", LoraSettings(r=2, alpha=2, targets=["q_proj", "o_proj"], use_rslora=True))
    randomize(model, "a", seed=1)
    randomize(model, "b", seed=2)
    return model


def test_exact_combination_equals_the_weighted_active_set(two_adapters):
    model = two_adapters
    set_active(model, {"a": 0.5, "b": 2.0})
    weighted = logits(model)
    report = combine_adapters(model, {"a": 0.5, "b": 2.0}, "ab")
    set_active(model, "ab")

    assert report.ranks == {Q0: 6, "model.layers.0.self_attn.v_proj": 4, "model.layers.0.self_attn.o_proj": 2,
                            "model.layers.1.self_attn.q_proj": 6, "model.layers.1.self_attn.v_proj": 4,
                            "model.layers.1.self_attn.o_proj": 2}
    assert adapter_modules(model, "ab")[Q0].scaling == 1.0
    assert (logits(model) - weighted).abs().max() < 1e-5


def test_svd_compression_reports_its_true_relative_error(two_adapters):
    model = two_adapters
    modules_a, modules_b = adapter_modules(model, "a"), adapter_modules(model, "b")
    report = combine_adapters(model, {"a": 1.0, "b": -1.0}, "small", rank=3)
    full = combine_adapters(model, {"a": 1.0, "b": -1.0}, "full", rank=6)

    delta = (modules_a[Q0].delta_weight() - modules_b[Q0].delta_weight()).detach()
    approx = adapter_modules(model, "small")[Q0].delta_weight().detach()
    measured = (torch.linalg.norm(delta - approx) / torch.linalg.norm(delta)).item()
    assert report.ranks[Q0] == 3
    assert 0.01 < report.relative_errors[Q0] == pytest.approx(measured, rel=1e-4)
    assert full.max_relative_error < 1e-6
    set_active(model, {"a": 1.0, "b": -1.0})
    weighted = logits(model)
    set_active(model, "full")
    assert (logits(model) - weighted).abs().max() < 1e-4


def test_combining_unknown_or_dora_adapters_is_refused(two_adapters):
    with pytest.raises(AdapterConfigError, match="'zzz'"):
        combine_adapters(two_adapters, {"zzz": 1.0}, "x")
    add_adapter(two_adapters, "d", LoraSettings(targets="qv", use_dora=True))
    with pytest.raises(AdapterConfigError, match="DoRA"):
        combine_adapters(two_adapters, {"a": 1.0, "d": 1.0}, "x")


def test_extraction_recovers_a_low_rank_fine_tune(tiny_llama_dir):
    base, tuned = load(tiny_llama_dir), load(tiny_llama_dir)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in tuned.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.v_proj):
                d_out, d_in = proj.weight.shape
                proj.weight += (torch.randn(d_out, 2, generator=generator)
                                @ torch.randn(2, d_in, generator=generator) / 8)
    report = extract_adapter(base, tuned, rank=2, name="x", targets="qv")
    rank1 = extract_adapter(base, tuned, rank=1, name="x1", targets="qv")
    set_active(base, "x")

    assert len(report.ranks) == 4 and set(report.ranks.values()) == {2}
    assert report.max_relative_error < 1e-5
    assert 0.05 < min(rank1.relative_errors.values())
    assert (logits(base) - logits(tuned)).abs().max() < 1e-4


def test_extraction_from_a_delta_state_dict_on_conv1d(tiny_gpt2_dir):
    base, tuned = load(tiny_gpt2_dir), load(tiny_gpt2_dir)
    torch.manual_seed(0)
    deltas = {}
    with torch.no_grad():
        for i, block in enumerate(tuned.transformer.h):
            stored = torch.randn(64, 3) @ torch.randn(3, 192) / 10  # Conv1D stores d_in x d_out
            block.attn.c_attn.weight += stored
            deltas[f"transformer.h.{i}.attn.c_attn.weight"] = stored
    report = extract_adapter(base, deltas, rank=3, targets=["c_attn"])
    set_active(base, "extracted")
    assert report.max_relative_error < 1e-5
    assert (logits(base) - logits(tuned)).abs().max() < 1e-4
    with pytest.raises(AdapterConfigError, match="transformer.h.0.mlp.c_fc.weight"):
        extract_adapter(load(tiny_gpt2_dir), deltas, rank=3, targets=["c_fc"])
