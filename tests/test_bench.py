"""The benchmark runs end to end and ends with the ratio lines the issue specifies."""

import re
import subprocess
import sys


def test_bench_prints_ratio_lines():
    args = ["--steps", "7", "--layers", "1", "--hidden", "64", "--intermediate", "128", "--vocab", "256",
            "--seq-len", "32", "--rank", "2", "--reps", "3", "--threads", "1"]
    out = subprocess.run([sys.executable, "-m", "spiel.bench", *args], capture_output=True, text=True, check=True)
    tail = out.stdout.strip().splitlines()[-11:]
    number = r"(\d+\.\d+|nan)"
    pairs = [(m, b) for m in ("spiel-ag", "spiel-ma", "shira", "supertuning") for b in ("lora", "floor")]
    for line, (method, base) in zip(tail, pairs, strict=False):
        assert re.fullmatch(rf"ratio {method}/{base} step_time={number} peak_mem=-?{number}", line), tail
    assert re.fullmatch(rf"ratio full/floor step_time={number}", tail[8]), tail
    assert re.fullmatch(rf"ratio lora/floor step_time={number}", tail[9]), tail
    assert re.fullmatch(rf"ratio sampled/dense grad_phi@1%={number}", tail[10]), tail
    counts = {m: int(c.replace(",", "")) for m, c in re.findall(r"^([a-z-]+)\s+\d+\.\d+.*\s([\d,]+)$", out.stdout,
                                                                   re.MULTILINE)}
    assert set(counts) == {"floor", "full", "lora", "spiel-ag", "spiel-ma", "shira", "supertuning"}, out.stdout
    for method in ("spiel-ag", "spiel-ma", "shira", "supertuning"):  # the same budget as LoRA's (within rounding)
        assert abs(counts[method] - counts["lora"]) <= 0.01 * counts["lora"], counts
    assert counts["floor"] == 0


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


def test_serving_benchmark_prints_its_ratio_lines():
    args = ["serve", "--layers", "1", "--big-layers", "1", "--big-rank", "4", "--batch", "4", "--seq-len", "8",
            "--adapters", "1", "2", "--export-ranks", "2", "8", "--reps", "1", "--threads", "1"]
    out = subprocess.run([sys.executable, "-m", "spiel.bench", *args], capture_output=True, text=True,
                         check=True).stdout
    tail = out.strip().splitlines()[-7:]
    number = r"\d+\.\d+"
    names = ["spiel/lora file_bytes_per_param", "spiel-serving/lora file_bytes_per_param",
             "shira/lora file_bytes_per_param", "spiel/lora switch_s@135m", "spiel/lora switch_s@7b-stack",
             "spiel/lora mixed_tokens_per_s@1", "spiel/lora mixed_tokens_per_s@2"]
    for line, name in zip(tail, names, strict=True):
        assert re.fullmatch(rf"ratio {name}={number}", line), tail
    errors = [float(e) for e in re.findall(r"ΔW relative error (\d+\.\d+)", out)]
    assert len(errors) == 2 and errors[0] > errors[1]  # the export's error falls as r grows
