"""Paired statistics for the audit: a claim's effect over per-item score differences, its interval and p-value.

An effect is a weighted sum of per-item differences d_i = score_a(i) − score_b(i) between two cells scored on the
same items, Σ wᵢ dᵢ: a benchmark's score is the item mean (weights 1/n) or, for BBH and TyDiQA, the mean over
groups of the group means (1/(G·n_g)), and a claim pools its comparisons with equal weight. So

- the **interval** is a percentile bootstrap that resamples items within each (comparison, group) stratum,
  the way the score itself is built — with several training seeds, each cell's seeds first, then the items (the
  same items for both cells);
- the **p-value** is the sign-flip (paired permutation) test of "no difference": under it each item's two
  scores are exchangeable, so each dᵢ's sign is a fair coin. With equal |wᵢ dᵢ| (one comparison of 0/1 scores)
  that is the exact two-sided McNemar test on the discordant pairs; with ≤ ``EXACT_TERMS`` distinct nonzero
  terms it is enumerated exactly; otherwise it is estimated from ``DRAWS`` random flips. With several seeds the
  p-value is the bootstrap's (twice the share of draws on the far side of zero; with few seeds its seed level is
  coarse);
- unpaired samples (per-step times, one measure per seed's run) are compared by a permutation test, exact where
  the relabellings are few;
- a claim with a margin (e.g. "costs at most 3 points") is tested against it by the bootstrap.

Scores are in percent points (0/1 scores × 100), as the tables print them.
"""

from __future__ import annotations

import itertools
import math
import statistics
from dataclasses import dataclass

import numpy as np

ALPHA = 0.05
POWER = 0.8
DRAWS = 20_000
EXACT_TERMS = 16
CHUNK = 250
"""Bootstrap draws computed at once (bounds memory at CHUNK × items × 8 bytes per seed)."""
Z_ALPHA, Z_POWER = 1.959964, 0.841621
"""Standard normal quantiles at 1 − α/2 and at the power: the smallest detectable effect is (z_α + z_β)·SE."""

BRACKET = "search bracket"
REPLICATED, CONTRADICTED, INCONCLUSIVE, NOT_MEASURED = "replicated", "contradicted", "inconclusive", "not measured"


@dataclass(frozen=True)
class Stratum:
    """One (comparison, group) of an effect, weighing ``weight`` in it: the scores of cell ``a`` and cell ``b`` on
    the same items, one row per seed (seeds × items); or, not ``paired``, two independent samples (e.g. the
    per-step times of two runs, a measure of each seed's run)."""

    a: np.ndarray
    weight: float
    b: np.ndarray
    paired: bool = True

    @property
    def n(self) -> int:
        return self.a.shape[-1] if self.paired else self.a.size + self.b.size

    @property
    def seeds(self) -> int:
        return max(len(np.atleast_2d(self.a)), len(np.atleast_2d(self.b))) if self.paired else 1

    def mean(self) -> float:
        return float(self.a.mean() - self.b.mean())

    def resample(self, rng: np.random.Generator, draws: int) -> np.ndarray:
        """``draws`` bootstrap differences: paired, seeds resampled for each cell, then items (the same items for
        both); unpaired, each sample on its own."""
        if not self.paired:
            return (self.a[rng.integers(0, self.a.size, (draws, self.a.size))].mean(axis=1)
                    - self.b[rng.integers(0, self.b.size, (draws, self.b.size))].mean(axis=1))
        out = np.empty(draws)
        for start in range(0, draws, CHUNK):
            m = min(CHUNK, draws - start)
            items = rng.integers(0, self.a.shape[-1], (m, self.a.shape[-1]))
            sides = []
            for scores in (np.atleast_2d(self.a), np.atleast_2d(self.b)):
                seeds = rng.integers(0, len(scores), (m, len(scores)))
                sides.append(np.mean([scores[seeds[:, [s]], items] for s in range(len(scores))], axis=0))
            out[start:start + m] = (sides[0] - sides[1]).mean(axis=1)
        return out


@dataclass(frozen=True)
class Estimate:
    """An effect with its 95 % interval and p-value; ``n`` is the number of paired items (or samples) behind it."""

    effect: float
    low: float
    high: float
    p_value: float | None
    n: int
    se: float
    test: str

    @property
    def detectable(self) -> float:
        """The smallest effect this run would detect: with 80 % power at α = 0.05 (two-sided), or for a search
        bracket its width."""
        return self.high - self.low if self.test == BRACKET else (Z_ALPHA + Z_POWER) * self.se

    def needed(self, published: float | None, margin: float = 0.0) -> int | None:
        """About how many items (or samples) would detect ``published`` (its distance from ``margin``) with 80 %
        power, by n ∝ 1/SE² from this run's standard error; None without a published effect or any spread."""
        if published is None or self.se == 0 or published == margin or self.test == BRACKET:
            return None
        return math.ceil(self.n * (self.detectable / abs(published - margin)) ** 2)


def standard_error(values: list[float]) -> float | None:
    """Standard error of the mean (sample standard deviation / √n); None for fewer than two values."""
    return statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None


