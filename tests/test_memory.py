"""Memory binary search (App. F, Table 3): probe counts, failed probes, a real CPU search on a tiny model."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from spiel.memory import Probe, ProbeSpec, binary_search, run_probe


def _fake(threshold: int, calls: list[int], peak=None):
    """A probe that passes from ``threshold`` MiB; a passing one reports ``peak(limit)`` as its peak."""
    def probe(limit: int) -> Probe:
        calls.append(limit)
        passed = limit >= threshold
        return Probe(limit, passed, "" if passed else "out of memory", peak_mb=peak(limit) if peak and passed else None)
    return probe


def _thresholds(low: int, high: int):
    return [*range(low + 1, high + 1, max(1, (high - low) // 37)), high]


def _lowest(threshold: int, low: int, high: int, step: int) -> int:
    return min(low + math.ceil((threshold - low) / step) * step, high)  # first grid limit ≥ threshold


BOUNDS = [(0, 64 * 1024, 1024), (512, 4608, 128), (0, 100, 7)]


def _search(threshold: int, low: int, high: int, step: int, peak=None) -> list[int]:
    """The limits probed by a search for ``threshold``, after checking that it found the lowest passing grid limit
    and probed each limit once, inside (low, high], the upper bound first."""
    calls: list[int] = []
    search = binary_search(_fake(threshold, calls, peak), low, high, step)
    lowest = _lowest(threshold, low, high, step)
    assert search.limit_mb == lowest and search.passing.limit_mb == lowest, (threshold, calls)
    assert calls[0] == high and len(set(calls)) == len(calls) and all(low < c <= high for c in calls), calls
    return calls


@pytest.mark.parametrize(("low", "high", "step"), BOUNDS)
def test_search_without_peaks_bisects_in_log2_probes_after_the_upper_bound(low, high, step):
    intervals = math.ceil((high - low) / step)
    bisection = math.ceil(math.log2(intervals))
    for threshold in _thresholds(low, high):
        calls = _search(threshold, low, high, step)
        if intervals & (intervals - 1) == 0 and _lowest(threshold, low, high, step) < high:
            assert len(calls) == 1 + bisection, (threshold, calls)
        assert len(calls) <= 1 + bisection, (threshold, calls)


@pytest.mark.parametrize(("low", "high", "step"), BOUNDS)
@pytest.mark.parametrize("below", [0, 0.4, 0.99])
def test_a_peak_in_the_requirements_granule_finds_it_in_three_probes(low, high, step, below):
    """The probe at the upper bound reports a peak up to ``below`` granules under the requirement: when it lies in
    the requirement's granule, that granule passes and the one below fails, whatever the range; in the granule
    below, that one fails and the requirement's passes."""
    for threshold in _thresholds(low, high):
        lowest, peak = _lowest(threshold, low, high, step), max(low, threshold - below * step)
        calls = _search(threshold, low, high, step, peak=lambda _, peak=peak: peak)
        if low + step < lowest < high:
            same = _lowest(peak, low, high, step) == lowest
            assert calls == [high, lowest, lowest - step] if same else [high, lowest - step, lowest], (threshold, calls)
        assert len(calls) <= 3, (threshold, calls)


@pytest.mark.parametrize(("low", "high", "step"), BOUNDS)
@pytest.mark.parametrize("above", [1, 2, 5, 17])
def test_a_peak_granules_above_the_requirement_gallops_down_to_it(low, high, step, above):
    """A peak ``above`` granules over the requirement: probes at g − 1, g − 3, g − 7, … pass until one fails, then
    the bracket is bisected: about 2·log2(above) + 3 probes, not a bisection of everything below the peak."""
    for threshold in _thresholds(low, high):
        peak = threshold + above * step
        calls = _search(threshold, low, high, step, peak=lambda _, peak=peak: peak)
        if peak <= high:  # a peak beyond the upper bound is out of range: plain bisection (below)
            assert len(calls) <= 2 * math.ceil(math.log2(above + 1)) + 3, (threshold, calls)


@pytest.mark.parametrize(("low", "high", "step"), BOUNDS)
@pytest.mark.parametrize(("peak", "inside"), [(lambda limit: 10.0**9, False), (lambda limit: math.nan, False),
                                              (lambda limit: -(10.0**9), False), (lambda limit: 0.0, True),
                                              (lambda limit: limit / 2, True)])
def test_a_peak_outside_the_range_or_misleading_still_finds_the_requirement(low, high, step, peak, inside):
    """Out of the range (or not a number): plain bisection; misleading inside it: at most twice bisection's
    probes (galloping to the threshold, then bisecting the last stride)."""
    bisection = math.ceil(math.log2(math.ceil((high - low) / step)))
    for threshold in _thresholds(low, high):
        calls = _search(threshold, low, high, step, peak=peak)
        assert len(calls) <= (1 + 2 * bisection + 1 if inside else 1 + bisection), (threshold, calls)


