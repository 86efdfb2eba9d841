"""When η is updated and how many entries each update replaces (Eq. 8 and 11, App. C)."""

from __future__ import annotations

import math


def update_steps(total_steps: int, interval: int, estimation_steps: int) -> list[int]:
    """Optimizer steps t = kS + γ ≤ T after which η is updated (the first at t = γ)."""
    return list(range(estimation_steps, total_steps + 1, interval))


def replace_fraction(t: int, total_steps: int, *, rate: float, schedule: str = "linear",
                     first_update: int | None = None) -> float:
    """p(t) = k(i, t) / d_φ(i).

    ``first_update`` (normally γ) replaces everything at that step: the initial η is random (Eq. 8).
    Otherwise linear ξ(T − t)/T (Eq. 8) or cosine ξ/2 (1 + cos(πt/T)) (Eq. 11).
    """
    if first_update is not None and t == first_update:
        return 1.0
    if schedule == "linear":
        return rate * (total_steps - t) / total_steps
    if schedule == "cosine":
        return rate / 2 * (1 + math.cos(math.pi * t / total_steps))
    raise ValueError(f"unknown schedule {schedule!r}; use 'linear' or 'cosine'")


def num_to_replace(count: int, fraction: float) -> int:
    """n = ⌊d_φ(i) · p⌋ for one tensor, clamped to [0, d_φ(i)]."""
    return max(0, min(count, math.floor(count * fraction)))
