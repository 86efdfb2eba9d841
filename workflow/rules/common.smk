"""Helpers only: paths, the cells that Tables 1 and 2 need, and the settings each job receives."""

import json
import shlex

from spiel.methods import method
from spiel.report.tables import BASE, COMPOSED, cells

SIZES = list(config["models"])
BENCHMARKS = ["mmlu", "gsm", "bbh", "tydiqa", "humaneval"]
CACHE = config.get("cache", "resources/archives")
ENV = "../../envs/spiel.yaml"

MODEL = "resources/models/{size}"
EVAL_DATA = "results/data/eval/{benchmark}.jsonl"
TRAIN_DATA = "results/data/train/{dataset}.jsonl"
ADAPTER = "results/adapters/{size}/{dataset}/{method}"
EVAL = "results/eval/{size}/{dataset}/{method}/{benchmark}.json"


wildcard_constraints:
    size="|".join(SIZES),
    dataset="flan|alpaca|tulu",
    benchmark="|".join(BENCHMARKS),
    method="[a-z0-9-]+",


def key_values(mapping):
    """``KEY=VALUE`` arguments for the CLI's --set / --hp options: values as JSON (one line, read back as YAML),
    shell-quoted."""
    return " ".join(shlex.quote(f"{k}={json.dumps(v)}") for k, v in mapping.items())


TRAINING_SETTINGS = key_values({**config.get("training", {}), "seed": config["seed"], "dtype": config["dtype"]})
"""The one training loop's settings (App. B), the same for every training job."""


def hyperparameters(wildcards, name=None, **overrides):
    """The method's hyperparameters: top-level values, overridden by models.<size>.hyperparameters, then by
    ``overrides`` (ablations)."""
    name = name or wildcards.method
    base = config.get("hyperparameters", {}).get(name, {})
    per_size = config["models"][wildcards.size].get("hyperparameters", {}).get(name, {})
    merged = {**base, **per_size, **overrides}
    if "lr" not in merged:
        raise ValueError(f"hyperparameters.{name}.lr: no learning rate configured")
    return key_values(merged)


def table_inputs(table):
    """The evaluation files behind every cell of ``table``."""
    methods = config.get("tables", {}).get(table)
    return [str(cell.path()) for cell in cells(table, SIZES, methods)]
