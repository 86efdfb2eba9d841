"""The evaluation benchmark's profile (``python -m spiel.bench_eval --profile``): where an evaluation's time went."""

from __future__ import annotations

import re

import pytest
import torch

from spiel import bench_eval
from spiel.cli import main
from spiel.models import tiny_llama


def test_profile_counts_the_forwards_their_token_positions_and_the_time_in_each_part(llama):
    def evaluate() -> None:
        with torch.no_grad():
            llama(input_ids=torch.zeros(3, 5, dtype=torch.long))
            llama(torch.zeros(1, 7, dtype=torch.long))  # positional, as lm-eval's HFLM calls it

    split = bench_eval.profile(llama, evaluate)
    assert split["forwards"] == 2 and split["positions"] == 3 * 5 + 7
    assert 0 < split["vocabulary"] < split["linear"] < split["seconds"]
    assert 0 < split["attention"] < split["seconds"]
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in llama.modules())  # and the hooks are gone


def test_benchmark_cli_runs_both_ways_and_profiles_them(tmp_path, capsys):
    model, data = tmp_path / "model", tmp_path / "mmlu.jsonl"
    corpus = ["The following are multiple choice questions (with answers) about anatomy. Answer: A B C D"] * 20
    tiny_llama(model, corpus)
    assert main(["prepare-eval", "--benchmark", "mmlu", "--source", "lm-eval", "--out", str(data)]) == 0
    bench_eval.main(["--model", str(model), "--benchmark", "mmlu", "--data", str(data), "--reps", "1", "--profile",
                     "--set", "shots=2", "groups=[anatomy, astronomy]"])
    out = capsys.readouterr().out
    assert "benchmark=mmlu items=6" in out and "same scores on every item: True" in out
    profiled = re.findall(r"prefix_cache=(\w+)\s+profiled [\d.]+ s: (\d+) forwards", out)
    forwards = {cached: int(n) for cached, n in profiled}
    assert forwards["true"] == 6  # one forward per question: its four one-letter answers share it
    bound = re.search(r"outside its linear layers: ([\d.e-]+) s \(uncached, median\) / ([\d.e-]+) s = ([\d.]+)", out)
    assert bound and float(bound[3]) == pytest.approx(float(bound[1]) / float(bound[2]), rel=0.1)
