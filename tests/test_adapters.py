"""Adapters on whole models: targets, freezing and counts, training, active sets, merge and unload."""

import pytest
import torch
from torch import nn

from core.lora.errors import AdapterConfigError, NonFiniteMergeError
from core.lora.layer import LoraLayer
from core.lora.model import (
    LoraSettings,
    active_adapters,
    adapter_modules,
    add_adapter,
    lora_layers,
    merge,
    merge_and_unload,
    set_active,
    unmerge,
)
from core.lora.peft_format import load_adapter, save_adapter
from core.training.loop import enable_checkpointing
from tests.lora_helpers import TOKENS, assert_same_state, load, logits, randomize, state_snapshot


def leaf_names(report) -> set[str]:
    return {path.rsplit(".", 1)[-1] if "c_proj" not in path else path.split(".")[-2] + ".c_proj"
            for path in report.modules}


@pytest.mark.parametrize(
    "preset, llama, gpt2",
    [
        ("qv", {"q_proj", "v_proj"}, {"c_attn"}),
        ("attention", {"q_proj", "k_proj", "v_proj", "o_proj"}, {"c_attn", "attn.c_proj"}),
        ("mlp", {"gate_proj", "up_proj", "down_proj"}, {"c_fc", "mlp.c_proj"}),
        ("all-linear", {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
         {"c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"}),
    ],
)
def test_presets_pick_the_right_layers_on_llama_and_gpt2(preset, llama, gpt2, tiny_llama_dir, tiny_gpt2_dir):
    llama_report = add_adapter(load(tiny_llama_dir), settings=LoraSettings(targets=preset))
    gpt2_report = add_adapter(load(tiny_gpt2_dir), settings=LoraSettings(targets=preset))
    assert leaf_names(llama_report) == llama and len(llama_report.modules) == 2 * len(llama)
    assert leaf_names(gpt2_report) == gpt2 and len(gpt2_report.modules) == 2 * len(gpt2)


def test_regex_and_name_list_targets(tiny_llama_dir):
    by_regex = add_adapter(load(tiny_llama_dir), settings=LoraSettings(targets=r"model\.layers\.1\..*_proj"))
    by_names = add_adapter(load(tiny_llama_dir), settings=LoraSettings(targets=["o_proj", "up_proj"]))
    assert len(by_regex.modules) == 7 and all(".layers.1." in p for p in by_regex.modules)
    assert sorted(by_names.modules) == sorted(
        f"model.layers.{i}.{name}" for i in (0, 1) for name in ("self_attn.o_proj", "mlp.up_proj")
    )


def test_trainable_count_is_r_times_d_in_plus_d_out_and_everything_else_frozen(tiny_llama_dir):
    model = load(tiny_llama_dir)
    total_before = sum(p.numel() for p in model.parameters())
    settings = LoraSettings(r=8, targets="attention", rank_pattern={"v_proj": 2}, alpha_pattern={"o_proj": 3.0})
    report = add_adapter(model, "a", settings)
    # hidden 64, 4 heads, 2 kv heads: q,o are 64x64, k,v are 32x64
    per_layer = 8 * (64 + 64) + 8 * (64 + 32) + 2 * (64 + 32) + 8 * (64 + 64)
    assert report.trainable == 2 * per_layer == 6016
    assert report.total == total_before + report.trainable
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == report.trainable
    adapters = adapter_modules(model, "a")
    assert adapters["model.layers.0.self_attn.v_proj"].r == 2
    assert adapters["model.layers.0.self_attn.o_proj"].scaling == pytest.approx(3.0 / 8)


def test_training_steps_change_only_adapter_tensors(tiny_llama_dir):
    model = load(tiny_llama_dir)
    base_logits = logits(model)
    add_adapter(model, "a", LoraSettings(r=4, targets="all-linear"))
    assert torch.equal(logits(model), base_logits)  # B = 0 at init
    frozen = {k: v.clone() for k, v in model.state_dict().items() if ".adapters." not in k}
    adapter_before = {k: v.clone() for k, v in model.state_dict().items() if ".adapters." in k}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(3):
        loss = model(TOKENS, labels=TOKENS).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in frozen.items())
    changed = [k for k, v in adapter_before.items() if not torch.equal(state[k], v)]
    assert len(changed) == len(adapter_before) == 2 * 14  # every A and every B moved


def test_active_sets_switch_per_call_and_none_is_the_base_bit_for_bit(tiny_llama_dir):
    model = load(tiny_llama_dir)
    base_logits = logits(model)
    add_adapter(model, "a", LoraSettings(targets="qv"))
    add_adapter(model, "b", LoraSettings(targets="mlp"))
    randomize(model, "a", seed=1)
    randomize(model, "b", seed=2)
    set_active(model, "a")
    only_a = logits(model)
    set_active(model, "b")
    only_b = logits(model)

    with active_adapters(model, {}):
        assert torch.equal(logits(model), base_logits)
    with active_adapters(model, {"a": 1.0, "b": 1.0}):
        both = logits(model)
    assert torch.equal(logits(model), only_b)  # the context restored the previous set
    assert (only_a - base_logits).abs().max() > 1e-2 and (only_b - only_a).abs().max() > 1e-2
    assert (both - only_a).abs().max() > 1e-2 and (both - only_b).abs().max() > 1e-2
    with pytest.raises(AdapterConfigError, match="'nope'"):
        set_active(model, {"nope": 1.0})


