"""Benchmark: evaluation throughput with and without the protocol's ``prefix_cache`` (issue 20).

``python -m spiel.bench_eval --model DIR --benchmark mmlu --data FILE [--set KEY=VALUE ...]`` loads the model
once and runs the benchmark's evaluation (``spiel.evaluate.run``, lm-eval underneath) alternately with
``prefix_cache`` off (lm-eval's padded batches of ``batch_size``) and on, ``--reps`` times each. It prints the
median items/s of each, their ratio, and whether the two scored every item alike. Log-likelihood benchmarks
(MMLU) reuse each subject's exemplars and each question's context; generation benchmarks (GSM, BBH, TyDiQA) run one
group at a time, each batch from its prompts' cached common prefix, a row leaving the batch when it stops, and with
``--set draft_tokens=K`` each step checking up to K prompt-lookup draft tokens shared by the running rows.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch


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


if __name__ == "__main__":
    main()