@pytest.mark.parametrize(("whole_threshold", "expected"), [(1000, 1024), (1150, 1152), (5000, None)])
def test_short_search_probes_are_confirmed_by_whole_runs(whole_threshold, expected):
    """Search probes run a prefix (passing from 1000 MiB); whole runs from the limit found upwards, one granule at a
    time, give the requirement and the step time (or None when even the upper bound fails)."""
    from spiel.memory import measure

    def runner(spec: ProbeSpec, limit: int) -> Probe:
        whole = spec.run_steps is None
        passed = limit >= (whole_threshold if whole else 1000)
        return Probe(limit, passed, "" if passed else "out of memory", steps=spec.run_steps or spec.steps,
                     seconds_per_step=2.0 if whole else 1.0)

    spec = ProbeSpec("model", "lora", "data.jsonl", steps=30)
    record = measure(spec, 0, 2048, 64, search_steps=6, runner=runner)
    assert record["memory_mb"] == expected and record["steps"] == 30 and record["search_steps"] == 6
    short = [p for p in record["probes"] if p["steps"] == 6]
    whole = [p["limit_mb"] for p in record["probes"] if p["steps"] == 30]
    assert len(short) == 1 + 5 and max(p["limit_mb"] for p in short if not p["passed"]) == 960
    assert whole == list(range(1024, (expected or 2048) + 1, 64))
    assert record["seconds_per_step"] == (2.0 if expected else None)


@pytest.mark.parametrize("reason", ["ModuleNotFoundError: No module named 'bitsandbytes'", "timeout"])
def test_a_search_whose_probes_never_run_out_of_memory_is_an_error(reason):
    """Issue 16.6: when every probe fails for another reason the requirement is unknown, not "above the upper
    bound": the job fails and names the probes' error instead of writing a blank Table 3 cell."""
    from spiel.memory import measure

    spec = ProbeSpec("model", "qlora", "data.jsonl", steps=30)
    with pytest.raises(RuntimeError, match=f"none ran out of memory.*{reason.split(':')[0]}"):
        measure(spec, 0, 2048, 512, runner=lambda s, limit: Probe(limit, False, reason))


def test_search_that_fails_at_the_upper_bound_reports_none_without_probing_lower():
    calls: list[int] = []
    search = binary_search(_fake(10**9, calls), 0, 8192, 1024)
    assert search.limit_mb is None and search.passing is None
    assert calls == [8192]
    assert all(not p.passed and p.reason == "out of memory" for p in search.probes)
    with pytest.raises(ValueError, match="bounds"):
        binary_search(_fake(1, []), 100, 100, 1)


@pytest.fixture
def probe_spec(training_setup):
    return ProbeSpec(str(training_setup / "model"), "spiel-ag", str(training_setup / "train.jsonl"), steps=2,
                     device="cpu", settings={"batch_size": 2, "micro_batch_size": 2, "max_length": 32},
                     hp={"lr": 1e-3, "rank": 2, "update_interval": 1, "estimation_steps": 1}, timeout_s=120)


def test_out_of_memory_and_timeout_are_failed_probes_not_errors(probe_spec):
    starved = run_probe(probe_spec, 64)  # 64 MiB of heap: Python cannot even import torch
    assert not starved.passed and starved.reason == "out of memory"
    slow = run_probe(ProbeSpec(**{**probe_spec.__dict__, "timeout_s": 0.5}), 8192)
    assert not slow.passed and slow.reason == "timeout"


def test_cpu_search_on_a_tiny_model_passes_at_its_limit_and_fails_one_step_below(probe_spec):
    search = binary_search(lambda limit: run_probe(probe_spec, limit), 128, 2176, 128)
    assert search.limit_mb is not None
    passing = search.passing
    assert passing.passed and passing.seconds_per_step > 0 and passing.peak_mb > 0
    below = next((p for p in search.probes if p.limit_mb == search.limit_mb - 128), None)
    below = below or run_probe(probe_spec, search.limit_mb - 128)
    # one step below it fails — usually with an out-of-memory message; a C extension whose allocation fails may
    # also end the probe with another error (a CI run saw "SystemError: error return without exception set")
    assert not below.passed and below.reason != "timeout"


def test_a_4bit_cpu_model_does_not_keep_its_checkpoint_mapped(training_setup):
    """The unquantized tensors of a 4-bit CPU model are copied out of the safetensors file, so that the file's
    full-precision weights stop counting against a probe's limit."""
    import gc

    from spiel.adapters import load_base

    checkpoint = str((training_setup / "model" / "model.safetensors").resolve())
    model, _ = load_base(training_setup / "model", load_in_4bit=True, device="cpu")
    gc.collect()
    assert checkpoint not in Path("/proc/self/maps").read_text()
    assert any(type(p).__name__ == "Params4bit" for p in model.parameters())