def test_merge_unmerge_and_merge_and_unload_give_a_plain_model(tiny_gpt2_dir):
    model = load(tiny_gpt2_dir)
    add_adapter(model, "a", LoraSettings(targets="all-linear"))
    randomize(model, "a")
    before = state_snapshot(model)
    adapted = logits(model)
    merge(model)
    assert (logits(model) - adapted).abs().max() < 1e-5
    unmerge(model)
    after = model.state_dict()
    assert max((after[k] - v).abs().max().item() for k, v in before.items()) < 1e-6

    plain = merge_and_unload(model)
    assert not lora_layers(plain)
    assert not any("adapters" in key or "base_layer" in key for key in plain.state_dict())
    assert (logits(plain) - adapted).abs().max() < 1e-5


def test_failed_merge_changes_no_layer(tiny_llama_dir):
    model = load(tiny_llama_dir)
    add_adapter(model, "a", LoraSettings(targets="attention"))
    randomize(model, "a")
    with torch.no_grad():
        adapter_modules(model, "a")["model.layers.1.self_attn.o_proj"].lora_B[0, 0] = float("nan")
    before = state_snapshot(model)
    with pytest.raises(NonFiniteMergeError, match="model.layers.1.self_attn.o_proj"):
        merge(model)
    assert_same_state(before, model)
    assert not any(layer.merged for layer in lora_layers(model).values())


def test_targets_that_match_nothing_name_the_fix_and_change_nothing(tiny_llama_dir):
    model = load(tiny_llama_dir)
    with pytest.raises(AdapterConfigError, match="q_proj"):  # the message lists the model's real layer names
        add_adapter(model, settings=LoraSettings(targets=["c_attn"]))
    with pytest.raises(AdapterConfigError, match="rank"):
        add_adapter(model, settings=LoraSettings(r=0))
    assert not any(isinstance(m, LoraLayer) for m in model.modules())
    assert all(type(m) is not LoraLayer for m in model.modules()) and isinstance(
        model.model.layers[0].self_attn.q_proj, nn.Linear
    )


def test_an_adapter_loaded_into_a_model_in_eval_mode_does_not_drop_out(tiny_llama_dir, tmp_path):
    """Chat serves the base in eval mode. An adapter trained with dropout (the Quality preset's 0.05, most
    published PEFT adapters) must answer there deterministically and exactly as its merged export does; new LoRA
    modules used to start in training mode and drop out."""
    trained = load(tiny_llama_dir)
    add_adapter(trained, "a", LoraSettings(targets="all-linear", dropout=0.5))
    randomize(trained, "a")
    save_adapter(trained, "a", tmp_path / "a")
    served = load(tiny_llama_dir)
    load_adapter(served, tmp_path / "a", name="a")
    first = logits(served)
    assert not torch.equal(first, logits(load(tiny_llama_dir)))  # the adapter does change the answer
    torch.testing.assert_close(logits(served), first, rtol=0, atol=0)
    merge(served)
    torch.testing.assert_close(logits(served), first, rtol=1e-4, atol=1e-4)
    unmerge(served)
    served.train()  # and in training the dropout is there
    assert not torch.equal(logits(served), logits(served))


def adapter_gradients(model_dir, checkpointing: str) -> dict[str, torch.Tensor]:
    """The adapter's gradients after one forward and backward of the tiny model in training mode."""
    model = load(model_dir)
    add_adapter(model, "run", LoraSettings(r=4, targets="all-linear"))
    randomize(model, "run")
    if checkpointing == "loop":
        enable_checkpointing(model)
    elif checkpointing == "reentrant":  # older transformers' default: the first forward runs without autograd
        model.activation_checkpointing_enable({"use_reentrant": True})
    assert any(getattr(module, "gradient_checkpointing", False) for module in model.modules()) == bool(checkpointing)
    model.train()
    model(input_ids=TOKENS, labels=TOKENS).loss.backward()
    return {name: p.grad for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("checkpointing", ["loop", "reentrant"])
def test_gradient_checkpointing_gives_the_gradients_of_a_plain_backward(tiny_llama_dir, checkpointing):
    """Checkpointing drops each decoder layer's saved tensors after the forward and recomputes them in the backward.
    The loop's switch recomputes through the LoRA layers' one autograd node (core.lora.fused); reentrant
    checkpointing runs the first forward without autograd, on the plain path. The gradients must not change."""
    plain = adapter_gradients(tiny_llama_dir, checkpointing="")
    checkpointed = adapter_gradients(tiny_llama_dir, checkpointing=checkpointing)
    assert plain.keys() == checkpointed.keys() and len(plain) > 0
    for name, grad in plain.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(checkpointed[name], grad, atol=1e-6, rtol=1e-5, msg=name)
