"""The benchmark runs end to end and ends with the ratio lines the issue specifies."""

import re
import subprocess
import sys


def test_bench_prints_ratio_lines():
    args = ["--steps", "7", "--layers", "1", "--hidden", "64", "--intermediate", "128", "--vocab", "256",
            "--seq-len", "32", "--rank", "2", "--reps", "3", "--threads", "1"]
    out = subprocess.run([sys.executable, "-m", "spiel.bench", *args], capture_output=True, text=True, check=True)
    tail = out.stdout.strip().splitlines()[-7:]
    number = r"(\d+\.\d+|nan)"
    for line, (method, base) in zip(tail, [("spiel-ag", "lora"), ("spiel-ag", "floor"), ("spiel-ma", "lora"),
                                           ("spiel-ma", "floor")], strict=False):
        assert re.fullmatch(rf"ratio {method}/{base} step_time={number} peak_mem=-?{number}", line), tail
    assert re.fullmatch(rf"ratio full/floor step_time={number}", tail[4]), tail
    assert re.fullmatch(rf"ratio lora/floor step_time={number}", tail[5]), tail
    assert re.fullmatch(rf"ratio sampled/dense grad_phi@1%={number}", tail[6]), tail
    for method in ("floor", "full", "lora", "spiel-ag", "spiel-ma"):
        assert re.search(rf"^{method}\s+\d+\.\d+", out.stdout, re.MULTILINE), method


def test_generation_benchmark_compares_the_two_4bit_paths():
    args = ["--layers", "1", "--hidden", "64", "--intermediate", "128", "--heads", "4", "--kv-heads", "2",
            "--vocab", "256", "--prompt", "8", "--tokens", "3", "--reps", "1", "--threads", "1"]
    out = subprocess.run([sys.executable, "-m", "spiel.bench_generate", *args], capture_output=True, text=True,
                         check=True).stdout
    assert re.search(r"^max \|logit difference\| = 0\.00e\+00$", out, re.MULTILINE), out  # the same computation
    assert re.search(r"^ratio cached-merge/merge-per-token tokens_per_s=\d+\.\d+$", out, re.MULTILINE), out


def test_decontamination_benchmark_drops_exactly_the_quoting_conversations():
    out = subprocess.run([sys.executable, "-m", "spiel.bench_data", "--scale", "0.01"], capture_output=True,
                         text=True, check=True).stdout
    quoted = int(re.search(r"quoted=(\d+)", out).group(1))
    assert quoted > 0 and re.search(rf"^dropped={quoted} ", out, re.MULTILINE), out
