"""Optimizers over sparse values φ whose index set changes during training (§3.2–3.3).

Both apply decoupled weight decay φ ← φ − lr·λ·φ with the scheduled learning rate, and expose
``reset_entries`` / ``permute_entries`` so that drop-and-grow can reseed or reorder per-entry state.

* :class:`SparseAdamW` keeps m, v and a per-entry *age* (its own Adam step count), so entries grown
  at different times get their own bias correction 1/(1 − βᵃᵍᵉ) (§3.2).
* :class:`SparseSM3` (Anil et al., 2019) keeps one accumulator per row and per column of the dense
  tensor: u = min(r_i, c_j) + g², r and c take the max of u over their row/column and never shrink,
  update g / √(u + ε); no momentum. Its state is O(out + in), independent of d_φ (§3.3).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor

from .delta import SparseDelta


class _SparseOptimizer(torch.optim.Optimizer):
    """Shared plumbing: one param group over the values of the given deltas."""

    per_entry_state: tuple[str, ...] = ()

    def __init__(self, deltas: Iterable[SparseDelta], defaults: dict) -> None:
        self.deltas = list(deltas)
        self.delta_of = {d.values: d for d in self.deltas}
        super().__init__([d.values for d in self.deltas], defaults)

    @torch.no_grad()
    def reset_entries(self, param: Tensor, positions: Tensor, **seeds: Tensor) -> None:
        """Set per-entry state at ``positions`` to ``seeds[name]`` (zero when not given)."""
        state = self._state(param)
        for name in self.per_entry_state:
            state[name][positions] = seeds[name].to(state[name].dtype) if name in seeds else 0

    @torch.no_grad()
    def permute_entries(self, param: Tensor, order: Tensor) -> None:
        """Reorder per-entry state like ``param[order]`` (after η is re-sorted)."""
        state = self._state(param)
        for name in self.per_entry_state:
            state[name] = state[name][order]

    def _state(self, param: Tensor) -> dict:
        raise NotImplementedError

    def load_state_dict(self, state_dict: dict) -> None:
        """As torch's, but every state tensor keeps its saved dtype: torch casts floating state to the parameter's
        dtype, which for bf16 values (qSpIEL) would turn fp32 moments, ages and SM3 accumulators into bf16 on resume
        (an age of 300 + 1 stays 300 in bf16)."""
        super().load_state_dict(state_dict)
        params = [p for group in self.param_groups for p in group["params"]]
        for index, saved in state_dict["state"].items():
            state = self.state[params[index]]
            for name, value in saved.items():
                if torch.is_tensor(value):
                    state[name] = value.to(device=params[index].device, dtype=value.dtype, copy=True)


class SparseAdamW(_SparseOptimizer):
    """AdamW with per-entry age for bias correction; β = (0.9, 0.999), ε = 1e-6 (authors' code)."""

    per_entry_state = ("exp_avg", "exp_avg_sq", "age")

    def __init__(self, deltas: Iterable[SparseDelta], lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.0) -> None:
        super().__init__(deltas, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    def _state(self, param: Tensor) -> dict:
        state = self.state[param]
        if not state:
            for name in self.per_entry_state:
                state[name] = torch.zeros_like(param, dtype=torch.float32)
        return state

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self._state(p)
                g = p.grad.float()
                m, v, age = state["exp_avg"], state["exp_avg_sq"], state["age"]
                age += 1
                m.mul_(beta1).add_(g, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                m_hat = m / bias_correction(beta1, age)
                v_hat = v / bias_correction(beta2, age)
                value = p.float()
                value.mul_(1 - lr * wd).sub_(lr * m_hat / (v_hat.sqrt() + eps))
                p.copy_(value)
        return loss


class SparseSM3(_SparseOptimizer):
    """SM3-II over sparse entries with per-tensor row and column accumulators; ε = 1e-8."""

    def __init__(self, deltas: Iterable[SparseDelta], lr: float = 1e-3, eps: float = 1e-8,
                 weight_decay: float = 0.0) -> None:
        super().__init__(deltas, dict(lr=lr, eps=eps, weight_decay=weight_decay))

    def _state(self, param: Tensor) -> dict:
        state = self.state[param]
        if not state:
            out_f, in_f = self.delta_of[param].shape
            state["row"] = torch.zeros(out_f, dtype=torch.float32, device=param.device)
            state["col"] = torch.zeros(in_f, dtype=torch.float32, device=param.device)
        return state

    def accumulators(self, delta: SparseDelta) -> tuple[Tensor, Tensor]:
        """(r, c) of one tensor, used by SpIEL-MA's growth score (Eq. 9)."""
        state = self._state(delta.values)
        return state["row"], state["col"]

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                delta = self.delta_of[p]
                state = self._state(p)
                rows, cols = _rows_cols(delta)
                g = p.grad.float()
                u = torch.minimum(state["row"][rows], state["col"][cols]).addcmul_(g, g)
                state["row"].scatter_reduce_(0, rows, u, reduce="amax")
                state["col"].scatter_reduce_(0, cols, u, reduce="amax")
                value = p.float()
                value.mul_(1 - lr * wd).sub_(lr * g / (u + eps).sqrt())
                p.copy_(value)
        return loss


def bias_correction(beta: float, age: Tensor) -> Tensor:
    """1 − βᵃᵍᵉ per entry, as −expm1(age · ln β) to stay exact in fp32 for β close to 1."""
    return -torch.expm1(age * math.log(beta))


def _rows_cols(delta: SparseDelta) -> tuple[Tensor, Tensor]:
    idx = delta.indices.long()
    in_f = delta.shape[1]
    return idx // in_f, idx % in_f
