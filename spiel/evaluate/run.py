"""Run one benchmark through lm-eval and write the result file (metric, standard error, per-sample log).

The task is the project's own YAML (``spiel/evaluate/tasks/<benchmark>.yaml``) completed at run time with
the prepared data file and the protocol's hooks; the model is any lm-eval ``LM`` — ``HFLM`` over an in-memory
Hugging Face model for real runs, a scripted ``LM`` in tests.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any
from unittest import mock

import yaml

from ..provenance import package_versions
from ..report.stats import standard_error
from . import stops
from .prompts import Truncate, build_docs, score
from .protocol import Protocol
from .sandbox import require_isolation

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

TASKS = Path(__file__).parent / "tasks"
MACRO = {"bbh", "tydiqa"}
"""Benchmarks whose score is the mean over groups (BBH tasks, TyDiQA languages); the rest average items."""
METRIC = {"mmlu": "accuracy", "gsm": "accuracy", "bbh": "accuracy", "tydiqa": "f1", "humaneval": "pass@1"}


def whitespace_truncate(text: str, n: int) -> str:
    """Keep the first ``n`` whitespace-separated words (used when no tokenizer is at hand)."""
    return " ".join(text.split()[:n])


def _process_docs(dataset, proto: Protocol, truncate: Truncate):
    from datasets import Dataset

    docs = build_docs(list(dataset), proto, truncate)
    if not docs:
        raise ValueError(f"{proto.benchmark}: no '{proto.split}' items in the data (groups={list(proto.groups)})")
    return Dataset.from_list(docs)


def _process_results(doc: dict, results: list, proto: Protocol) -> dict[str, Any]:
    outputs = results[0] if results and isinstance(results[0], list) else list(results)  # n samples, one request
    if proto.stop_after_text:
        outputs = [stops.truncate(output, proto.stop, after_text=True) for output in outputs]
    value, extracted = score(doc, outputs, proto)
    return {"score": value, "extracted": json.dumps(extracted)}


def _count(items: list) -> int:
    return len(items)


def make_task(data_file: Path, proto: Protocol, truncate: Truncate):
    """The benchmark's lm-eval task over ``data_file`` (prepared JSONL) under ``proto``."""
    from lm_eval.api.task import ConfigurableTask

    config = yaml.safe_load((TASKS / f"{proto.benchmark}.yaml").read_text())
    config["dataset_kwargs"] = {"data_files": {"train": str(data_file)}}
    config["process_docs"] = functools.partial(_process_docs, proto=proto, truncate=truncate)
    if config["output_type"] == "generate_until":
        config["generation_kwargs"] = proto.generation_kwargs()
        config["repeats"] = proto.n_samples
        # keep all n samples (lm-eval's default filter would keep only the first)
        config["filter_list"] = [{"name": "all", "filter": [{"function": "take_first_k", "k": proto.n_samples}]}]
        config["process_results"] = functools.partial(_process_results, proto=proto)
        config["metric_list"].append({"metric": "extracted", "aggregation": _count, "higher_is_better": True})
    return ConfigurableTask(config=config)


def mean_stderr(scores: list[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (0 for a single score)."""
    return sum(scores) / len(scores), standard_error(scores) or 0.0


def aggregate(benchmark: str, samples: list[dict]) -> dict[str, Any]:
    """Benchmark score and standard error in percent: item mean, or mean over groups for BBH and TyDiQA
    (its standard error combines the groups' as √(Σ se²)/G)."""
    groups: dict[str, list[float]] = defaultdict(list)
    for sample in samples:
        groups[sample["group"]].append(sample["score"])
    per_group = {g: mean_stderr(s) for g, s in sorted(groups.items())}
    if benchmark in MACRO:
        value = sum(m for m, _ in per_group.values()) / len(per_group)
        stderr = math.sqrt(sum(se**2 for _, se in per_group.values())) / len(per_group)
    else:
        value, stderr = mean_stderr([s["score"] for s in samples])
    return {"value": 100 * value, "stderr": 100 * stderr, "n_items": len(samples),
            "groups": {g: {"value": 100 * m, "stderr": 100 * se, "n_items": len(groups[g])}
                       for g, (m, se) in per_group.items()}}


def _sample_log(raw: dict, proto: Protocol) -> dict[str, Any]:
    doc = raw["doc"]
    record = {"doc_id": raw["doc_id"], "group": doc["group"], "prompt": raw["arguments"][0][0],
              "target": doc["target"]}
    if "acc" in raw:  # multiple choice: the letter with the highest log-likelihood
        loglikelihoods = [float(r[0][0]) for r in raw["resps"]]
        record.update(output=loglikelihoods, extracted="ABCD"[loglikelihoods.index(max(loglikelihoods))],
                      score=float(raw["acc"]))
    else:
        outputs = list(raw["resps"][0])
        if proto.stop_after_text:  # the completion as scored
            outputs = [stops.truncate(output, proto.stop, after_text=True) for output in outputs]
        record.update(output=outputs if len(outputs) > 1 else outputs[0], extracted=json.loads(raw["extracted"]),
                      score=float(raw["score"]))
    return record


def _no_environment_report(results: dict) -> None:
    """Stands in for lm-eval's ``add_env_info``, which runs torch's environment report (``pip list``, ``nvidia-smi``
    and more: ~1 s a benchmark here) for result fields this project does not keep (``package_versions`` records
    what it reports)."""


def run(lm, data_file: Path, proto: Protocol, truncate: Truncate = whitespace_truncate) -> dict[str, Any]:
    """Evaluate ``lm`` on one benchmark; returns the result record (metric, standard error, per-sample log)."""
    from lm_eval import evaluator, simple_evaluate
    from lm_eval.tasks import TaskManager

    sandbox = None
    if proto.benchmark == "humaneval":  # refuse before generating anything, not after
        isolated = require_isolation(proto.confirm_run_unsafe_code)
        sandbox = "bubblewrap" if isolated else "unisolated (confirm_run_unsafe_code)"
    start = time.perf_counter()
    task = make_task(data_file, proto, truncate)
    # our task objects are built directly; an empty manager skips indexing lm-eval's ~14k task YAMLs (~10 s)
    with mock.patch.object(evaluator, "add_env_info", _no_environment_report):
        output = simple_evaluate(model=lm, tasks=[task], task_manager=TaskManager(include_defaults=False),
                                 log_samples=True, bootstrap_iters=0, random_seed=proto.seed,
                                 numpy_random_seed=proto.seed, torch_random_seed=proto.seed,
                                 fewshot_random_seed=proto.seed, verbosity="WARNING")
    samples = [_sample_log(raw, proto) for raw in output["samples"][task.task_name]]
    seconds = time.perf_counter() - start
    record = {"benchmark": proto.benchmark, "metric": METRIC[proto.benchmark], **aggregate(proto.benchmark, samples),
              "protocol": proto.settings(), "data_file": str(data_file), "seconds": seconds,
              "items_per_second": len(samples) / seconds, "versions": package_versions(), "samples": samples}
    if sandbox:
        record["sandbox"] = sandbox
    if proto.benchmark != "mmlu":  # generation: how many completions are blank (nothing to score)
        completions = [o for s in samples for o in (s["output"] if isinstance(s["output"], list) else [s["output"]])]
        record["empty_completions"] = {"empty": sum(not o.strip() for o in completions), "of": len(completions)}
    return record
