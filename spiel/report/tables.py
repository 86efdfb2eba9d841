"""Tables 1 and 2 of the paper from our evaluation JSON files, every cell traceable to its file.

Rows are size × method (the paper's labels), columns are (training dataset, benchmark) pairs named as in the
paper's CSVs (``config/paper_results``). The untuned rows (Original, Original (4-bit)) take every column from
the base model's evaluation; the Tülu v2 ⊕ GPT4-Alpaca column composes the two PEFT adapters (§5) and is empty
for Original and FullIFT, as in the paper.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Collection
from pathlib import Path

import pandas as pd

from ..methods import method
from .cells import BENCHMARK_LABELS, COLUMNS, DATASET_LABELS, cells, column_name


def size_dataset(key: str, sizes: Collection[str], option: str) -> tuple[str, str]:
    """``SIZE/DATASET`` split and checked against the table's sizes and the training datasets."""
    size, _, dataset = key.partition("/")
    if size not in sizes or dataset not in ("flan", "alpaca", "tulu"):
        raise ValueError(f"{option} {key!r}: expected SIZE/DATASET with SIZE in {sorted(sizes)} and DATASET one of "
                         "flan, alpaca, tulu")
    return size, dataset


def fullift_notes(table: str, blank_full: Collection[str], released: dict[str, str]) -> list[str]:
    """Lines under ``table`` saying which of its FullIFT cells are blank and which come from released models."""
    columns = {dataset for dataset, _ in COLUMNS[table]}
    notes = [f"FullIFT {size} on {DATASET_LABELS[dataset]}: evaluated from {citation}, not trained here."
             for key, citation in sorted(released.items()) for size, dataset in [key.split("/")]
             if dataset in columns]
    blank = sorted(tuple(key.split("/")) for key in blank_full if key.split("/")[1] in columns)
    if blank:
        pairs = ", ".join(f"{size} {DATASET_LABELS[dataset]}" for size, dataset in blank)
        notes.append(f"FullIFT blank for {pairs}: not trained, as in the paper's Table 1 (full fine-tuning at that "
                     "size does not fit one 80 GB GPU).")
    return notes


def read_result(path: str | Path, benchmark: str) -> dict:
    """The evaluation result of ``benchmark`` at ``path``: its score and standard error finite and in [0, 100]; a
    missing, foreign or impossible file is an error naming it (never an empty cell that reads as "not run")."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no evaluation result (its evaluation job has not run)") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError(f"{path}: not an evaluation result (JSON)") from None
    found = record.get("benchmark") if isinstance(record, dict) else None
    if found != benchmark:
        raise ValueError(f"{path}: a result of benchmark {found!r} where {benchmark!r} belongs")
    for key in ("value", "stderr"):
        number = record.get(key)
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not 0 <= number <= 100:
            raise ValueError(f"{path}: {key}={number!r} is not a score in [0, 100]")  # NaN fails the range too
    return record


def seed_results(files: dict[str, str | Path], option: str = "--result") -> dict[str, list[tuple[int, Path]]]:
    """``KEY/SEED`` → file arguments grouped by key, each key's (seed, file) pairs in seed order."""
    grouped: dict[str, list[tuple[int, Path]]] = defaultdict(list)
    for name, path in files.items():
        key, _, seed = name.rpartition("/")
        if not key or not seed.isdigit():
            raise ValueError(f"{option} {name}={path}: expected KEY/SEED=FILE with an integer SEED")
        grouped[key].append((int(seed), Path(path)))
    return {key: sorted(runs) for key, runs in grouped.items()}


def spread(values: list[float], seeds: list[int]) -> dict:
    """Mean, sample standard deviation (None for one run) and count of a cell's scores over seeds."""
    return {"seeds": seeds, "values": values, "mean": statistics.fmean(values),
            "sd": statistics.stdev(values) if len(values) > 1 else None, "n": len(values)}


