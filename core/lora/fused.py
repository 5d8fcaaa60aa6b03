"""The training hot path of a LoRA-wrapped `nn.Linear` as one autograd function.

Written with plain autograd, a LoRA linear is several graph nodes: the base product, the adapter's two
products, a copy of the base output for the out-of-place sum, and, in the backward pass, a separate
gradient for x from the base and from each adapter that autograd then adds up. One function does the
same products with none of the extra passes:

    forward    y = x W^T + b;  h_i = x A_i^T;  y += s_i h_i B_i^T               (in place, no copy of y)
    backward   g_h_i = s_i g B_i;  dA_i = g_h_i^T x;  dB_i = s_i g^T h_i;
               dx = g W + sum_i g_h_i A_i                                      (one buffer, added in place)

It applies where nothing else needs the graph's intermediate steps: a frozen fp32 or bf16 `nn.Linear` without
autocast, adapters without dropout or DoRA (`LoraLayer` checks). The base layer's own forward (and so any
hook on it) is not called on this path. Saved for backward: x and the rank-r products h_i, as before.

On a bf16 base the adapter's products run in bf16 too, as autocast would run them (on a CPU with bf16 products
they are 3-4x as fast as fp32's, and x needs no fp32 copy); A and B and their gradients stay fp32.
"""

import torch
from torch.autograd.function import once_differentiable


def lora_linear(x: torch.Tensor, layer: torch.nn.Linear, scaled_adapters: tuple) -> torch.Tensor:
    """`layer(x) + sum_i scale_i * B_i(A_i(x))` for `scaled_adapters` ((LoraAdapter_i, scale_i), ...), as one
    autograd node.

    The node works on rows (2-D); the reshapes stay outside it, so the caller may change the output in place."""
    scales = tuple(scale for _, scale in scaled_adapters)
    factors = [matrix for adapter, _ in scaled_adapters for matrix in (adapter.lora_A, adapter.lora_B)]
    rows = _LoraLinear.apply(x.reshape(-1, x.shape[-1]), layer.weight, layer.bias, scales, *factors)
    return rows.view(*x.shape[:-1], rows.shape[-1])


class _LoraLinear(torch.autograd.Function):
    """Inputs: rows of x, the frozen weight and bias, the scales, then A_1, B_1, A_2, B_2, ..."""

    @staticmethod
    def forward(ctx, rows, weight, bias, scales, *factors):
        out = torch.mm(rows, weight.t()) if bias is None else torch.addmm(bias, rows, weight.t())
        ctx.factor_dtype = factors[0].dtype
        factors = [factor.to(rows.dtype) for factor in factors]  # the same tensors when the base is fp32
        hidden = []
        for scale, down, up in zip(scales, factors[0::2], factors[1::2]):
            hidden.append(torch.mm(rows, down.t()))
            out.addmm_(hidden[-1], up.t(), alpha=scale)
        ctx.scales = scales
        ctx.save_for_backward(rows, weight, *hidden, *factors)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        rows, weight, *rest = ctx.saved_tensors
        count = len(ctx.scales)
        hidden, factors = rest[:count], rest[count:]
        want_x, want_factors = ctx.needs_input_grad[0], ctx.needs_input_grad[4:]
        grad_x = torch.mm(grad_out, weight) if want_x else None
        grad_factors = []
        for i, (scale, h, down, up) in enumerate(zip(ctx.scales, hidden, factors[0::2], factors[1::2])):
            grad_h = torch.mm(grad_out, up).mul_(scale)
            grad_factors.append(torch.mm(grad_h.t(), rows) if want_factors[2 * i] else None)
            grad_factors.append(torch.mm(grad_out.t(), h).mul_(scale) if want_factors[2 * i + 1] else None)
            if want_x:
                grad_x.addmm_(grad_h, down)
        grad_factors = [None if grad is None else grad.to(ctx.factor_dtype) for grad in grad_factors]
        return grad_x, None, None, None, *grad_factors
