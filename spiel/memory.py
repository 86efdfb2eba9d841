"""Memory requirement and step time of a training method (App. F, Table 3).

A method's memory requirement is the lowest memory limit at which ``steps`` training steps on Flan v2 complete,
found by binary search at a fixed granularity; its time is the mean step time of the probe at that limit. Every
probe runs in a fresh process: on CUDA the limit is ``torch.cuda.set_per_process_memory_fraction`` (exactly the
paper's mechanism); without CUDA the operating system enforces it on the probe process (``RLIMIT_DATA``: heap
and private writable mappings) from the moment the model is loaded and wrapped — what is then in use counts, but
the loader's transients do not: the CPU loader maps the whole full-precision checkpoint while it quantizes a 4-bit
model (the CUDA loader quantizes tensor by tensor), and that mapping would otherwise set every 4-bit requirement.
The probe's peak resident memory over the training steps is reported beside it. An out-of-memory error, any other
failure, a timeout or a kill is a failed probe.
"""

from __future__ import annotations

import math
import os
import resource
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from . import fresh, provenance
from .signals import EXIT_USER_ERROR

MECHANISMS = {"cuda": "torch.cuda.set_per_process_memory_fraction",
              "cpu": "RLIMIT_DATA (setrlimit), glibc mmap threshold 64 KiB"}
OOM_MARKERS = ("out of memory", "memoryerror", "can't allocate memory", "cannot allocate memory",
               "failed to map segment", "std::bad_alloc")
"""Lower-case fragments of the messages with which an allocation failure ends a probe."""
EXIT_OOM = 3
"""Exit status of a ``memory-probe`` whose training raised an allocation failure."""


def is_out_of_memory(error: BaseException) -> bool:
    """An exception that means an allocation failed (Python, a torch allocator, CUDA)."""
    return isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError" or (
        isinstance(error, RuntimeError) and any(m in str(error).lower() for m in OOM_MARKERS))


@dataclass
class Probe:
    """One probe: did ``steps`` steps complete under ``limit_mb``?"""

    limit_mb: int
    passed: bool
    reason: str = ""
    """Why it failed: "out of memory", "timeout", "killed by signal N" or the error's last line."""
    steps: int | None = None
    """Training steps the probe ran (a search's short probes run a prefix of the run)."""
    seconds_per_step: float | None = None
    step_seconds: list[float] = field(default_factory=list)
    """Each step's time (the mean above is the paper's figure; drop/grow and estimation steps stand out here)."""
    peak_mb: float | None = None
    """CUDA: peak memory allocated by PyTorch; CPU: peak resident set size of the probe process."""
    wall_s: float = 0.0


@dataclass
class Search:
    """Result of ``binary_search``: the lowest passing limit (None: even ``high_mb`` fails) and every probe."""

    low_mb: int
    high_mb: int
    step_mb: int
    limit_mb: int | None = None
    probes: list[Probe] = field(default_factory=list)

    @property
    def passing(self) -> Probe | None:
        return next((p for p in self.probes if p.passed and p.limit_mb == self.limit_mb), None)