def build(table: str, sizes: list[str], methods: list[str], files: dict[str, str | Path],
          blank_full: Collection[str] = ()) -> tuple[pd.DataFrame, dict[str, list[str]], dict[str, dict]]:
    """(table, sources, spreads) from ``files`` (``CELL/SEED`` → evaluation file, ``CELL`` as ``Cell.key``): the
    table as in the paper's CSV, each cell the mean over its seeds; for each ``size/method/column`` its files and
    the spread of its scores over seeds. A cell without a file, or a file of no cell, is an error naming it."""
    runs = seed_results(files)
    expected = cells(table, sizes, methods, blank_full)
    unknown = sorted(set(runs) - {cell.key for cell in expected})
    if unknown:
        raise ValueError(f"--result {unknown[0]}/…: not a cell of {table} (SIZE/METHOD/DATASET/BENCHMARK)")
    frame = pd.DataFrame([{"size": s, "method": method(m).label} for s in sizes for m in methods])
    for dataset, benchmark in COLUMNS[table]:
        frame[column_name(dataset, benchmark)] = float("nan")
    sources, spreads = {}, {}
    for cell in expected:
        if cell.key not in runs:
            raise ValueError(f"{cell.key}: no evaluation file given (--result {cell.key}/SEED=FILE)")
        values = [read_result(path, cell.benchmark)["value"] for _, path in runs[cell.key]]
        label, column = method(cell.method).label, column_name(cell.dataset, cell.benchmark)
        key = f"{cell.size}/{label}/{column}"
        spreads[key] = spread(values, [seed for seed, _ in runs[cell.key]])
        frame.loc[(frame["size"] == cell.size) & (frame["method"] == label), column] = round(spreads[key]["mean"], 2)
        sources[key] = [str(path) for _, path in runs[cell.key]]
    return frame, sources, spreads


def markdown(frame: pd.DataFrame, notes: Collection[str] = (), spreads: dict[str, dict] | None = None) -> str:
    """The table as Markdown with readable headers (dataset / benchmark), empty cells left blank, a cell trained
    with several seeds as mean ± standard deviation (``spreads``, keyed ``size/method/column``), ``notes`` below."""
    spreads = spreads or {}
    headers = ["Size", "Method"]
    for column in frame.columns[2:]:
        dataset, benchmark = column.rsplit("_", 1)
        headers.append(f"{DATASET_LABELS[dataset.replace('_plus_', '+')]} {BENCHMARK_LABELS[benchmark]}")
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in frame.itertuples(index=False):
        values = [str(row[0]), str(row[1])]
        for column, value in zip(frame.columns[2:], row[2:], strict=True):
            sd = spreads.get(f"{row[0]}/{row[1]}/{column}", {}).get("sd")
            values.append("" if pd.isna(value) else f"{value:.1f}" + ("" if sd is None else f" ± {sd:.1f}"))
        lines.append("| " + " | ".join(values) + " |")
    counts = sorted({s["n"] for s in spreads.values()})
    if counts and counts != [1]:
        seeds = sorted({seed for s in spreads.values() for seed in s["seeds"]})
        notes = [f"Cells: mean ± standard deviation over n = {'/'.join(map(str, counts))} training seeds "
                 f"({', '.join(map(str, seeds))}).", *notes]
    return "\n".join(lines) + "\n" + "".join(f"\n{note}\n" for note in notes)


def build_table5(files: dict[str, str | Path]) -> tuple[pd.DataFrame, dict[str, str]]:
    """Table 5 from ``files`` (``SCHEDULE/S/BENCHMARK`` → evaluation file): one row per (schedule, S), in the
    order given, with MMLU and TyDiQA; a row missing either benchmark is an error naming it."""
    rows: dict[tuple[str, int], dict] = {}
    sources = {}
    for key, path in files.items():
        schedule, _, rest = key.partition("/")
        interval, _, benchmark = rest.partition("/")
        if not interval.isdigit() or benchmark not in ("mmlu", "tydiqa"):
            raise ValueError(f"--result {key}={path}: expected SCHEDULE/S/BENCHMARK=FILE (BENCHMARK mmlu or tydiqa)")
        row = rows.setdefault((schedule, int(interval)), {"schedule": schedule, "update_every_steps": int(interval)})
        row[benchmark] = round(read_result(path, benchmark)["value"], 2)
        sources[key] = str(path)
    for (schedule, interval), row in rows.items():
        missing = [b for b in ("mmlu", "tydiqa") if b not in row]
        if missing:
            raise ValueError(f"{schedule}/{interval}: no {missing[0]} result given (--result "
                             f"{schedule}/{interval}/{missing[0]}=FILE)")
    return pd.DataFrame(list(rows.values()), columns=["schedule", "update_every_steps", "mmlu", "tydiqa"]), sources


