"""The LoRA layer: a frozen base layer plus any number of named low-rank adapters.

Data path of `LoraLayer.forward` with active adapters {name: gain}:

    x ─┬─► base_layer (frozen W, b: Linear | Conv1D | bnb 4-bit | bnb 8-bit) ──► y_base ───┐
       │                                                                                   ▼
       └─► to fp32 ─► dropout ─► A (r x d_in) ─► B (d_out x r) ─► × s ─► × gain ───────► (+) ─► y (base dtype)
                                           (B, × s × gain and (+) run as one fused addmm)

    s = alpha / r, or alpha / sqrt(r) with rsLoRA; one such branch per active adapter.

    DoRA (Liu et al. 2024) rescales each output row by f = m / ||W + s B A||_row (the norm is detached):
        update = (f - 1) * (y_base - b) + f * s * B(A(x))

With no adapter active, or with the active ones merged into W, the layer returns `base_layer(x)` untouched,
so the output equals the base model's bit for bit. Two faster forms of the same sum:
- training on a plain fp32 nn.Linear without dropout or DoRA: the whole layer is one autograd node
  (`core.lora.fused`), the same products with fewer passes over the data;
- inference (no autograd, eval mode, fp32 in and out, no DoRA active): the updates are added into y_base in
  place, the cheapest form for decoding a token at a time (`add_in_place`); a forward hook on the base layer
  then sees the adapted output. A plain nn.Linear with no hooks of its own is not called as a module there:
  its product runs directly, as in the fused training path.

Serving many adapters at once, each row of a batch may carry its own active set (`routes`, set by
`core.lora.model.routed_adapters`): the base product runs once for the whole batch, then each group of rows
gets its own adapters' updates (the segmented multi-LoRA product of vLLM and LoRAX).

Merging is explicit and run-once: `merge()` folds the active adapters into W (checking the result is finite
before writing), `unmerge()` takes them out again. With each DoRA factor f fixed at merge time the result is
linear in W per row,
    merged W' = c * W + sum_i gain_i * f_i * s_i B_i A_i,   c = 1 + sum_dora gain_i * (f_i - 1)
and unmerge solves for W with the factors f_i remembered from merge time.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from core.lora.errors import AdapterConfigError, AdapterStateError, NonFiniteMergeError
from core.lora.fused import lora_linear
from core.models.base_weights import is_adaptable, layer_shape, read_weight, write_weight


class LoraAdapter(nn.Module):
    """One named low-rank update `s * B A` (fp32 whatever the base dtype), with an optional DoRA magnitude."""

    def __init__(
        self,
        d_in: int,
        d_out: int,
        r: int,
        alpha: float,
        dropout: float = 0.0,
        use_rslora: bool = False,
        use_dora: bool = False,
        device: torch.device | str | None = None,
    ) -> None:
        """Args:
        d_in, d_out: the wrapped layer's input and output features.
        r: rank of the update (rows of A, columns of B).
        alpha: scale numerator; s = alpha / r, or alpha / sqrt(r) with rsLoRA so larger ranks keep learning.
        dropout: probability applied to the adapter's input only (training mode).
        use_rslora: scale by alpha / sqrt(r) (Kalajdzievski 2023).
        use_dora: add a per-output-row magnitude vector (DoRA); set its value with `init_magnitude`.
        """
        super().__init__()
        if not isinstance(r, int) or r < 1:
            raise AdapterConfigError(f"LoRA rank must be a whole number >= 1, got {r!r}. Choose e.g. r=8.")
        if not 0.0 <= dropout < 1.0:
            raise AdapterConfigError(f"LoRA dropout must be in [0, 1), got {dropout!r}. Choose e.g. 0.05.")
        self.r, self.alpha, self.use_rslora, self.use_dora = r, alpha, use_rslora, use_dora
        self.scaling = alpha / math.sqrt(r) if use_rslora else alpha / r
        self.lora_A = nn.Parameter(torch.empty(r, d_in, device=device, dtype=torch.float32))
        self.lora_B = nn.Parameter(torch.zeros(d_out, r, device=device, dtype=torch.float32))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # B = 0: the adapted model starts equal to the base
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.magnitude = nn.Parameter(torch.ones(d_out, device=device)) if use_dora else None

    def delta_weight(self) -> torch.Tensor:
        """The dense update `s * B @ A`, shape (d_out, d_in)."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def low_rank(self, x: torch.Tensor) -> torch.Tensor:
        """`s * B(A(x))` without materialising B @ A."""
        return F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scaling

    def add_to(self, out: torch.Tensor, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        """`out + gain * s * B(A(dropout(x)))` (in fp32, or autocast's dtype) with the last product and the sum
        fused in one addmm, so the update costs no extra passes over the layer's output (the training hot path)."""
        hidden = F.linear(self.dropout(x.to(self._math_dtype(x))), self.lora_A)
        flat = torch.addmm(out.reshape(-1, out.shape[-1]).to(hidden.dtype), hidden.reshape(-1, self.r),
                           self.lora_B.t(), alpha=gain * self.scaling)
        return flat.view(*out.shape[:-1], flat.shape[-1])

    def _math_dtype(self, x: torch.Tensor) -> torch.dtype:
        """fp32 (the adapter's dtype), or autocast's dtype inside an autocast region: autocast casts the
        products' inputs to it anyway, so an fp32 copy of x there would be a wasted pass each way."""
        kind = x.device.type
        return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else self.lora_A.dtype

    def dora_factor(self, weight: torch.Tensor) -> torch.Tensor:
        """DoRA's per-row factor m / ||W + s B A||; the norm is a constant for autograd, as the paper advises."""
        norm = torch.linalg.norm(weight + self.delta_weight().detach(), dim=1).detach()
        return self.magnitude / norm

    @classmethod
    def for_layer(cls, base_layer: nn.Module, r: int, alpha: float, **options) -> "LoraAdapter":
        """A fresh adapter shaped for `base_layer`, on its device (DoRA magnitude read from its weight)."""
        d_in, d_out = layer_shape(base_layer)
        adapter = cls(d_in, d_out, r, alpha, device=base_layer.weight.device, **options)
        if adapter.use_dora:
            adapter.init_magnitude(read_weight(base_layer))
        return adapter

    @torch.no_grad()
    def init_magnitude(self, weight: torch.Tensor) -> None:
        """Start DoRA's magnitude at the row norms of the adapted weight, so the output starts at the base's."""
        self.magnitude.copy_(torch.linalg.norm(weight.float() + self.delta_weight(), dim=1))

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, scaling={self.scaling:.4g}, dora={self.use_dora}"


def add_in_place(out: torch.Tensor, x: torch.Tensor, scaled_adapters: tuple) -> None:
    """`out += scale * B(A(x))` for each (LoraAdapter, scale) in `scaled_adapters`, for inference, as two calls per
    adapter that make no new tensor of the output's size: decoding pays per call (the base's weights have just
    pushed the adapters out of cache), not per FLOP. One token takes the matrix-vector products, the lightest
    calls there are. Parameters are read from the adapter's registry (`_parameters`), as nn.Module's attribute
    lookup costs ~0.8 us each, 2% of a decode step over 210 layers."""
    if x.numel() == x.shape[-1]:  # one token
        flat_out, flat_x = out.view(-1), x.reshape(-1)
        for adapter, scale in scaled_adapters:
            factors = adapter._parameters
            flat_out.addmv_(factors["lora_B"], torch.mv(factors["lora_A"], flat_x), alpha=scale)
        return
    rows = out.view(-1, out.shape[-1])
    for adapter, scale in scaled_adapters:
        factors = adapter._parameters
        rows.addmm_(F.linear(x, factors["lora_A"]).reshape(-1, adapter.r), factors["lora_B"].t(), alpha=scale)


class LoraLayer(nn.Module):
    """A frozen base layer plus named adapters; `active` says which adapters (and gains) the forward adds."""

    def __init__(self, base_layer: nn.Module, path: str = "") -> None:
        super().__init__()
        if not is_adaptable(base_layer):
            raise AdapterConfigError(
                f"Module {path or type(base_layer).__name__} is a {type(base_layer).__name__}, which LoRA cannot wrap. "
                "Target linear layers (nn.Linear, GPT-2 Conv1D, bitsandbytes 4/8-bit linears)."
            )
        self.base_layer = base_layer
        self.path = path
        self.d_in, self.d_out = layer_shape(base_layer)
        self.adapters = nn.ModuleDict()
        self._plain_linear = type(base_layer) is nn.Linear
        self.active: dict[str, float] = {}
        self.routes: tuple | None = None  # (rows or None, gains, scaled) per group: see routed_adapters
        self.merged: dict[str, float] = {}
        self._merge_factors: dict[str, torch.Tensor] = {}

    def add_adapter(self, name: str, adapter: LoraAdapter) -> None:
        """Attach a built adapter under `name` (inactive until `set_active`)."""
        if name in self.adapters:
            raise AdapterConfigError(f"Module {self.path} already has an adapter named {name!r}. Pick another name.")
        self.adapters[name] = adapter

    def delete_adapter(self, name: str) -> None:
        self._require_unmerged("delete an adapter")
        del self.adapters[name]
        self.active = {active: gain for active, gain in self.active.items() if active != name}

    def set_active(self, gains: dict[str, float]) -> None:
        """Choose which adapters the forward adds, each with its gain; an empty dict means the plain base."""
        self._require_unmerged("change the active adapters")
        unknown = [name for name in gains if name not in self.adapters]
        if unknown:
            raise AdapterConfigError(
                f"Module {self.path} has no adapter named {', '.join(map(repr, unknown))}; it has "
                f"{', '.join(map(repr, self.adapters)) or 'none'}. Load or create the adapter first."
            )
        self.active = {name: float(gain) for name, gain in gains.items()}

    @property
    def active(self) -> dict[str, float]:
        """The active adapters and their gains. Setting it also sets (adapter, gain * s) per active adapter, which
        the fused and in-place paths read: a decode step runs them in every adapted layer, where looking the
        adapters up by name again cost ~1% of the step. None while a DoRA adapter is active, since its update
        reads the base output, so neither path applies."""
        return self._active

    @active.setter
    def active(self, gains: dict[str, float]) -> None:
        self._active = gains
        self._scaled_adapters = self.scaled(gains)

    def scaled(self, gains: dict[str, float]) -> tuple[tuple[LoraAdapter, float], ...] | None:
        """(adapter, gain * s) per adapter of `gains`, for the fused and in-place paths; None when one is DoRA."""
        adapters = [(self.adapters[name], gain) for name, gain in gains.items()]
        if any(adapter.use_dora for adapter, _ in adapters):
            return None
        return tuple((adapter, gain * adapter.scaling) for adapter, gain in adapters)

    def base_weight(self) -> torch.Tensor:
        """The frozen weight as a dense (d_out, d_in) tensor, dequantized if needed."""
        return read_weight(self.base_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.routes is not None:
            return self._routed_forward(x)
        if self.merged or not self._active:
            return self.base_layer(x)
        return self._adapted(x, self._active, self._scaled_adapters)

    def _adapted(self, x: torch.Tensor, gains: dict[str, float], scaled: tuple | None) -> torch.Tensor:
        """The base output plus the updates of `gains` (non-empty), by the cheapest path that applies."""
        if torch.is_grad_enabled():
            if self._trains_fused(x, gains, scaled):
                return lora_linear(x, self.base_layer, scaled)
        elif scaled is not None and x.dtype is torch.float32 and not self.training:
            # inference with no DoRA or dropout in play: the decode hot path, so tested in the cheapest order
            base_out = self._base_forward(x)
            if base_out.dtype is torch.float32 and base_out.is_contiguous():  # autocast would have made it 16-bit
                add_in_place(base_out, x, scaled)
                return base_out
            return self._add_updates(x, base_out, gains)
        return self._add_updates(x, self._base_forward(x), gains)

    def _routed_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Each group of rows (a 1-D index tensor into dim 0, or None for every row) with its own active set: the
        base product once for the whole batch, then each group's updates; rows in no group stay the base's."""
        if len(self.routes) == 1 and self.routes[0][0] is None:  # one set for the whole batch: the usual paths
            _, gains, scaled = self.routes[0]
            return self._adapted(x, gains, scaled) if gains else self._base_forward(x)
        out = self._base_forward(x)
        for rows, gains, scaled in self.routes:
            if not gains:
                continue
            part, inputs = out.index_select(0, rows), x.index_select(0, rows)
            if scaled is not None and part.dtype is torch.float32 and x.dtype is torch.float32 and not self.training:
                add_in_place(part, inputs, scaled)
            else:
                part = self._add_updates(inputs, part, gains)
            out.index_copy_(0, rows, part)
        return out

    def _add_updates(self, x: torch.Tensor, base_out: torch.Tensor, gains: dict[str, float]) -> torch.Tensor:
        """The general form: each adapter's update added out of place (autograd, dropout, DoRA, autocast)."""
        result = base_out
        for name, gain in gains.items():
            adapter = self.adapters[name]
            if adapter.use_dora:
                result = result + gain * self._dora_update(adapter, x, base_out)
            else:
                result = adapter.add_to(result, x, gain)
        return result.to(base_out.dtype)

    def _trains_fused(self, x: torch.Tensor, gains: dict[str, float], scaled: tuple | None) -> bool:
        """Whether the forward may run as one autograd node (core.lora.fused): a frozen fp32 or bf16 nn.Linear and
        input of its dtype without autocast, no DoRA, and no dropout in play."""
        base = self.base_layer
        return (
            self._plain_linear
            and x.dtype in (torch.float32, torch.bfloat16)
            and base.weight.dtype is x.dtype
            and not base.weight.requires_grad
            and (base.bias is None or not base.bias.requires_grad)
            and scaled is not None
            and not torch.is_autocast_enabled(x.device.type)
            and all(
                self.adapters[name].lora_A.dtype is torch.float32
                and self.adapters[name].lora_B.dtype is torch.float32
                and (not self.training or isinstance(self.adapters[name].dropout, nn.Identity))
                for name in gains
            )
        )

    def _base_forward(self, x: torch.Tensor) -> torch.Tensor:
        """`base_layer(x)`; a plain nn.Linear without hooks of its own gets its product called directly, read from
        the registries as in `add_in_place`: the module call and three attribute lookups cost ~4 us, 1.5% of a
        decode step over 210 adapted layers."""
        base = self._modules["base_layer"]
        if self._plain_linear and not (base._forward_hooks or base._forward_pre_hooks):
            weights = base._parameters
            return F.linear(x, weights["weight"], weights["bias"])
        return base(x)

    def _dora_update(self, adapter: LoraAdapter, x: torch.Tensor, base_out: torch.Tensor) -> torch.Tensor:
        x = x.to(adapter.lora_A.dtype)
        dropped = adapter.dropout(x)
        update = adapter.low_rank(dropped)
        weight = self.base_weight().to(x.dtype)
        factor = adapter.dora_factor(weight)
        if isinstance(adapter.dropout, nn.Identity) or not self.training:  # x not dropped: reuse the base output
            bias = self.base_layer.bias
            plain = (base_out if bias is None else base_out - bias).to(x.dtype)
        else:
            plain = F.linear(dropped, weight)
        return (factor - 1) * plain + factor * update

    @torch.no_grad()
    def plan_merge(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The merged weight for the active adapters and their DoRA factors, checked finite, not yet written."""
        self._require_unmerged("merge")
        weight = self.base_weight().float()
        factors = {
            name: self.adapters[name].dora_factor(weight) for name in self.active if self.adapters[name].use_dora
        }
        added, row_scale = self._merge_terms(self.active, factors)
        merged = row_scale[:, None] * weight + added if factors else weight + added
        if not torch.isfinite(merged).all():
            raise NonFiniteMergeError(
                f"Merging adapter(s) {', '.join(map(repr, self.active))} into {self.path} would put NaN/Inf into "
                "its weights; nothing was changed. The adapter is broken (retrain it or load an earlier checkpoint)."
            )
        return merged, factors

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the active adapters into the base weight (once); the forward then skips the LoRA path."""
        if not self.active:
            raise AdapterStateError(f"Module {self.path} has no active adapter to merge. Activate one first.")
        merged, factors = self.plan_merge()
        write_weight(self.base_layer, merged)
        self.merged, self._merge_factors = dict(self.active), factors

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take the merged adapters out of the base weight again (lossy by rounding on 4/8-bit bases)."""
        if not self.merged:
            raise AdapterStateError(f"Module {self.path} has nothing merged to unmerge.")
        added, row_scale = self._merge_terms(self.merged, self._merge_factors)
        weight = self.base_weight().float() - added
        if self._merge_factors:
            weight = weight / row_scale[:, None]
        write_weight(self.base_layer, weight)
        self.merged, self._merge_factors = {}, {}

    def _merge_terms(
        self, gains: dict[str, float], factors: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum_i gain_i * f_i * s_i B_i A_i, per-row c): the merged weight is c * W + that sum."""
        added = torch.zeros(self.d_out, self.d_in, device=self.base_layer.weight.device)
        row_scale = torch.ones(self.d_out, device=added.device)
        for name, gain in gains.items():
            delta = self.adapters[name].delta_weight().float()
            if name in factors:
                row_scale += gain * (factors[name] - 1)
                delta = factors[name][:, None] * delta
            added += gain * delta
        return added, row_scale

    def _require_unmerged(self, action: str) -> None:
        if self.merged:
            raise AdapterStateError(
                f"Cannot {action} while adapter(s) {', '.join(map(repr, self.merged))} are merged into {self.path}. "
                "Unmerge first."
            )

    def extra_repr(self) -> str:
        return f"active={self.active}, merged={list(self.merged)}"
