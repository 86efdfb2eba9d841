"""A linear layer carrying sparse deltas over a frozen base: ``nn.Linear`` or bitsandbytes NF4 (Eq. 10)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .delta import GradientObserver, sparse_linear, sparse_side_product


def is_4bit(layer: nn.Module) -> bool:
    """True for bitsandbytes ``Linear4bit`` (its weight carries a ``quant_state``)."""
    return getattr(getattr(layer, "weight", None), "quant_state", None) is not None


class SpielLinear(nn.Module):
    """Wraps a frozen linear layer; any number of named deltas, of which a subset is active.

    Active deltas are applied together (their entries concatenated: scatter-add sums overlaps), so
    several adapters compose on the fly; a merged delta is folded into an fp32/bf16 base weight.
    """

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.spiel_deltas = nn.ModuleDict()
        self.active_adapters: list[str] = []
        self.merged: list[tuple[str, Tensor]] = []  # (adapter, base values at its η), in merge order
        self.grad_mode = "dense"
        self.observer: GradientObserver | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return (self.base_layer.out_features, self.base_layer.in_features)

    @property
    def is_4bit(self) -> bool:
        return is_4bit(self.base_layer)

    def base_weight(self, dtype: torch.dtype) -> Tensor:
        """A fresh dense copy of the frozen weight in ``dtype``; NF4 weights are dequantized (Eq. 10)."""
        weight = self.base_layer.weight
        if self.is_4bit:
            import bitsandbytes.functional as bnbf

            return bnbf.dequantize_4bit(weight.data, weight.quant_state).to(dtype)
        return weight.detach().to(dtype, copy=True)

    def base_4bit_output(self, x: Tensor) -> Tensor:
        """x Wᵀ + b through bitsandbytes' 4-bit matmul. Not ``base_layer(x)``: in inference on some CPUs that
        repacks the weight in place into a layout which :meth:`base_weight`'s dequantization cannot read."""
        import bitsandbytes as bnb

        layer, weight = self.base_layer, self.base_layer.weight
        dtype = layer.compute_dtype or x.dtype
        bias = None if layer.bias is None else layer.bias.to(dtype)
        return bnb.matmul_4bit(x.to(dtype), weight, bias=bias, quant_state=weight.quant_state).to(x.dtype)

    def forward(self, x: Tensor) -> Tensor:
        merged = {name for name, _ in self.merged}
        active = [self.spiel_deltas[n] for n in self.active_adapters if n not in merged]
        if not active:
            return self.base_layer(x)
        if len(active) == 1:
            values, indices = active[0].values, active[0].indices
        else:
            values = torch.cat([d.values.to(torch.float32) for d in active])
            indices = torch.cat([d.indices.long() for d in active])
        if self.is_4bit and not torch.is_grad_enabled():
            # inference on an unmerged 4-bit base: the base layer's own kernel plus x·Δᵀ with Δ sparse, instead of
            # dequantizing and re-merging the whole weight for every generated token
            return self.base_4bit_output(x) + sparse_side_product(x, values, indices, self.shape)
        return sparse_linear(x, values, indices, self.base_weight, self.base_layer.bias,
                             self.grad_mode, self.observer)

    @torch.no_grad()
    def merge(self, name: str) -> None:
        """W ← W + scatter(η, φ); the base entries at η are kept so that unmerge is exact."""
        if self.is_4bit:
            raise ValueError("a delta cannot be merged into a 4-bit base; it is applied on the fly instead")
        delta = self.spiel_deltas[name]
        flat = self.base_layer.weight.data.view(-1)
        idx = delta.indices.long()
        self.merged.append((name, flat[idx].clone()))
        flat.index_add_(0, idx, delta.values.to(flat.dtype))

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore the base weight bit for bit, undoing merges in reverse order."""
        flat = self.base_layer.weight.data.view(-1) if self.merged else None
        while self.merged:
            name, saved = self.merged.pop()
            flat[self.spiel_deltas[name].indices.long()] = saved

    def extra_repr(self) -> str:
        return f"active={self.active_adapters}, merged={[n for n, _ in self.merged]}, grad_mode={self.grad_mode}"