TABLE5_NOTE = ("Linear rows replace every entry at the first update t = γ and then ξ(1 − t/T) of them (Eq. 8); "
               "cosine rows replace ξ(1 + cos(πt/T))/2 from the first update on, with no full replacement, as the "
               "authors' cosine schedule does (AlanAnsell/peft, `tuners/sft/trainer.py`).")


def markdown_table5(frame: pd.DataFrame) -> str:
    lines = ["| Schedule | S | MMLU | TyDiQA |", "|---|---|---|---|"]
    lines += [f"| {r.schedule} | {r.update_every_steps} | {r.mmlu:.1f} | {r.tydiqa:.1f} |"
              for r in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n\n" + TABLE5_NOTE + "\n"


def build_table4(selections: dict[tuple[str, str], str | Path], full_lr: dict[str, float]
                 ) -> tuple[pd.DataFrame, dict[str, str]]:
    """Table 4: the selected lr, r and λ per (size, method) from ``selected.json`` files (``spiel.search``);
    Full FT's learning rate is not searched (App. D) and comes from ``full_lr``."""
    from ..search import SEARCHED, sci

    rows, sources = [], {}
    sizes = list(dict.fromkeys([s for s, _ in selections] + list(full_lr)))
    for size in sizes:
        for name in SEARCHED:
            if (size, name) not in selections:
                continue
            path = selections[size, name]
            hp = json.loads(Path(path).read_text())["selected"]
            rows.append({"size": size, "method": method(name).label, "lr": sci(hp["lr"]),
                         "r": hp.get("rank"), "lambda": sci(hp["weight_decay"]) if "weight_decay" in hp else None})
            sources[f"{size}/{method(name).label}"] = str(path)
        if size in full_lr:
            rows.append({"size": size, "method": "Full FT", "lr": sci(full_lr[size]), "r": None, "lambda": None})
    frame = pd.DataFrame(rows, columns=["size", "method", "lr", "r", "lambda"])
    frame["r"] = frame["r"].astype("Int64")
    return frame, sources


def markdown_table4(frame: pd.DataFrame) -> str:
    lines = ["| Size | Method | lr | r | λ |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join("" if pd.isna(v) else str(v) for v in row) + " |"
              for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def build_table3(results: list[str | Path]) -> tuple[pd.DataFrame, dict[str, str]]:
    """Table 3 from ``memory`` result files: the paper's columns (memory in GB = GiB as in App. F, seconds per
    step at the lowest passing limit), then the device and mechanism that produced each number, the limit in MiB,
    the measured peak (CUDA: allocated; CPU: resident), the number of probes and the steps per probe. A search
    that failed even at its upper bound leaves the row's numbers empty."""
    rows, sources = [], {}
    for path in results:
        record = json.loads(Path(path).read_text())
        memory_mb = record["memory_mb"]
        label = method(record["method"]).label
        rows.append({"size": record["size"], "method": label,
                     "activation_checkpointing": str(record["gradient_checkpointing"]).lower(),
                     "memory_gb": None if memory_mb is None else round(memory_mb / 1024, 3),
                     "seconds_per_step": None if record["seconds_per_step"] is None
                     else round(record["seconds_per_step"], 3),
                     "device": record["device"], "mechanism": record["mechanism"], "memory_mb": memory_mb,
                     "peak_mb": None if record["peak_mb"] is None else round(record["peak_mb"], 1),
                     "probes": len(record["probes"]), "steps": record["steps"]})
        sources[f"{record['size']}/{label}/{rows[-1]['activation_checkpointing']}"] = str(path)
    frame = pd.DataFrame(rows)
    frame["memory_mb"] = frame["memory_mb"].astype("Int64")
    return frame, sources


def markdown_table3(frame: pd.DataFrame) -> str:
    """Memory (GB) and time (s/step) without / with activation checkpointing, as the paper prints them."""
    def pair(rows: pd.DataFrame, column: str) -> str:
        values = []
        for flag in ("false", "true"):
            value = rows[rows["activation_checkpointing"] == flag][column]
            values.append("–" if value.empty or pd.isna(value.iloc[0]) else f"{value.iloc[0]:g}")
        return " / ".join(values)

    lines = ["| Size | Method | Mem. GB (w/o / w ckpt) | Time s/step (w/o / w ckpt) |", "|---|---|---|---|"]
    for (size, label), rows in frame.groupby(["size", "method"], sort=False):
        lines.append(f"| {size} | {label} | {pair(rows, 'memory_gb')} | {pair(rows, 'seconds_per_step')} |")
    devices = "; ".join(sorted(set(frame["device"] + " — " + frame["mechanism"])))
    return "\n".join(lines) + f"\n\nMeasured on: {devices}.\n"


HELDOUT_SPLITS = {"flan": "Flan v2", "alpaca": "GPT4-Alpaca", "tulu": "Tülu v2"}


def read_heldout(path: str | Path) -> dict:
    """A held-out loss file (``spiel heldout``): its value and standard error finite and ≥ 0."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no held-out result (its job has not run)") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError(f"{path}: not a held-out result (JSON)") from None
    if not isinstance(record, dict) or record.get("benchmark") != "heldout":
        raise ValueError(f"{path}: not a held-out loss result")
    for key in ("value", "stderr"):
        number = record.get(key)
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not 0 <= number < float("inf"):
            raise ValueError(f"{path}: {key}={number!r} is not a loss")
    return record


def build_heldout(sizes: list[str], methods: list[str], files: dict[str, str | Path]
                  ) -> tuple[pd.DataFrame, dict[str, list[str]], dict[str, dict]]:
    """The held-out extension of Table 1 from ``files`` (``SIZE/METHOD/SPLIT/SEED`` → ``spiel heldout`` result):
    rows as Table 1's, a column per training set's held-out split, each cell the mean over its seeds; spreads
    keyed ``size/label/column`` with each run's standard error."""
    runs = seed_results(files)
    frame = pd.DataFrame([{"size": s, "method": method(m).label} for s in sizes for m in methods])
    for split in HELDOUT_SPLITS:
        frame[f"{split}_heldout_loss"] = float("nan")
    sources, spreads = {}, {}
    for key, seeded in runs.items():
        size, name, split = key.split("/")
        if size not in sizes or name not in methods or split not in HELDOUT_SPLITS:
            raise ValueError(f"--result {key}/…: not a row of {sizes} × {methods} on a split of "
                             f"{', '.join(HELDOUT_SPLITS)}")
        records = [read_heldout(path) for _, path in seeded]
        label, column = method(name).label, f"{split}_heldout_loss"
        cell = f"{size}/{label}/{column}"
        spreads[cell] = {**spread([r["value"] for r in records], [seed for seed, _ in seeded]),
                         "stderr": [r["stderr"] for r in records]}
        frame.loc[(frame["size"] == size) & (frame["method"] == label), column] = round(spreads[cell]["mean"], 4)
        sources[cell] = [str(path) for _, path in seeded]
    return frame, sources, spreads


def markdown_heldout(frame: pd.DataFrame, spreads: dict[str, dict]) -> str:
    """The held-out table: loss ± standard error (one seed) or ± standard deviation over seeds."""
    lines = ["| Size | Method | " + " | ".join(f"{label} held-out loss" for label in HELDOUT_SPLITS.values()) + " |",
             "|---|---|" + "---|" * len(HELDOUT_SPLITS)]
    for row in frame.itertuples(index=False):
        values = []
        for column, value in zip(frame.columns[2:], row[2:], strict=True):
            record = spreads.get(f"{row.size}/{row.method}/{column}")
            noise = None if record is None else (record["sd"] if record["n"] > 1 else record["stderr"][0])
            values.append("" if pd.isna(value) else f"{value:.3f} ± {noise:.3f}")
        lines.append(f"| {row.size} | {row.method} | " + " | ".join(values) + " |")
    seeds = sorted({s["n"] for s in spreads.values()})
    noise = ("standard error over conversations (one seed)" if seeds == [1] else
             f"standard deviation over n = {'/'.join(map(str, seeds))} seeds (one seed: standard error)")
    return ("\n".join(lines) + f"\n\nLoss in nats per target token on each training set's held-out conversations "
            f"(lower is better; not in the paper); ± {noise}.\n")
