"""Benchmark: evaluation throughput with and without the protocol's ``prefix_cache`` (issue 20).

``python -m spiel.bench_eval --model DIR --benchmark mmlu --data FILE [--set KEY=VALUE ...]`` loads the model
once and runs the benchmark's evaluation (``spiel.evaluate.run``, lm-eval underneath) alternately with
``prefix_cache`` off (lm-eval's padded batches of ``batch_size``) and on, ``--reps`` times each. It prints the
median items/s of each, their ratio, and whether the two scored every item alike. Log-likelihood benchmarks
(MMLU) reuse each subject's exemplars and each question's context; generation benchmarks (GSM, BBH, TyDiQA) run one
group at a time, each batch from its prompts' cached common prefix, a row leaving the batch when it stops, and with
``--set draft_tokens=K`` each step checking up to K prompt-lookup draft tokens shared by the running rows.

``--profile`` adds one more run each way under cProfile and prints where its time went: the model's forwards and
the token positions they ran, the seconds in linear layers (the vocabulary projection among them) and in attention,
and the ratio that would remain if everything in the cached run but its linear layers took no time (the median
unprofiled uncached seconds over the cached run's seconds in linear layers).
"""

from __future__ import annotations

import argparse
import cProfile
import math
import pstats
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch


def _builtin_seconds(profiler: cProfile.Profile, suffix: str) -> float:
    """Seconds inside the profiled C function whose name ends with ``suffix`` (NaN where none ran)."""
    times = [stats[2] for (_, _, name), stats in pstats.Stats(profiler).stats.items()
             if name.startswith("<built-in method") and name.endswith(suffix + ">")]
    return sum(times) if times else math.nan


def _timed(modules: list[torch.nn.Module], spent: dict[str, float], key: str) -> list:
    """Hooks that add the seconds each of ``modules``' forwards takes to ``spent[key]``; returns their handles."""
    started: list[float] = []

    def starts(module, args) -> None:
        started.append(time.perf_counter())

    def ends(module, args, output) -> None:
        spent[key] += time.perf_counter() - started.pop()

    return [hook for m in modules for hook in (m.register_forward_pre_hook(starts), m.register_forward_hook(ends))]


def profile(model: torch.nn.Module, evaluate: Callable[[], object]) -> dict[str, float]:
    """One ``evaluate()`` under cProfile: its seconds, the model's forwards and the token positions they ran, the
    seconds in its linear layers (``linear``; ``vocabulary``: the output projection, one of them) and in attention
    (torch's scaled-dot-product kernel; NaN where the model attends otherwise)."""
    counts = {"forwards": 0, "positions": 0}
    spent = {"linear": 0.0, "vocabulary": 0.0}

    def count(module, args, kwargs) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        counts["forwards"] += 1
        counts["positions"] += (ids if ids is not None else kwargs["inputs_embeds"][..., 0]).numel()

    linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    hooks = [model.register_forward_pre_hook(count, with_kwargs=True), *_timed(linear, spent, "linear"),
             *_timed([model.get_output_embeddings()], spent, "vocabulary")]
    profiler = cProfile.Profile()
    start = time.perf_counter()
    try:
        profiler.runcall(evaluate)
    finally:
        for hook in hooks:
            hook.remove()
    return {"seconds": time.perf_counter() - start, **counts, **spent,
            "attention": _builtin_seconds(profiler, "scaled_dot_product_attention")}


def main(argv: list[str] | None = None) -> None:
    from .adapters import load_base
    from .cli import _key_values
    from .evaluate.lm import ProtocolLM
    from .evaluate.protocol import BENCHMARKS, protocol
    from .evaluate.run import run

    p = argparse.ArgumentParser(prog="python -m spiel.bench_eval", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="local Hugging Face model folder")
    p.add_argument("--benchmark", required=True, choices=BENCHMARKS)
    p.add_argument("--data", required=True, help="prepared JSONL from `prepare-eval`")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="protocol overrides (e.g. shots=2)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--profile", action="store_true", help="one more run each way under cProfile: where the time went")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    proto = protocol(args.benchmark, _key_values(args.set), "--set")
    model, tokenizer = load_base(args.model, torch.float32)
    lm = ProtocolLM(pretrained=model.eval(), tokenizer=tokenizer, batch_size=proto.batch_size)
    lm.draft_tokens = proto.draft_tokens  # used only with prefix_cache

    def truncate(text: str, n: int) -> str:
        return tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)[:n])

    speed: dict[bool, list[float]] = {False: [], True: []}
    scores: dict[bool, list] = {}
    for _ in range(args.reps):
        for cached in (False, True):
            lm.prefix_cache = cached
            result = run(lm, Path(args.data), proto, truncate)
            speed[cached].append(result["items_per_second"])
            scores[cached] = [(s["doc_id"], s["score"]) for s in result["samples"]]
    n = len(scores[True])
    print(f"benchmark={args.benchmark} items={n} shots={proto.shots} batch_size={proto.batch_size} "
          f"threads={args.threads} reps={args.reps}")
    for cached in (False, True):
        print(f"prefix_cache={str(cached).lower():5s} median items/s {statistics.median(speed[cached]):8.3f} "
              f"(runs: {', '.join(f'{x:.3f}' for x in speed[cached])})")
    ratio = statistics.median(speed[True]) / statistics.median(speed[False])
    print(f"ratio cached/uncached items_per_second={ratio:.2f}")
    print(f"same scores on every item: {scores[True] == scores[False]}")
    if args.profile:
        split = {}
        for cached in (False, True):
            lm.prefix_cache = cached
            split[cached] = profile(model, lambda: run(lm, Path(args.data), proto, truncate))
            s = split[cached]
            print(f"prefix_cache={str(cached).lower():5s} profiled {s['seconds']:.1f} s: {s['forwards']} forwards, "
                  f"{s['positions']} token positions; linear layers {s['linear']:.1f} s (vocabulary projection "
                  f"{s['vocabulary']:.1f} s), attention {s['attention']:.1f} s")
        uncached_seconds = n / statistics.median(speed[False])  # unprofiled: cProfile slows Python-heavy runs
        print(f"ratio if the cached run took no time outside its linear layers: {uncached_seconds:.4g} s "
              f"(uncached, median) / {split[True]['linear']:.4g} s = {uncached_seconds / split[True]['linear']:.2f}")


if __name__ == "__main__":
    main()