def estimate(strata: list[Stratum], margin: float = 0.0, draws: int = 2000, seed: int = 0) -> Estimate:
    """The effect Σ weight·mean over ``strata``, its bootstrap interval (each stratum resampled on its own: seeds,
    then items) and its p-value: the sign-flip test of no difference where every stratum pairs one seed with
    one and ``margin`` is 0, else the bootstrap's test against ``margin``."""
    strata = [s for s in strata if s.n]
    if not strata:
        raise ValueError("no items or samples")
    effect = sum(s.weight * s.mean() for s in strata)
    rng = np.random.default_rng(seed)
    boot = sum(s.weight * s.resample(rng, draws) for s in strata)
    low, high = np.percentile(boot, [100 * ALPHA / 2, 100 * (1 - ALPHA / 2)])
    n = sum(s.n for s in strata)
    se = float(boot.std(ddof=1))
    if margin == 0 and all(s.paired and s.seeds == 1 for s in strata):
        p, test = sign_flip([((s.a - s.b).ravel(), s.weight / s.n) for s in strata], seed)
    elif margin == 0 and not any(s.paired for s in strata):
        p, test = permutation(strata, seed)
    else:
        below, above = float(np.mean(boot <= margin)), float(np.mean(boot >= margin))
        seeds = max(s.seeds for s in strata)
        p = min(1.0, max(2 * min(below, above), 1 / draws))
        test = f"bootstrap against {margin:g}" + (f", {seeds} seeds then items" if seeds > 1 else "")
    return Estimate(effect, float(low), float(high), p, n, se, test)


def permutation(strata: list[Stratum], seed: int = 0) -> tuple[float, str]:
    """Two-sided p-value of Σ weight·(mean a − mean b) over unpaired ``strata`` when, in each, the labels a/b are
    exchangeable: every relabelling enumerated where there are at most ``DRAWS`` (two runs of two seeds: 6, so
    p ≥ 1/3), else ``DRAWS`` random ones."""
    pooled = [np.concatenate([s.a.ravel(), s.b.ravel()]) for s in strata]
    sizes = [s.a.size for s in strata]
    observed = abs(sum(s.weight * s.mean() for s in strata))
    tolerance = 1e-9 * max(1.0, observed)
    count = math.prod(math.comb(len(v), k) for v, k in zip(pooled, sizes, strict=True))

    def statistic(labels: list[np.ndarray]) -> float:
        return abs(sum(s.weight * (v[m].mean() - v[~m].mean()) for s, v, m in zip(strata, pooled, labels,
                                                                                   strict=True)))

    def mask(size: int, chosen) -> np.ndarray:
        out = np.zeros(size, bool)
        out[list(chosen)] = True
        return out

    if count <= DRAWS:
        splits = [[mask(len(v), c) for c in itertools.combinations(range(len(v)), k)]
                  for v, k in zip(pooled, sizes, strict=True)]
        values = [statistic(list(labels)) for labels in itertools.product(*splits)]
        return float(np.mean(np.array(values) >= observed - tolerance)), f"exact permutation, {count} relabellings"
    rng = np.random.default_rng(seed)
    hits = sum(statistic([mask(len(v), rng.permutation(len(v))[:k]) for v, k in zip(pooled, sizes, strict=True)])
               >= observed - tolerance for _ in range(DRAWS))
    return (1 + hits) / (1 + DRAWS), f"permutation, {DRAWS} random relabellings"


def sign_flip(terms: list[tuple[np.ndarray, float]], seed: int = 0) -> tuple[float, str]:
    """Two-sided p-value of S = Σ wᵢdᵢ under independent random signs of its terms (``terms``: (differences,
    weight of each)); exact where possible (see the module docstring), else Monte Carlo with ``DRAWS`` flips."""
    values = np.concatenate([d * w for d, w in terms])
    values = values[values != 0]
    if values.size == 0:
        return 1.0, "sign-flip (no discordant items)"
    observed = abs(values.sum())
    magnitudes = np.abs(values)
    tolerance = 1e-9 * magnitudes.max()
    if np.allclose(magnitudes, magnitudes[0], rtol=0, atol=tolerance):
        m = values.size  # S = |v|·(2K − m) with K ~ Binomial(m, 1/2)
        k = round((observed / magnitudes[0] + m) / 2)
        tail = sum(math.comb(m, j) for j in range(k, m + 1)) / 2**m
        return min(1.0, 2 * tail if 2 * k != m else 1.0), f"exact sign test (McNemar), {m} discordant"
    if values.size <= EXACT_TERMS:
        sums = np.abs(np.array(list(itertools.product((-1, 1), repeat=values.size))) @ magnitudes)
        return float(np.mean(sums >= observed - tolerance)), f"exact sign-flip, {values.size} nonzero"
    rng = np.random.default_rng(seed)
    signs = rng.choice((-1.0, 1.0), size=(DRAWS, values.size))
    hits = int(np.sum(np.abs(signs @ magnitudes) >= observed - tolerance))
    return (1 + hits) / (1 + DRAWS), f"sign-flip, {DRAWS} random flips"


def interval(low: float, high: float, point: float, n: int = 1) -> Estimate:
    """An effect known only to lie in the bracket (low, high] (a memory search's granularity): no p-value;
    significant when the bracket lies on one side of the margin."""
    return Estimate(point, low, high, None, n, 0.0, BRACKET)


def decide(estimate: Estimate | None, direction: int, margin: float = 0.0) -> str:
    """The verdict on a claim that the effect lies on ``direction``'s side (+1 above, −1 below) of ``margin``:
    replicated if significantly so, contradicted if significantly the other way, inconclusive otherwise."""
    if estimate is None:
        return NOT_MEASURED
    if estimate.test == BRACKET:
        significant = estimate.low >= margin or estimate.high <= margin
    else:  # no variation among the items: the bootstrap cannot gauge the noise, and decides nothing
        significant = estimate.p_value < ALPHA and estimate.se > 0
    if not significant or estimate.effect == margin:
        return INCONCLUSIVE
    return REPLICATED if (estimate.effect - margin) * direction > 0 else CONTRADICTED
