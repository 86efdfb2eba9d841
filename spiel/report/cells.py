"""The cells of Tables 1, 1x and 2: which (size, method, dataset, benchmark) each table has and which evaluation
(dataset ``base`` for untuned models) fills it. Light to import (no pandas, no torch): the workflow plans its jobs
from it; where the files lie is the workflow's ``EVAL`` pattern."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from ..methods import method

BASE = "base"
COMPOSED = "tulu+alpaca"
DATASET_LABELS = {"flan": "Flan v2", "alpaca": "GPT4-Alpaca", "tulu": "Tülu v2", COMPOSED: "Tülu v2 + GPT4-Alpaca"}
BENCHMARK_LABELS = {"mmlu": "MMLU", "gsm": "GSM", "bbh": "BBH", "tydiqa": "TyDiQA", "humaneval": "HumanEval"}
COLUMNS: dict[str, list[tuple[str, str]]] = {
    "table1": [("flan", "mmlu"), ("flan", "tydiqa"), ("alpaca", "humaneval"), ("tulu", "mmlu"), ("tulu", "gsm"),
               ("tulu", "bbh"), ("tulu", "tydiqa"), ("tulu", "humaneval"), (COMPOSED, "humaneval")],
    "table2": [("flan", "mmlu"), ("flan", "tydiqa"), ("alpaca", "humaneval")],
}
COLUMNS["table1x"] = COLUMNS["table1"]
"""Table 1x (beyond the paper): Table 1's columns for the static sparse baselines beside LoRA and SpIEL."""


def column_name(dataset: str, benchmark: str) -> str:
    """The paper CSV's column name, e.g. ``tulu_plus_alpaca_humaneval``."""
    return f"{dataset.replace('+', '_plus_')}_{benchmark}"


@dataclass(frozen=True)
class Cell:
    size: str
    method: str
    dataset: str
    benchmark: str

    @property
    def evaluated_on(self) -> str:
        """The evaluation's dataset folder: ``base`` for untuned models."""
        return BASE if method(self.method).kind == "none" else self.dataset

    @property
    def key(self) -> str:
        """``size/method/dataset/benchmark``: how the table command is told which file is this cell's."""
        return f"{self.size}/{self.method}/{self.dataset}/{self.benchmark}"


def table_columns(table: str, columns: Collection[str] | None = None) -> list[tuple[str, str]]:
    """(dataset, benchmark) of ``table``'s columns in the paper's order, only those named in ``columns`` (paper
    CSV names, e.g. ``flan_mmlu``; None: all); a name that is not a column of ``table`` is an error."""
    if columns is None:
        return list(COLUMNS[table])
    names = {column_name(d, b): (d, b) for d, b in COLUMNS[table]}
    unknown = sorted(set(columns) - set(names))
    if unknown:
        raise ValueError(f"{unknown[0]!r} is not a column of {table}; its columns: {', '.join(names)}")
    return [pair for name, pair in names.items() if name in columns]


def cells(table: str, sizes: list[str], methods: list[str], blank_full: Collection[str] = (),
          columns: Collection[str] | None = None) -> list[Cell]:
    """Every filled cell of ``table`` (of ``columns`` only, if given: :func:`table_columns`): untuned and FullIFT
    rows have no composed column, and FullIFT has none for the ``SIZE/DATASET`` pairs of ``blank_full`` (paper
    Table 1: no 13b FullIFT on Flan v2 or GPT4-Alpaca)."""
    out = []
    for size in sizes:
        for name in methods:
            kind = method(name).kind
            for dataset, benchmark in table_columns(table, columns):
                if dataset == COMPOSED and kind in ("none", "full"):
                    continue
                if kind == "full" and f"{size}/{dataset}" in blank_full:
                    continue
                out.append(Cell(size, name, dataset, benchmark))
    return out