def binary_search(probe: Callable[[int], Probe], low_mb: int, high_mb: int, step_mb: int) -> Search:
    """The lowest limit in (``low_mb``, ``high_mb``], a multiple of ``step_mb`` above ``low_mb``, at which
    ``probe`` passes, assuming that passing is monotone in the limit (``low_mb`` is taken to fail).

    The paper's bisection (App. F), guided by what the probes measure: the first probe runs at ``high_mb`` (if it
    fails, nothing lower is tried and ``limit_mb`` is None) and reports its peak memory. From the granule holding
    that peak, g, the search gallops: down (g − 1, g − 3, g − 7, …) while probes pass, up (g + 1, g + 3, …) while
    they fail, and bisects the bracket once a probe crosses the threshold or a step would leave it. App. F notes
    that the requirement may differ from the peak of an unconstrained run, so the peak only chooses where to
    probe; the verdicts decide (a peak in the bounds' own granules starts next to them). A peak in the
    requirement's granule or the one below costs at most 3 probes whatever the range (plain bisection: 1 +
    ⌈log2((high − low) / step)⌉); one k granules off, about 2·log2(k) + 3; no peak, or one outside the range,
    plain bisection.
    """
    if step_mb <= 0 or high_mb <= low_mb:
        raise ValueError(f"memory search bounds: need 0 < step_mb and low_mb < high_mb, got {low_mb}, {high_mb}, "
                         f"{step_mb}")
    search = Search(low_mb, high_mb, step_mb)
    fail, ok = 0, math.ceil((high_mb - low_mb) / step_mb)  # indices: limit = min(low + i·step, high)

    def limit(i: int) -> int:
        return min(low_mb + i * step_mb, high_mb)

    first = probe(high_mb)
    search.probes.append(first)
    if not first.passed:
        return search
    peak = first.peak_mb
    anchor = math.ceil((peak - low_mb) / step_mb) if peak is not None and math.isfinite(peak) else None
    if anchor is not None and 0 <= anchor <= ok:  # low_mb and high_mb are known: start next to them, inside
        anchor = min(max(anchor, 1), ok - 1)
    stride = 0  # galloping from the peak's granule: 0, then ±1, ±2, ±4, … in the direction of the first verdict
    while ok - fail > 1:
        galloping = anchor is not None and fail < anchor + stride < ok
        index = anchor + stride if galloping else (fail + ok) // 2
        result = probe(limit(index))
        search.probes.append(result)
        if result.passed:
            ok = index
        else:
            fail = index
        if galloping:
            direction = -1 if result.passed else 1
            if stride == 0 or (stride > 0) == (direction > 0):  # not crossed yet: step on, twice as far
                anchor, stride = index, direction * max(1, 2 * abs(stride))
            else:
                anchor = None  # crossed: the bracket holds the threshold
        else:
            anchor = None
    search.limit_mb = limit(ok)
    return search


# --- the probe process ---------------------------------------------------------------------------------------

@dataclass
class ProbeSpec:
    """What a probe trains (App. F: Flan v2, rank-64 equivalent, ``steps`` steps) and where."""

    model: str
    method: str
    data: str
    steps: int = 30
    """The run's length: the drop/grow schedule plans for it, and a probe that runs all of it can pass."""
    run_steps: int | None = None
    """Run only the first ``run_steps`` of those steps (the short probes of a search; None: all)."""
    device: str = "cpu"
    settings: dict[str, Any] = field(default_factory=dict)
    """Training settings (spiel.settings.TrainConfig fields)."""
    hp: dict[str, Any] = field(default_factory=dict)
    timeout_s: float = 1800.0
    threads: int = 1


def run_probe(spec: ProbeSpec, limit_mb: int) -> Probe:
    """Run one probe in a fresh ``python -m spiel memory-probe`` process (``spiel.fresh``) under ``limit_mb``."""
    # One malloc arena, no tokenizer thread pool, and every block of 64 KiB or more mapped on its own and returned
    # to the system when freed (glibc otherwise raises that threshold as blocks are freed and serves later tensors
    # from a heap that never shrinks): the limit then bounds the memory live at the peak, not how fragmented the
    # heap got, and does not vary with thread timing.
    env = {**os.environ, "OMP_NUM_THREADS": str(spec.threads), "MALLOC_ARENA_MAX": "1",
           "MALLOC_MMAP_THRESHOLD_": str(64 * 1024), "TOKENIZERS_PARALLELISM": "false"}
    probe = partial(Probe, limit_mb, steps=spec.run_steps or spec.steps)
    start = time.perf_counter()
    try:
        done = fresh.run("memory-probe", asdict(spec), "--limit-mb", str(limit_mb), timeout=spec.timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return probe(False, "timeout", wall_s=time.perf_counter() - start)
    wall = time.perf_counter() - start
    if done.returncode == 0:
        report = fresh.result(done)
        return probe(True, seconds_per_step=report["seconds_per_step"], step_seconds=report["step_seconds"],
                     peak_mb=report["peak_mb"], wall_s=wall)
    # An allocation failure in training exits EXIT_OOM; one before the CLI runs (importing torch) or in native code
    # ends in an uncaught exception or an abort, whose last lines — not paths or values earlier on — say so.
    last = "\n".join(done.stderr.strip().splitlines()[-3:]).lower()
    if done.returncode == EXIT_OOM or (done.returncode != EXIT_USER_ERROR and any(m in last for m in OOM_MARKERS)):
        return probe(False, "out of memory", wall_s=wall)
    if done.returncode < 0:
        return probe(False, f"killed by signal {-done.returncode}", wall_s=wall)
    tail = done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
    return probe(False, tail[0][-300:], wall_s=wall)


def probe_main(spec: ProbeSpec, limit_mb: int) -> dict[str, Any]:
    """Inside the probe process: cap memory (CUDA), train ``spec.steps`` steps, report time and peak memory."""
    import torch

    from .options import build
    from .train import TrainConfig, optimizer_step, prepare

    torch.set_num_threads(spec.threads)
    if spec.device.startswith("cuda"):
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, limit_mb * 2**20 / total))
    config = build(TrainConfig, {**spec.settings, "device": spec.device}, "--set", hp=spec.hp)
    run = prepare(Path(spec.model), spec.method, Path(spec.data), config, total=spec.steps)
    if spec.device == "cpu":
        resource.setrlimit(resource.RLIMIT_DATA, (limit_mb * 2**20, limit_mb * 2**20))
        Path("/proc/self/clear_refs").write_text("5")  # peak resident memory from here on (Linux)
    run.trainable.model.train()
    cache: dict[int, list] = {}
    times = []
    for step in range(spec.run_steps or spec.steps):
        _, micro = run.micro_batches(step % (run.steps_per_epoch * run.config.epochs), cache)
        synchronize(spec.device)
        start = time.perf_counter()
        optimizer_step(run.trainable, micro)
        synchronize(spec.device)
        times.append(time.perf_counter() - start)
    return {"seconds_per_step": sum(times) / len(times), "step_seconds": times, "peak_mb": peak_memory_mb(spec.device)}


