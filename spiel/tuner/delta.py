"""A sparse delta on one weight tensor and the linear map that applies it (paper §3.1, App. E).

A delta holds flat row-major indices η into the frozen weight W (shape out × in), fp32 values φ
and, per entry, the optimizer step at which it was last grown. The forward pass computes
``y = x (W + scatter(η, φ))ᵀ + b`` (Eq. 4–5) without keeping the merged weight between forward
and backward: backward rebuilds it. ∂L/∂φ comes either from the dense weight gradient gathered at
η (Eq. 6, ``grad_mode="dense"``) or from dot products at the active positions only (Eq. 14–16,
``grad_mode="sampled"``, via ``torch.sparse.sampled_addmm``), which never builds ∂L/∂W.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor, nn

from .config import GRAD_MODES

BaseWeight = Callable[[torch.dtype], Tensor]
"""Returns a *fresh* dense copy of the frozen base weight in the given dtype (dequantized if 4-bit)."""

# CSR support is "beta" in torch; the warning would otherwise fire on every backward pass.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")


def index_dtype(numel: int) -> torch.dtype:
    """int32 indices while they fit (the authors' convention), int64 beyond 2³¹ elements."""
    return torch.int32 if numel < 2**31 else torch.int64


def uniform_subset(numel: int, count: int, generator: torch.Generator | None = None,
                   device: torch.device | str = "cpu") -> Tensor:
    """``count`` distinct positions of ``[0, numel)``, uniformly at random, sorted, on ``device``.

    No permutation of all ``numel`` positions (minutes per 7b model on a CPU): while the subset is at most half
    the range, draw positions with replacement, keep the distinct ones and repeat until there are enough, then keep
    a random ``count`` of them. Every step is invariant under relabelling the positions, so each ``count``-subset is
    equally likely. ``generator`` must live on ``device`` (a CPU generator is used for the CPU and when omitted).
    """
    if not 0 <= count <= numel:
        raise ValueError(f"cannot pick {count} distinct positions out of {numel}")
    dtype = index_dtype(numel)
    if 2 * count > numel:
        picked = torch.randperm(numel, generator=generator, device=device)[:count]
        return picked.sort().values.to(dtype)
    picked = torch.empty(0, dtype=torch.int64, device=device)
    while picked.numel() < count:
        draws = torch.randint(numel, (count + count // 8 + 16,), generator=generator, device=device)
        picked = torch.unique(torch.cat([picked, draws]))
    keep = torch.randperm(picked.numel(), generator=generator, device=device)[:count]
    return picked[keep].sort().values.to(dtype)


class SparseDelta(nn.Module):
    """Indices η, values φ and per-entry growth step for one ``out × in`` weight tensor.

    Invariant: ``indices`` are unique, in ``[0, out·in)`` and sorted ascending (row-major), so
    that they form a CSR pattern for the sampled gradient.
    """

    def __init__(self, shape: tuple[int, int], indices: Tensor, values: Tensor | None = None,
                 grown_at: Tensor | None = None, values_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.shape = (int(shape[0]), int(shape[1]))
        numel = self.shape[0] * self.shape[1]
        indices = indices.to(index_dtype(numel))
        if values is None:
            values = torch.zeros(indices.numel(), dtype=values_dtype, device=indices.device)
        if grown_at is None:
            grown_at = torch.zeros(indices.numel(), dtype=torch.int32, device=indices.device)
        self.register_buffer("indices", indices)
        self.values = nn.Parameter(values.to(values_dtype))
        self.register_buffer("grown_at", grown_at.to(torch.int32))
        self.check()

    @classmethod
    def random(cls, shape: tuple[int, int], count: int, generator: torch.Generator | None = None,
               device: torch.device | str = "cpu",
               values_dtype: torch.dtype = torch.float32) -> SparseDelta:
        """A uniformly random, sorted subset of ``count`` positions with φ = 0 (Alg. 1, line 4)."""
        picked = uniform_subset(shape[0] * shape[1], count, generator, device)
        return cls(shape, picked, values_dtype=values_dtype)

    @property
    def numel(self) -> int:
        return self.shape[0] * self.shape[1]

    def __len__(self) -> int:
        return self.indices.numel()

    def check(self) -> None:
        """Raise if η is not unique, sorted and in range."""
        idx = self.indices
        if idx.numel() == 0:
            return
        if int(idx.min()) < 0 or int(idx.max()) >= self.numel:
            raise ValueError(f"sparse delta indices out of range [0, {self.numel}) for shape {self.shape}")
        if idx.numel() > 1 and not bool((idx[1:] > idx[:-1]).all()):
            raise ValueError("sparse delta indices must be unique and sorted ascending")

    def to_dense(self, dtype: torch.dtype | None = None) -> Tensor:
        """scatter(η, φ, d) reshaped to ``out × in`` (Eq. 5)."""
        dtype = dtype or self.values.dtype
        flat = torch.zeros(self.numel, dtype=dtype, device=self.values.device)
        flat.index_add_(0, self.indices.long(), self.values.detach().to(dtype))
        return flat.view(self.shape)

    def extra_repr(self) -> str:
        return f"shape={self.shape}, entries={len(self)}, density={len(self) / self.numel:.4%}"


class GradientObserver(Protocol):
    """Receives the weight gradient of each backward pass (SpIEL-AG's estimation phase)."""

    def observe(self, grad: WeightGrad) -> None: ...


class WeightGrad:
    """∂L/∂W = ∂L/∂Yᵀ X for one backward pass, evaluated lazily (Eq. 13).

    ``dense()`` builds the full ``out × in`` gradient once (flattened, in the product's dtype: bf16 under a bf16
    model, so no fp32 copy of it is made); ``at(η)`` returns its entries at sorted flat positions in fp32,
    gathered from the dense gradient when it was built anyway and otherwise computed as sampled dot products
    (Eq. 16).
    """

    def __init__(self, x2d: Tensor, gy2d: Tensor, shape: tuple[int, int]) -> None:
        self.x2d, self.gy2d, self.shape = x2d, gy2d, shape
        self._dense: Tensor | None = None
        self._operands: tuple[Tensor, Tensor] | None = None

    def dense(self) -> Tensor:
        if self._dense is None:
            self._dense = (self.gy2d.t() @ self.x2d).reshape(-1)
        return self._dense

    def at(self, indices: Tensor, sampled: bool = True) -> Tensor:
        if self._dense is not None or not sampled:
            return self.dense()[indices.long()].float()
        if self._operands is None:  # shared by every sampled product of this backward pass
            self._operands = sampled_operands(self.x2d, self.gy2d)
        return sampled_grad(*self._operands, indices, self.shape)


SAMPLED_DTYPE = torch.float32
"""Operand dtype of the sampled products on every device: neither cuSPARSE's SDDMM nor the CPU kernel takes
bf16, and fp32 accumulation keeps the sampled ∂L/∂φ equal to the dense gradient gathered at η."""


def sampled_operands(x2d: Tensor, gy2d: Tensor) -> tuple[Tensor, Tensor]:
    """(X, ∂L/∂Yᵀ) laid out for ``sampled_addmm``: contiguous, in :data:`SAMPLED_DTYPE` whatever the device."""
    return x2d.to(SAMPLED_DTYPE), gy2d.t().to(SAMPLED_DTYPE).contiguous()


def sampled_grad(x2d: Tensor, gy_t: Tensor, indices: Tensor, shape: tuple[int, int]) -> Tensor:
    """g_i = X[:, c_i] · ∂L/∂Yᵀ[r_i, :] at flat positions r_i·in + c_i (App. E, Eq. 16).

    Operands come from :func:`sampled_operands`; unsorted or repeated positions are allowed.
    """
    out_f, in_f = shape
    if indices.numel() == 0:
        return torch.zeros(0, dtype=torch.float32, device=x2d.device)
    idx = indices.long()
    order = None
    if idx.numel() > 1 and not bool((idx[1:] > idx[:-1]).all()):  # e.g. several adapters concatenated
        order = idx.argsort()
        idx = idx[order]
    rows, cols = idx // in_f, idx % in_f
    crow = torch.zeros(out_f + 1, dtype=torch.int64, device=idx.device)
    crow[1:] = torch.bincount(rows, minlength=out_f).cumsum(0)
    pattern = torch.sparse_csr_tensor(crow, cols, torch.zeros(idx.numel(), dtype=x2d.dtype, device=idx.device),
                                      size=shape, check_invariants=False)
    prod = torch.sparse.sampled_addmm(pattern, gy_t, x2d, beta=0.0)
    grad = prod.values().float()
    if order is not None:
        grad = torch.empty_like(grad).index_copy_(0, order, grad)
    return grad


class SparseLinearFn(torch.autograd.Function):
    """y = x (W + scatter(η, φ))ᵀ + b with W frozen; the merged weight is rebuilt in backward."""

    @staticmethod
    def forward(ctx, x: Tensor, values: Tensor, indices: Tensor, base_weight: BaseWeight,
                bias: Tensor | None, grad_mode: str, observer: GradientObserver | None) -> Tensor:
        weight = merged_weight(base_weight, indices, values, x.dtype)
        out = nn.functional.linear(x, weight, None if bias is None else bias.to(x.dtype))
        ctx.save_for_backward(x, values, indices)
        ctx.base_weight, ctx.grad_mode, ctx.observer = base_weight, grad_mode, observer
        ctx.shape = tuple(weight.shape)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, values, indices = ctx.saved_tensors
        grad_x = grad_values = None
        if ctx.needs_input_grad[0]:
            weight = merged_weight(ctx.base_weight, indices, values, grad_out.dtype)
            grad_x = grad_out @ weight
            del weight
        if ctx.needs_input_grad[1] or ctx.observer is not None:
            wg = WeightGrad(x.reshape(-1, x.shape[-1]), grad_out.reshape(-1, grad_out.shape[-1]), ctx.shape)
            if ctx.observer is not None:
                ctx.observer.observe(wg)
            if ctx.needs_input_grad[1]:
                grad_values = wg.at(indices, sampled=ctx.grad_mode == "sampled").to(values.dtype)
        return grad_x, grad_values, None, None, None, None, None


def merged_weight(base_weight: BaseWeight, indices: Tensor, values: Tensor, dtype: torch.dtype) -> Tensor:
    """W + scatter(η, φ) in ``dtype``, in a fresh tensor (the base is never modified)."""
    weight = base_weight(dtype)
    weight.view(-1).index_add_(0, indices.long(), values.detach().to(dtype))
    return weight


def sparse_linear(x: Tensor, values: Tensor, indices: Tensor, base_weight: BaseWeight,
                  bias: Tensor | None = None, grad_mode: str = "dense",
                  observer: GradientObserver | None = None) -> Tensor:
    """Functional form of :class:`SparseLinearFn`."""
    if grad_mode not in GRAD_MODES:
        raise ValueError(f"grad_mode must be one of {GRAD_MODES}, got {grad_mode!r}")
    return SparseLinearFn.apply(x, values, indices, base_weight, bias, grad_mode, observer)
