"""Benchmark: decontamination of a Tülu v2-sized training set against the paper's evaluation data (issue 16.9).

``python -m spiel.bench_data`` builds, in memory, a synthetic training set of Tülu v2's size and shape (326,154
conversations; a ShareGPT-like third of 2–8 turns, the rest one exchange; message lengths log-normal, medians
80/150 words) and evaluation rows of the paper's benchmarks' counts and lengths (MMLU test/val/dev, GSM, BBH,
TyDiQA GoldP, HumanEval), with a known number of training conversations that quote a 20-word slice of an
evaluation item. It times the n-gram index and the decontamination pass and prints peak memory. ``--scale``
shrinks both sets (tests).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from .decontamination import NgramIndex, conversation_text, without_overlaps
from .memory import resident_peak_kb

TULU_CONVERSATIONS = 326_154
EVAL_ROWS = {"mmlu": (15_858, 60), "gsm": (1_319, 100), "bbh": (6_511, 150), "tydiqa": (5_077, 130),
             "humaneval": (164, 120)}
"""Benchmark → (items, median words per item) of the paper's evaluation data (App. B)."""


class Words:
    """Random text over a Zipf-distributed vocabulary (so that common words repeat, as in real text)."""

    def __init__(self, rng: np.random.Generator, vocabulary: int = 50_000) -> None:
        self.rng, self.vocab = rng, [f"w{i}" for i in range(vocabulary)]
        self.size = vocabulary

    def text(self, median: float) -> str:
        count = max(1, int(self.rng.lognormal(np.log(median), 0.8)))
        ids = np.minimum(self.rng.zipf(1.2, count) - 1, self.size - 1)
        return " ".join(map(self.vocab.__getitem__, ids.tolist()))


def synthetic_sets(scale: float, seed: int = 0, quoted_fraction: float = 0.005):
    """(evaluation rows, training conversations, number of conversations that quote an evaluation item)."""
    rng = np.random.default_rng(seed)
    words = Words(rng)
    evals = [{"question": words.text(median), "group": name}
             for name, (count, median) in EVAL_ROWS.items() for _ in range(max(1, int(count * scale)))]
    conversations, quoted = [], 0
    for _ in range(max(1, int(TULU_CONVERSATIONS * scale))):
        turns = int(rng.integers(2, 9)) if rng.random() < 1 / 3 else 1
        messages = []
        for _turn in range(turns):
            messages += [{"role": "user", "content": words.text(80)},
                         {"role": "assistant", "content": words.text(150)}]
        if rng.random() < quoted_fraction:
            item = evals[int(rng.integers(len(evals)))]["question"].split()
            if len(item) >= 20:
                start = int(rng.integers(len(item) - 19))
                messages[0]["content"] += " " + " ".join(item[start:start + 20])
                quoted += 1
        conversations.append({"messages": messages})
    return evals, conversations, quoted


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m spiel.bench_data", description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of Tülu v2's size (default: all of it)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    evals, conversations, quoted = synthetic_sets(args.scale, args.seed)
    made = time.perf_counter()
    words = sum(len(conversation_text(c).split()) for c in conversations)
    index = NgramIndex.from_rows(evals)
    indexed = time.perf_counter()
    dropped = len(conversations) - len(without_overlaps(index, conversations))
    done = time.perf_counter()
    print(f"conversations={len(conversations)} words={words} eval_items={len(evals)} eval_ngrams={len(index)} "
          f"quoted={quoted}")
    print(f"generate_s={made - start:.1f} index_s={indexed - made:.2f} decontaminate_s={done - indexed:.1f} "
          f"conversations_per_s={len(conversations) / (done - indexed):.0f} "
          f"peak_rss_mb={resident_peak_kb() / 1024:.0f}")
    print(f"dropped={dropped} (quoted {quoted}; the rest are chance 13-gram matches of the synthetic text)")


if __name__ == "__main__":
    main()
