"""DROP and GROW for one tensor (§3.2 SpIEL-AG, §3.3 SpIEL-MA).

DROP picks the n active entries that changed least from the pretrained weight, i.e. smallest |φ|
(φ is itself the difference from the pretrained value; new entries start at φ = 0).
GROW-AG picks the n growth candidates with the largest mean gradient |ĝ| (Eq. 7); GROW-MA picks the
n inactive positions with the largest SM3 score r_i·c_j, a monotone transform of (r_i c_j)^¼ (Eq. 9).
:func:`replace` then swaps them in, keeping η sorted and the optimizer state aligned.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .delta import SparseDelta, WeightGrad
from .optim import SparseAdamW, SparseSM3, _SparseOptimizer, bias_correction


def drop_positions(values: Tensor, n: int) -> Tensor:
    """Entry positions (into η) of the n smallest |φ|, ascending by |φ|."""
    return torch.topk(values.detach().abs().float(), n, largest=False, sorted=True).indices


def active_mask(delta: SparseDelta) -> Tensor:
    """Dense boolean mask of η, transient and one tensor at a time."""
    mask = torch.zeros(delta.numel, dtype=torch.bool, device=delta.indices.device)
    mask[delta.indices.long()] = True
    return mask


class GradientEstimator:
    """Growth candidates and their gradient statistics over one estimation phase (Eq. 7).

    The first backward pass of the phase picks the K positions with the largest |∂L/∂W| (K = d_φ(i));
    afterwards only those K entries are gathered, so no dense gradient is ever stored. Gradients of
    the micro-batches of one optimizer step are summed into that step's gradient; ``end_step`` adds it
    to Σg and Σg², so the means are per optimizer step, as Adam sees them.
    """

    def __init__(self, num_candidates: int, sampled: bool = False) -> None:
        self.num_candidates = num_candidates
        self.sampled = sampled
        self.candidates: Tensor | None = None
        self.step_grad = self.grad_sum = self.grad_sq_sum = None
        self.steps = 0

    def observe(self, grad: WeightGrad) -> None:
        if self.candidates is None:
            dense = grad.dense()
            picked = torch.topk(dense.abs(), self.num_candidates, sorted=False).indices
            self.candidates = picked.sort().values
            self.step_grad = torch.zeros(self.num_candidates, dtype=torch.float32, device=dense.device)
            self.grad_sum = torch.zeros_like(self.step_grad)
            self.grad_sq_sum = torch.zeros_like(self.step_grad)
        self.step_grad += grad.at(self.candidates, sampled=self.sampled)

    def end_step(self) -> None:
        if self.candidates is None:
            return
        self.grad_sum += self.step_grad
        self.grad_sq_sum.addcmul_(self.step_grad, self.step_grad)
        self.step_grad.zero_()
        self.steps += 1

    def abandon_step(self) -> None:
        """Forget the micro-batches of an optimizer step that will not be completed (it is rerun on resume); in the
        phase's first step that includes the candidates they picked."""
        if self.steps == 0:
            self.candidates = self.step_grad = self.grad_sum = self.grad_sq_sum = None
        elif self.step_grad is not None:
            self.step_grad.zero_()

    def means(self) -> tuple[Tensor, Tensor, Tensor]:
        """(candidate positions, mean g, mean g²) over the phase's completed steps."""
        if self.candidates is None or self.steps == 0:
            raise RuntimeError("the gradient-estimation phase saw no backward pass")
        return self.candidates, self.grad_sum / self.steps, self.grad_sq_sum / self.steps


@dataclass
class Replacement:
    """What one update did to one tensor."""

    dropped: Tensor  # flat positions removed from η
    grown: Tensor  # flat positions added to η


def grow_ag(delta: SparseDelta, optimizer: SparseAdamW, estimator: GradientEstimator, n: int,
            step: int) -> Replacement:
    """SpIEL-AG update: drop n smallest |φ|, grow the top-n candidates by |mean g| (§3.2).

    A position both dropped and regrown keeps its value and optimizer state. Grown entries start at
    φ = 0 with Adam moments seeded from the phase's means: with age a = number of phase steps,
    m = ḡ(1 − β₁ᵃ) and v = ḡ²(1 − β₂ᵃ), so that bias correction returns exactly ḡ and ḡ².
    """
    candidates, mean_g, mean_g2 = estimator.means()
    drop = drop_positions(delta.values, n)
    outgoing = delta.indices.long()[drop]
    mask = active_mask(delta)
    mask[outgoing] = False  # remaining after the drop
    valid = ~mask[candidates.long()]
    candidates, mean_g, mean_g2 = candidates[valid], mean_g[valid], mean_g2[valid]
    best = torch.topk(mean_g.abs(), min(n, candidates.numel()), sorted=True).indices
    incoming, mean_g, mean_g2 = candidates[best].long(), mean_g[best], mean_g2[best]
    # Positions dropped and regrown at once stay as they are: out of both lists.
    regrown = torch.isin(incoming, outgoing)
    drop = drop[~torch.isin(outgoing, incoming)]
    incoming, mean_g, mean_g2 = incoming[~regrown], mean_g[~regrown], mean_g2[~regrown]
    drop = drop[: incoming.numel()]
    beta1, beta2 = optimizer.param_groups[0]["betas"]
    age = torch.full_like(mean_g, float(estimator.steps))
    seeds = dict(exp_avg=mean_g * bias_correction(beta1, age), exp_avg_sq=mean_g2 * bias_correction(beta2, age),
                 age=age)
    return replace(delta, optimizer, drop, incoming, step, seeds)


def grow_ma(delta: SparseDelta, optimizer: SparseSM3, n: int, step: int) -> Replacement:
    """SpIEL-MA update: drop n smallest |φ|, grow the n inactive positions with largest r_i·c_j (Eq. 9).

    Positions active before this update (dropped ones included) cannot be grown in it. Only this
    tensor's out × in scores exist at any time. SM3 state is row/column-wise and stays untouched.
    """
    n = min(n, delta.numel - len(delta))
    drop = drop_positions(delta.values, n)
    row, col = optimizer.accumulators(delta)
    scores = torch.outer(row, col).view(-1)
    scores[delta.indices.long()] = -float("inf")
    incoming = torch.topk(scores, n, sorted=True).indices
    del scores
    return replace(delta, optimizer, drop, incoming, step, {})


@torch.no_grad()
def replace(delta: SparseDelta, optimizer: _SparseOptimizer, drop: Tensor, incoming: Tensor, step: int,
            seeds: dict[str, Tensor]) -> Replacement:
    """Put ``incoming`` flat positions at entry slots ``drop`` (φ = 0, seeded state), then re-sort η."""
    outgoing = delta.indices[drop].long()
    delta.indices[drop] = incoming.to(delta.indices.dtype)
    delta.values[drop] = 0
    delta.grown_at[drop] = step
    optimizer.reset_entries(delta.values, drop, **seeds)
    order = delta.indices.argsort()
    delta.indices.copy_(delta.indices[order])
    delta.values.copy_(delta.values[order])
    delta.grown_at.copy_(delta.grown_at[order])
    optimizer.permute_entries(delta.values, order)
    return Replacement(dropped=outgoing, grown=incoming)