def synchronize(device: str) -> None:
    """Wait for the device's queued work (CUDA), so that wall-clock times cover it."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def peak_memory_mb(device: str, baseline_kb: int = 0) -> float:
    """CUDA: peak memory allocated by PyTorch; CPU: this process's peak resident set size above ``baseline_kb``."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    return (resident_peak_kb() - baseline_kb) / 1024


def resident_peak_kb() -> int:
    """This process's peak resident set size in KiB (``VmHWM``: resettable through ``/proc/self/clear_refs``)."""
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0])


def measure(spec: ProbeSpec, low_mb: int, high_mb: int, step_mb: int, search_steps: int | None = None,
            runner: Callable[[ProbeSpec, int], Probe] = run_probe) -> dict[str, Any]:
    """The memory requirement and step time of ``spec`` (App. F), with every probe, as a JSON-ready record.

    With ``search_steps`` below ``spec.steps``, the binary search's probes run only the first ``search_steps`` steps
    of the run (same schedule, same batches). A prefix of a run needs no more memory than the whole, so their
    lowest passing limit is a lower bound: whole-run probes from there upwards, one granule at a time, find the
    lowest limit at which all ``spec.steps`` steps complete, and the first that passes gives the step time.
    ``runner`` runs one probe (tests pass a fake).
    """
    start = time.perf_counter()
    short = replace(spec, run_steps=search_steps) if search_steps and search_steps < spec.steps else spec
    search = binary_search(lambda limit: runner(short, limit), low_mb, high_mb, step_mb)
    probes, limit, passing = list(search.probes), search.limit_mb, search.passing
    if short is not spec and limit is not None:
        passing = None
        for candidate in sorted({*range(limit, high_mb, step_mb), high_mb}):
            probes.append(runner(spec, candidate))
            if probes[-1].passed:
                passing = probes[-1]
                break
        limit = passing.limit_mb if passing else None
    if limit is None and not any(p.reason == "out of memory" for p in probes):
        reasons = "; ".join(sorted({f"{p.limit_mb} MiB: {p.reason}" for p in probes})[:3])
        raise RuntimeError(f"memory search for {spec.method}: no probe passed and none ran out of memory, so the "
                           f"requirement is unknown (not above {high_mb} MiB); the probes failed with: {reasons}")
    return {"method": spec.method, "gradient_checkpointing": bool(spec.settings.get("gradient_checkpointing")),
            "device": provenance.device(spec.device),
            "mechanism": MECHANISMS["cpu" if spec.device == "cpu" else "cuda"],
            "memory_mb": limit, "seconds_per_step": passing.seconds_per_step if passing else None,
            "peak_mb": passing.peak_mb if passing else None, "steps": spec.steps,
            "search_steps": short.run_steps or spec.steps,
            "bounds_mb": {"low": low_mb, "high": high_mb, "step": step_mb},
            "probes": [asdict(p) for p in probes], "wall_s": time.perf_counter() - start,
            "spec": asdict(spec)}
