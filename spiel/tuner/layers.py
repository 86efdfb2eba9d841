"""A linear layer carrying sparse deltas over a frozen base: ``nn.Linear`` or bitsandbytes NF4 (Eq. 10)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .delta import GradientObserver, merged_weight, sparse_linear


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
        self._inference: tuple | None = None  # (key, merged weight, its deltas' tensors) for 4-bit inference
        self.row_groups: tuple[int, dict[str, Tensor]] | None = None
        """Set for a mixed batch (``SpielModel.adapter_per_row``): (batch size, adapter → its batch rows)."""
        self._csr: dict[tuple, Tensor] = {}  # (adapter, dtype) → Δ as sparse CSR, within one mixed-batch block

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

    def inference_weight(self, active: list, dtype: torch.dtype) -> Tensor:
        """W + Σ scatter(η, φ) of the active deltas on a 4-bit base, dequantized once and kept while the deltas are
        unchanged (inference: without it every generated token dequantizes and re-merges every weight). It holds a
        ``dtype`` copy of the weight until the next forward pass with gradients (training) frees it."""
        tensors = [t for d in active for t in (d.values, d.indices)]
        key = (dtype, *((id(t), t._version) for t in tensors))  # the cache holds the tensors: ids stay unique
        if self._inference is None or self._inference[0] != key:
            self._inference = None  # free the old copy before building the new one
            values, indices = _joined(active)
            self._inference = (key, merged_weight(self.base_weight, indices, values, dtype), tensors)
        return self._inference[1]

    def forward(self, x: Tensor) -> Tensor:
        if self.row_groups is not None:
            return self.mixed_forward(x)
        merged = {name for name, _ in self.merged}
        active = [self.spiel_deltas[n] for n in self.active_adapters if n not in merged]
        if not active:
            return self.base_layer(x)
        if self.is_4bit and not torch.is_grad_enabled():
            bias = None if self.base_layer.bias is None else self.base_layer.bias.to(x.dtype)
            return nn.functional.linear(x, self.inference_weight(active, x.dtype), bias)
        self._inference = None
        values, indices = _joined(active)
        return sparse_linear(x, values, indices, self.base_weight, self.base_layer.bias,
                             self.grad_mode, self.observer)

    @torch.no_grad()
    def mixed_forward(self, x: Tensor) -> Tensor:
        """x·Wᵀ for every row, plus x·Δₐᵀ for the rows of each adapter a (``row_groups``), Δₐ a sparse CSR matrix
        multiplied over its entries only: requests for different adapters in one batch, nothing merged."""
        size, groups = self.row_groups
        if size != x.shape[0]:
            raise ValueError(f"{size} row adapters for a batch of {x.shape[0]}")
        out = self.base_layer(x)
        for name, rows in groups.items():
            if name not in self.spiel_deltas:
                continue  # an adapter that leaves this layer alone
            rows = rows.to(x.device)
            inputs = x.index_select(0, rows)
            flat = inputs.reshape(-1, inputs.shape[-1])
            # CPU sparse kernels (MKL) take fp32/fp64 only: a bf16 batch is multiplied in fp32 there
            dtype = x.dtype if x.is_cuda or x.dtype in (torch.float32, torch.float64) else torch.float32
            update = torch.sparse.mm(self.delta_csr(name, dtype), flat.t().to(dtype)).t()
            out.index_add_(0, rows, update.reshape(*inputs.shape[:-1], -1).to(out.dtype))
        return out

    def delta_csr(self, name: str, dtype: torch.dtype) -> Tensor:
        """Δ of adapter ``name`` as an ``out × in`` sparse CSR matrix in ``dtype``, built once per mixed-batch block
        (``SpielModel.adapter_per_row`` clears them on leaving it, so a changed or reloaded adapter is rebuilt)."""
        if (name, dtype) not in self._csr:
            delta = self.spiel_deltas[name]
            rows, cols = delta.indices.long() // self.shape[1], delta.indices.long() % self.shape[1]
            coo = torch.sparse_coo_tensor(torch.stack([rows, cols]), delta.values.detach().to(dtype), self.shape,
                                          check_invariants=False)  # η is checked unique, sorted, in range
            self._csr[name, dtype] = coo.coalesce().to_sparse_csr()
        return self._csr[name, dtype]

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


def _joined(deltas: list) -> tuple[Tensor, Tensor]:
    """(φ, η) of the deltas applied together: one delta's own tensors, or their concatenation (scatter-add sums
    overlapping positions)."""
    if len(deltas) == 1:
        return deltas[0].values, deltas[0].indices
    return torch.cat([d.values.to(torch.float32) for d in deltas]), torch.cat([d.indices.long() for d in deltas])
