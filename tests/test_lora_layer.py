"""The LoRA layer's math: gradients, init, merge/unmerge, DoRA, dtypes, and its guards."""

import math

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from core.lora.errors import AdapterStateError, NonFiniteMergeError
from core.lora.layer import LoraAdapter, LoraLayer


def layer_with(base: nn.Module, seed: int = 0, **options) -> LoraLayer:
    torch.manual_seed(seed)
    layer = LoraLayer(base, "test.proj")
    layer.add_adapter("a", LoraAdapter.for_layer(base, r=4, alpha=8, **options))
    with torch.no_grad():
        layer.adapters["a"].lora_B.normal_(std=0.5)
        if layer.adapters["a"].use_dora:
            layer.adapters["a"].magnitude.mul_(1.3)
    layer.set_active({"a": 1.0})
    return layer


def test_gradients_of_a_and_b_equal_closed_forms():
    torch.manual_seed(0)
    layer = layer_with(nn.Linear(12, 10))
    adapter = layer.adapters["a"]
    x, upstream = torch.randn(5, 12), torch.randn(5, 10)
    (layer(x) * upstream).sum().backward()

    grad_w = upstream.T @ x  # dL/d(update), d_out x d_in
    s = adapter.scaling
    assert s == 8 / 4
    torch.testing.assert_close(adapter.lora_A.grad, s * adapter.lora_B.detach().T @ grad_w, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(adapter.lora_B.grad, s * grad_w @ adapter.lora_A.detach().T, atol=1e-5, rtol=1e-5)


def test_rslora_scales_by_alpha_over_sqrt_r():
    assert LoraAdapter(8, 8, r=16, alpha=8, use_rslora=True).scaling == pytest.approx(8 / math.sqrt(16))
    assert LoraAdapter(8, 8, r=16, alpha=8).scaling == pytest.approx(0.5)


def test_fresh_adapter_is_kaiming_a_and_zero_b_so_output_equals_base():
    torch.manual_seed(0)
    base = nn.Linear(64, 32)
    layer = LoraLayer(base)
    adapter = LoraAdapter.for_layer(base, r=8, alpha=16)
    layer.add_adapter("a", adapter)
    layer.set_active({"a": 1.0})
    x = torch.randn(3, 64)

    bound = 1 / math.sqrt(64)  # kaiming_uniform(a=sqrt(5)) on fan_in 64
    assert adapter.lora_A.abs().max() <= bound and adapter.lora_A.abs().max() > 0.8 * bound
    assert torch.count_nonzero(adapter.lora_B) == 0
    assert torch.equal(layer(x), base(x))


def test_no_active_adapter_returns_base_output_bit_for_bit():
    base = nn.Linear(16, 16)
    layer = layer_with(base)
    x = torch.randn(4, 16)
    assert not torch.equal(layer(x), base(x))
    layer.set_active({})
    assert torch.equal(layer(x), base(x))


@pytest.mark.parametrize("dora", [False, True])
@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_merge_then_unmerge_restores_weight_and_merged_output_matches(kind, dora):
    torch.manual_seed(0)
    base = nn.Linear(24, 16) if kind == "linear" else Conv1D(16, 24)
    layer = layer_with(base, use_dora=dora)
    original = base.weight.detach().clone()
    x = torch.randn(6, 24)
    unmerged_out = layer(x).detach()

    layer.merge()
    assert (base.weight - original).abs().max() > 1e-2
    merged_out = layer(x).detach()
    layer.unmerge()

    assert (merged_out - unmerged_out).abs().max() < 1e-5
    assert (base.weight - original).abs().max() < 1e-6
    assert (layer(x) - unmerged_out).abs().max() < 1e-5


def test_merge_and_unmerge_are_guarded_run_once():
    layer = layer_with(nn.Linear(8, 8))
    layer.merge()
    with pytest.raises(AdapterStateError, match="Unmerge first"):
        layer.merge()
    with pytest.raises(AdapterStateError, match="Unmerge first"):
        layer.set_active({})
    layer.unmerge()
    with pytest.raises(AdapterStateError, match="nothing merged"):
        layer.unmerge()


def test_merge_of_non_finite_adapter_raises_and_leaves_weight_untouched():
    base = nn.Linear(8, 8)
    layer = layer_with(base)
    original = base.weight.detach().clone()
    with torch.no_grad():
        layer.adapters["a"].lora_B[0, 0] = float("inf")
    with pytest.raises(NonFiniteMergeError, match="test.proj"):
        layer.merge()
    assert torch.equal(base.weight, original)
    assert layer.merged == {}


def test_bf16_base_keeps_its_dtype_with_fp32_adapter():
    base = nn.Linear(16, 8).to(torch.bfloat16)
    layer = layer_with(base)
    out = layer(torch.randn(2, 16, dtype=torch.bfloat16))
    assert layer.adapters["a"].lora_A.dtype == torch.float32
    assert out.dtype == torch.bfloat16


def test_weighted_set_adds_each_update_times_its_gain():
    torch.manual_seed(0)
    base = nn.Linear(10, 6)
    layer = layer_with(base)
    second = LoraAdapter.for_layer(base, r=2, alpha=2)
    nn.init.normal_(second.lora_B)
    layer.add_adapter("b", second)
    x = torch.randn(3, 10)
    layer.set_active({"a": 0.5, "b": -2.0})
    expected = base(x) + 0.5 * layer.adapters["a"].low_rank(x) - 2.0 * second.low_rank(x)
    torch.testing.assert_close(layer(x), expected, atol=1e-6, rtol=1e-6)


def forward_capturing_base_output(layer: LoraLayer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's output and the tensor its base layer returned on the way (to tell an in-place update)."""
    seen = []
    hook = layer.base_layer.register_forward_hook(lambda module, args, output: seen.append(output))
    try:
        return layer(x), seen[0]
    finally:
        hook.remove()


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
@pytest.mark.parametrize("shape", [(1, 1, 24), (2, 5, 24)], ids=["one-token", "prompt"])
def test_inference_adds_the_updates_into_the_base_output_and_matches_the_autograd_path(kind, shape):
    torch.manual_seed(0)
    base = nn.Linear(24, 16) if kind == "linear" else Conv1D(16, 24)
    layer = layer_with(base)
    second = LoraAdapter.for_layer(base, r=2, alpha=2)
    nn.init.normal_(second.lora_B)
    layer.add_adapter("b", second)
    layer.set_active({"a": 0.5, "b": -2.0})
    x = torch.randn(shape)
    expected = layer(x)
    assert expected.requires_grad  # the training path
    layer.eval()
    with torch.inference_mode():
        out, base_out = forward_capturing_base_output(layer, x)
    assert out is base_out  # updated in place: no second output-sized tensor
    torch.testing.assert_close(out, expected.detach(), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("case", ["training mode", "autograd on", "dora", "bf16 base", "autocast"])
def test_in_place_updates_are_skipped_where_they_would_be_wrong(case):
    torch.manual_seed(0)
    base = nn.Linear(24, 16).to(torch.bfloat16 if case == "bf16 base" else torch.float32)
    layer = layer_with(base, use_dora=case == "dora", dropout=0.5 if case == "training mode" else 0.0)
    layer.train(case == "training mode")
    x = torch.randn(3, 24, dtype=base.weight.dtype)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=case == "autocast")
    with torch.enable_grad() if case == "autograd on" else torch.inference_mode(), autocast:
        out, base_out = forward_capturing_base_output(layer, x)
    assert out is not base_out
    assert out.dtype == base_out.dtype == (torch.bfloat16 if case in ("bf16 base", "autocast") else torch.float32)
    if case == "autograd on":
        out.sum().backward()
        assert layer.adapters["a"].lora_A.grad is not None


def test_the_in_place_path_follows_the_active_set_not_the_loaded_adapters():
    torch.manual_seed(0)
    base = nn.Linear(24, 16)
    layer = layer_with(base).eval()
    layer.add_adapter("d", LoraAdapter.for_layer(base, r=2, alpha=2, use_dora=True))
    x = torch.randn(1, 1, 24)
    with torch.inference_mode():
        out, base_out = forward_capturing_base_output(layer, x)
        assert out is base_out  # the DoRA adapter is loaded but not active
        layer.set_active({"a": 1.0, "d": 1.0})
        out, base_out = forward_capturing_base_output(layer, x)
        assert out is not base_out  # DoRA's update reads the base output
        layer.delete_adapter("d")
        assert layer.active == {"a": 1.0}
        out, base_out = forward_capturing_base_output(layer, x)
        assert out is base_out


def aten_ops(layer: LoraLayer, x: torch.Tensor) -> list[str]:
    """The aten operations a forward runs, in order."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Recorder(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(func.__name__)
            return func(*args, **(kwargs or {}))

    with Recorder() as recorder:
        layer(x)
    return recorder.names


@pytest.mark.parametrize("shape", [(1, 1, 24), (2, 5, 24)], ids=["one-token", "prompt"])
def test_a_hookless_linear_adds_each_update_into_the_base_output_with_two_calls(shape):
    torch.manual_seed(0)
    base = nn.Linear(24, 16)
    layer = two_adapter_layer(base).eval()
    x = torch.randn(shape)
    with torch.inference_mode():
        ops = aten_ops(layer, x)
        expected = base(x) + 0.5 * layer.adapters["a"].low_rank(x) - 2.0 * layer.adapters["b"].low_rank(x)
        torch.testing.assert_close(layer(x), expected, atol=1e-6, rtol=1e-6)
    in_place = "addmv_.default" if shape == (1, 1, 24) else "addmm_.default"
    assert ops.count(in_place) == 2  # one per adapter, into the base output
    assert not [op for op in ops if op.startswith(("add.", "addmm.default", "addmv.default", "mul", "copy", "clone"))]


def two_adapter_layer(base: nn.Module, **options) -> LoraLayer:
    """`layer_with` plus a second adapter of another rank, both active with gains 0.5 and -2."""
    layer = layer_with(base, **options)
    second = LoraAdapter.for_layer(base, r=2, alpha=2)
    nn.init.normal_(second.lora_B)
    layer.add_adapter("b", second)
    layer.set_active({"a": 0.5, "b": -2.0})
    return layer


def ran_fused(out: torch.Tensor) -> bool:
    """Whether `out` came from the one-node LoRA linear (core.lora.fused), looking through reshaping views."""
    node = out.grad_fn
    while type(node).__name__ in ("ViewBackward0", "ReshapeAliasBackward0"):
        node = node.next_functions[0][0]
    return type(node).__name__ == "_LoraLinearBackward"


INPUTS = {"3-d": lambda: torch.randn(2, 5, 24), "1-d": lambda: torch.randn(24),
          "non-contiguous": lambda: torch.randn(24, 5).T}


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("x_needs_grad", [True, False], ids=["x-needs-grad", "first-layer"])
@pytest.mark.parametrize("shape", INPUTS)
def test_training_runs_as_one_fused_node_with_plain_autograds_output_and_gradients(bias, x_needs_grad, shape):
    torch.manual_seed(0)
    base = nn.Linear(24, 16, bias=bias).requires_grad_(False)  # frozen, as add_adapter leaves a model
    layer = two_adapter_layer(base)
    first, second = layer.adapters["a"], layer.adapters["b"]
    x = INPUTS[shape]().requires_grad_(x_needs_grad)
    upstream = torch.randn(*x.shape[:-1], 16)
    out = layer(x)
    assert ran_fused(out)
    (out * upstream).sum().backward()

    factors = [m.detach().clone().requires_grad_() for m in (first.lora_A, first.lora_B, second.lora_A, second.lora_B)]
    x_ref = x.detach().clone().requires_grad_(x_needs_grad)
    expected = (base(x_ref) + 0.5 * first.scaling * (x_ref @ factors[0].T) @ factors[1].T
                - 2.0 * second.scaling * (x_ref @ factors[2].T) @ factors[3].T)
    (expected * upstream).sum().backward()
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    for got, want in zip((first.lora_A, first.lora_B, second.lora_A, second.lora_B), factors):
        torch.testing.assert_close(got.grad, want.grad, atol=1e-5, rtol=1e-5)
    if x_needs_grad:
        torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-5, rtol=1e-5)
    else:
        assert x.grad is None


def test_a_bf16_base_trains_fused_with_bf16_products_and_fp32_gradients():
    torch.manual_seed(0)
    base = nn.Linear(24, 16).requires_grad_(False)
    layer = two_adapter_layer(base)
    reference = {name: m.detach().clone().requires_grad_() for name, m in layer.named_parameters() if "lora" in name}
    x, upstream = torch.randn(2, 5, 24), torch.randn(2, 5, 16)
    base.to(torch.bfloat16)
    out = layer(x.to(torch.bfloat16))
    assert ran_fused(out) and out.dtype is torch.bfloat16
    (out.float() * upstream).sum().backward()

    first, second = (layer.adapters[name].scaling for name in ("a", "b"))
    a1, b1, a2, b2 = (reference[f"adapters.{n}.lora_{m}"] for n in ("a", "b") for m in ("A", "B"))
    expected = base.float()(x) + 0.5 * first * (x @ a1.T) @ b1.T - 2.0 * second * (x @ a2.T) @ b2.T
    (expected * upstream).sum().backward()
    torch.testing.assert_close(out.float(), expected, atol=0.05, rtol=0.02)  # bf16 rounding, no more
    for name, want in reference.items():
        got = layer.get_parameter(name).grad
        assert got.dtype is torch.float32
        torch.testing.assert_close(got, want.grad, atol=0.05, rtol=0.02, msg=name)


@pytest.mark.parametrize("case", ["dropout", "dora", "fp16 base", "trainable base", "autocast", "conv1d"])
def test_training_keeps_plain_autograd_where_the_fused_node_does_not_apply(case):
    torch.manual_seed(0)
    base = Conv1D(16, 24) if case == "conv1d" else nn.Linear(24, 16)
    base.requires_grad_(case == "trainable base").to(torch.float16 if case == "fp16 base" else torch.float32)
    layer = layer_with(base, use_dora=case == "dora", dropout=0.5 if case == "dropout" else 0.0)
    x = torch.randn(3, 24, dtype=base.weight.dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16) if case == "autocast" else torch.enable_grad():
        out = layer(x)
    assert not ran_fused(out)
    out.float().sum().backward()
    assert layer.adapters["a"].lora_A.grad is not None


def test_adapter_dropout_does_not_keep_an_eval_mode_layer_off_the_fused_node():
    base = nn.Linear(24, 16).requires_grad_(False)
    layer = layer_with(base, dropout=0.5).eval()  # dropout does nothing in eval mode
    assert ran_fused(layer(torch.randn(3, 24)))


def test_the_fused_output_may_be_changed_in_place_and_a_frozen_adapter_gets_no_gradient():
    torch.manual_seed(0)
    layer = two_adapter_layer(nn.Linear(24, 16).requires_grad_(False))
    layer.adapters["b"].requires_grad_(False)  # active, not trained (e.g. a loaded adapter trained on top of)
    x = torch.randn(3, 24, requires_grad=True)
    out = layer(x)
    assert ran_fused(out)
    out.mul_(2)  # as some architectures do to a projection's output
    out.sum().backward()
    first = layer.adapters["a"]
    expected = 2 * 0.5 * first.scaling * (torch.ones(3, 16) @ first.lora_B.detach()).T @ x.detach()
    torch.testing.assert_close(first.lora_A.grad, expected, atol=1e-5, rtol=1e-5)
    assert layer.adapters["b"].lora_A.grad is None and layer.adapters["b"].lora_B.grad is None
