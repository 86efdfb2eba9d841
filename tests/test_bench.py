"""The benchmark runs end to end and ends with the ratio lines the issue specifies."""

import re
import subprocess
import sys


def test_bench_prints_ratio_lines():
    args = ["--steps", "7", "--layers", "1", "--hidden", "64", "--intermediate", "128", "--vocab", "256",
            "--seq-len", "32", "--rank", "2", "--reps", "3", "--threads", "1"]
    out = subprocess.run([sys.executable, "-m", "spiel.bench", *args], capture_output=True, text=True, check=True)
    tail = out.stdout.strip().splitlines()[-3:]
    number = r"(\d+\.\d+|nan)"
    assert re.fullmatch(rf"ratio spiel-ag/lora step_time={number} peak_mem=-?{number}", tail[0]), tail
    assert re.fullmatch(rf"ratio spiel-ma/lora step_time={number} peak_mem=-?{number}", tail[1]), tail
    assert re.fullmatch(rf"ratio sampled/dense grad_phi@1%={number}", tail[2]), tail
    for method in ("full", "lora", "spiel-ag", "spiel-ma"):
        assert re.search(rf"^{method}\s+\d+\.\d+", out.stdout, re.MULTILINE), method
