"""Tables 1 and 2 of the paper from our evaluation JSON files, every cell traceable to its file.

Rows are size × method (the paper's labels), columns are (training dataset, benchmark) pairs named as in the
paper's CSVs (``config/paper_results``). The untuned rows (Original, Original (4-bit)) take every column from
the base model's evaluation; the Tülu v2 ⊕ GPT4-Alpaca column composes the two PEFT adapters (§5) and is empty
for Original and FullIFT, as in the paper.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from collections.abc import Collection
from pathlib import Path

import pandas as pd

from ..methods import method
from .cells import BENCHMARK_LABELS, DATASET_LABELS, cells, column_name, table_columns
from .stats import standard_error


def size_dataset(key: str, sizes: Collection[str], option: str) -> tuple[str, str]:
    """``SIZE/DATASET`` split and checked against the table's sizes and the training datasets."""
    size, _, dataset = key.partition("/")
    if size not in sizes or dataset not in ("flan", "alpaca", "tulu"):
        raise ValueError(f"{option} {key!r}: expected SIZE/DATASET with SIZE in {sorted(sizes)} and DATASET one of "
                         "flan, alpaca, tulu")
    return size, dataset


def fullift_notes(table: str, blank_full: Collection[str], released: dict[str, str],
                  columns: Collection[str] | None = None) -> list[str]:
    """Lines under ``table`` (of ``columns``: ``cells.table_columns``) saying which of its FullIFT cells are blank
    and which come from released models."""
    datasets = {dataset for dataset, _ in table_columns(table, columns)}
    notes = [f"FullIFT {size} on {DATASET_LABELS[dataset]}: evaluated from {citation}, not trained here."
             for key, citation in sorted(released.items()) for size, dataset in [key.split("/")]
             if dataset in datasets]
    blank = sorted(tuple(key.split("/")) for key in blank_full if key.split("/")[1] in datasets)
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
          blank_full: Collection[str] = (), columns: Collection[str] | None = None
          ) -> tuple[pd.DataFrame, dict[str, list[str]], dict[str, dict]]:
    """(table, sources, spreads) from ``files`` (``CELL/SEED`` → evaluation file, ``CELL`` as ``Cell.key``): the
    table as in the paper's CSV (only ``columns``, if given: ``cells.table_columns``), each cell the mean over its
    seeds; for each ``size/method/column`` its files and the spread of its scores over seeds. A cell without a
    file, or a file of no cell, is an error naming it."""
    runs = seed_results(files)
    expected = cells(table, sizes, methods, blank_full, columns)
    unknown = sorted(set(runs) - {cell.key for cell in expected})
    if unknown:
        raise ValueError(f"--result {unknown[0]}/…: not a cell of {table} (SIZE/METHOD/DATASET/BENCHMARK)")
    frame = pd.DataFrame([{"size": s, "method": method(m).label} for s in sizes for m in methods])
    for dataset, benchmark in table_columns(table, columns):
        frame[column_name(dataset, benchmark)] = float("nan")
    sources, spreads = {}, {}
    for cell in expected:
        if cell.key not in runs:
            raise ValueError(f"{cell.key}: no evaluation file given (--result {cell.key}/SEED=FILE)")
        records = [read_result(path, cell.benchmark) for _, path in runs[cell.key]]
        label, column = method(cell.method).label, column_name(cell.dataset, cell.benchmark)
        key = f"{cell.size}/{label}/{column}"
        spreads[key] = {**spread([r["value"] for r in records], [seed for seed, _ in runs[cell.key]]),
                        "stderr": [r["stderr"] for r in records]}
        frame.loc[(frame["size"] == cell.size) & (frame["method"] == label), column] = round(spreads[key]["mean"], 2)
        sources[key] = [str(path) for _, path in runs[cell.key]]
    return frame, sources, spreads


def markdown(frame: pd.DataFrame, notes: Collection[str] = (), spreads: dict[str, dict] | None = None) -> str:
    """The table as Markdown with readable headers (dataset / benchmark), empty cells left blank, every cell with
    its noise (``spreads``, keyed ``size/method/column``): mean ± standard deviation over several seeds, score ±
    its standard error over items for one; ``notes`` below."""
    spreads = spreads or {}
    headers = ["Size", "Method"]
    for column in frame.columns[2:]:
        dataset, benchmark = column.rsplit("_", 1)
        headers.append(f"{DATASET_LABELS[dataset.replace('_plus_', '+')]} {BENCHMARK_LABELS[benchmark]}")
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in frame.itertuples(index=False):
        values = [str(row[0]), str(row[1])]
        for column, value in zip(frame.columns[2:], row[2:], strict=True):
            noise = _noise(spreads.get(f"{row[0]}/{row[1]}/{column}"))
            values.append("" if pd.isna(value) else f"{value:.1f}" + ("" if noise is None else f" ± {noise:.1f}"))
        lines.append("| " + " | ".join(values) + " |")
    if spreads:
        notes = [f"Cells: {_noise_note(spreads.values())}.", *notes]
    return "\n".join(lines) + "\n" + "".join(f"\n{note}\n" for note in notes)


def _noise(record: dict | None) -> float | None:
    """A cell's noise: the standard deviation of its scores over seeds, or its one run's standard error."""
    if record is None:
        return None
    return record["sd"] if record["n"] > 1 else (record.get("stderr") or [None])[0]


def _noise_note(spreads: Collection[dict], items: str = "items") -> str:
    """What the ± of a table's cells is: over seeds where a cell has several runs, over ``items`` where one."""
    counts = sorted({s["n"] for s in spreads})
    seeds = ", ".join(map(str, sorted({seed for s in spreads for seed in s["seeds"]})))
    if counts == [1]:
        return f"score ± standard error over {items} (one training seed: {seeds})"
    one = f"; a cell of one run: ± its standard error over {items}" if 1 in counts else ""
    return f"mean ± standard deviation over n = {'/'.join(map(str, counts))} training seeds ({seeds}){one}"


def build_table5(files: dict[str, str | Path]) -> tuple[pd.DataFrame, dict[str, str], dict[str, float]]:
    """(table, sources, standard errors) from ``files`` (``SCHEDULE/S/BENCHMARK`` → evaluation file): one row per
    (schedule, S), in the order given, with MMLU and TyDiQA; a row missing either benchmark is an error naming
    it. Sources are keyed as ``files``, standard errors as ``SCHEDULE/S/BENCHMARK`` with S as an integer."""
    rows: dict[tuple[str, int], dict] = {}
    sources, errors = {}, {}
    for key, path in files.items():
        schedule, _, rest = key.partition("/")
        interval, _, benchmark = rest.partition("/")
        if not interval.isdigit() or benchmark not in ("mmlu", "tydiqa"):
            raise ValueError(f"--result {key}={path}: expected SCHEDULE/S/BENCHMARK=FILE (BENCHMARK mmlu or tydiqa)")
        row = rows.setdefault((schedule, int(interval)), {"schedule": schedule, "update_every_steps": int(interval)})
        record = read_result(path, benchmark)
        if benchmark in row:
            raise ValueError(f"--result {key}={path}: a second {benchmark} result for {schedule} S = {int(interval)}")
        row[benchmark] = round(record["value"], 2)
        sources[key], errors[f"{schedule}/{int(interval)}/{benchmark}"] = str(path), record["stderr"]
    for (schedule, interval), row in rows.items():
        missing = [b for b in ("mmlu", "tydiqa") if b not in row]
        if missing:
            raise ValueError(f"{schedule}/{interval}: no {missing[0]} result given (--result "
                             f"{schedule}/{interval}/{missing[0]}=FILE)")
    frame = pd.DataFrame(list(rows.values()), columns=["schedule", "update_every_steps", "mmlu", "tydiqa"])
    return frame, sources, errors


TABLE5_NOTE = ("Linear rows replace every entry at the first update t = γ and then ξ(1 − t/T) of them (Eq. 8); "
               "cosine rows replace ξ(1 + cos(πt/T))/2 from the first update on, with no full replacement, as the "
               "authors' cosine schedule does (AlanAnsell/peft, `tuners/sft/trainer.py`).")


def markdown_table5(frame: pd.DataFrame, errors: dict[str, float]) -> str:
    """Table 5 as Markdown, every score ± its standard error over items (``errors`` from ``build_table5``)."""
    lines = ["| Schedule | S | MMLU | TyDiQA |", "|---|---|---|---|"]
    for r in frame.itertuples(index=False):
        key = f"{r.schedule}/{r.update_every_steps}"
        lines.append(f"| {r.schedule} | {r.update_every_steps} | {r.mmlu:.1f} ± {errors[key + '/mmlu']:.1f} | "
                     f"{r.tydiqa:.1f} ± {errors[key + '/tydiqa']:.1f} |")
    return "\n".join(lines) + "\n\nScores ± standard error over items (one training run each). " + TABLE5_NOTE + "\n"


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


def memory_bracket(record: dict) -> tuple[float, float] | None:
    """(lower, upper) GB bracketing a memory search's requirement: the highest limit that ran out of memory
    (0 if none) and the lowest that passed; None if none passed."""
    passed = record["memory_mb"]
    if passed is None:
        return None
    failed = [p["limit_mb"] for p in record["probes"]
              if not p["passed"] and p["reason"] == "out of memory" and p["limit_mb"] < passed]
    return max(failed, default=0) / 1024, passed / 1024


def step_seconds(record: dict) -> list[float]:
    """The per-step times of the probe that gave a memory search's step time (the lowest passing whole run)."""
    runs = [p for p in record["probes"] if p["passed"] and p["limit_mb"] == record["memory_mb"]
            and p["steps"] in (None, record["steps"])]
    return list(runs[-1]["step_seconds"]) if runs else []


def build_table3(results: list[str | Path]) -> tuple[pd.DataFrame, dict[str, str]]:
    """Table 3 from ``memory`` result files: the paper's columns (memory in GB = GiB as in App. F, seconds per
    step at the lowest passing limit), then the device and mechanism that produced each number, the limit in MiB,
    the measured peak (CUDA: allocated; CPU: resident), the number of probes and the steps per probe, and their
    noise: the highest limit that ran out of memory below the requirement (``memory_gb_failed``; the requirement
    lies above it) and the standard error of the mean step time over the timed steps. A search that failed even at
    its upper bound leaves the row's numbers empty."""
    rows, sources = [], {}
    for path in results:
        record = json.loads(Path(path).read_text())
        memory_mb, bracket, steps = record["memory_mb"], memory_bracket(record), step_seconds(record)
        label = method(record["method"]).label
        rows.append({"size": record["size"], "method": label,
                     "activation_checkpointing": str(record["gradient_checkpointing"]).lower(),
                     "memory_gb": None if memory_mb is None else round(memory_mb / 1024, 3),
                     "seconds_per_step": None if record["seconds_per_step"] is None
                     else round(record["seconds_per_step"], 3),
                     "device": record["device"], "mechanism": record["mechanism"], "memory_mb": memory_mb,
                     "peak_mb": None if record["peak_mb"] is None else round(record["peak_mb"], 1),
                     "probes": len(record["probes"]), "steps": record["steps"],
                     "memory_gb_failed": None if bracket is None else round(bracket[0], 3),
                     "seconds_per_step_se": None if len(steps) < 2 else round(standard_error(steps), 3)})
        sources[f"{record['size']}/{label}/{rows[-1]['activation_checkpointing']}"] = str(path)
    frame = pd.DataFrame(rows)
    frame["memory_mb"] = frame["memory_mb"].astype("Int64")
    return frame, sources


def markdown_table3(frame: pd.DataFrame) -> str:
    """Memory (GB) and time (s/step) without / with activation checkpointing, as the paper prints them."""
    def pair(rows: pd.DataFrame, column: str, noise: str, form: str) -> str:
        values = []
        for flag in ("false", "true"):
            row = rows[rows["activation_checkpointing"] == flag]
            if row.empty or pd.isna(row[column].iloc[0]):
                values.append("–")
            else:
                value, spread = row[column].iloc[0], row[noise].iloc[0]
                values.append(f"{value:g}" if pd.isna(spread) else form.format(value=value, spread=spread))
        return " / ".join(values)

    lines = ["| Size | Method | Mem. GB (w/o / w ckpt) | Time s/step (w/o / w ckpt) |", "|---|---|---|---|"]
    for (size, label), rows in frame.groupby(["size", "method"], sort=False):
        memory = pair(rows, "memory_gb", "memory_gb_failed", "{spread:g}–{value:g}")
        time = pair(rows, "seconds_per_step", "seconds_per_step_se", "{value:g} ± {spread:g}")
        lines.append(f"| {size} | {label} | {memory} | {time} |")
    devices = "; ".join(sorted(set(frame["device"] + " — " + frame["mechanism"])))
    return ("\n".join(lines) + "\n\nMemory: the highest limit that ran out of memory – the lowest that passed (the "
            "requirement lies in between); time: mean ± standard error over the timed steps at the lowest passing "
            f"limit.\nMeasured on: {devices}.\n")


HELDOUT_SPLITS = {"flan": "Flan v2", "alpaca": "GPT4-Alpaca", "tulu": "Tülu v2"}


HELDOUT_MEASURES = {"loss": "held-out loss", "em": "held-out exact match (%)"}
"""Table 1h's measures: the loss of every held-out conversation (``value``) and the exact match of the verifiable
ones (``exact_match``, on the splits that have them)."""


def read_heldout(path: str | Path) -> dict:
    """A held-out result file (``spiel heldout``): its loss and standard error finite and ≥ 0, its exact match (when
    scored) a percentage."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no held-out result (its job has not run)") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError(f"{path}: not a held-out result (JSON)") from None
    if not isinstance(record, dict) or record.get("benchmark") != "heldout":
        raise ValueError(f"{path}: not a held-out loss result")
    checks = [("value", record.get("value"), float("inf")), ("stderr", record.get("stderr"), float("inf"))]
    if "exact_match" in record:
        em = record["exact_match"]
        if not isinstance(em, dict) or not isinstance(em.get("samples"), list) or not em["samples"] or any(
                not isinstance(s, dict) or "doc_id" not in s or s.get("exact_match") not in (0, 1)
                for s in em["samples"]) or em.get("n_items") != len(em["samples"]):
            raise ValueError(f"{path}: exact_match is not a set of answers scored 0 or 1 (one per item)")
        checks += [("exact_match.value", em.get("value"), 100.0), ("exact_match.stderr", em.get("stderr"), 100.0)]
    for key, number, top in checks:
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number) \
                or not 0 <= number <= top:
            raise ValueError(f"{path}: {key}={number!r} is out of range")
    return record


def _measure(record: dict, measure: str) -> dict | None:
    """The part of a held-out result that ``measure`` reads, as (value, stderr, samples with ``score``)."""
    if measure == "loss":
        return record
    em = record.get("exact_match")
    if em is None:
        return None
    samples = [{"doc_id": s["doc_id"], "score": 100.0 * s["exact_match"]} for s in em["samples"]]
    return {**em, "samples": samples, "data_file": record.get("data_file")}


def build_heldout(sizes: list[str], methods: list[str], files: dict[str, str | Path], reference: str = "original"
                  ) -> tuple[pd.DataFrame, dict[str, list[str]], dict[str, dict]]:
    """The held-out extension of Table 1 from ``files`` (``SIZE/METHOD/SPLIT/SEED`` → ``spiel heldout`` result):
    rows as Table 1's; per training set's held-out split and measure (``HELDOUT_MEASURES``) a column (the mean
    over seeds) and a ``_delta`` column, the paired change from ``reference`` on the same items (``paired_delta``);
    spreads keyed ``size/label/column`` with each run's standard error and the delta's."""
    runs = seed_results(files)
    frame = pd.DataFrame([{"size": s, "method": method(m).label} for s in sizes for m in methods])
    for measure in HELDOUT_MEASURES:
        for split in HELDOUT_SPLITS:
            frame[f"{split}_heldout_{measure}"] = frame[f"{split}_heldout_{measure}_delta"] = float("nan")
    records: dict[str, list[dict]] = {}
    sources, spreads = {}, {}
    for key, seeded in runs.items():
        size, name, split = key.split("/")
        if size not in sizes or name not in methods or split not in HELDOUT_SPLITS:
            raise ValueError(f"--result {key}/…: not a row of {sizes} × {methods} on a split of "
                             f"{', '.join(HELDOUT_SPLITS)}")
        records[key] = [read_heldout(path) for _, path in seeded]
        row = (frame["size"] == size) & (frame["method"] == method(name).label)
        for measure in HELDOUT_MEASURES:
            parts = [_measure(r, measure) for r in records[key]]
            if any(part is None for part in parts):
                if any(part is not None for part in parts):
                    raise ValueError(f"--result {key}: some seeds' files score {HELDOUT_MEASURES[measure]} and "
                                     "others do not (results of different versions: rerun rule heldout)")
                continue
            column = f"{split}_heldout_{measure}"
            cell = f"{size}/{method(name).label}/{column}"
            spreads[cell] = {**spread([p["value"] for p in parts], [seed for seed, _ in seeded]),
                             "stderr": [p["stderr"] for p in parts], "n_items": len(parts[0]["samples"])}
            frame.loc[row, column] = round(spreads[cell]["mean"], 4)
            sources[cell] = [str(path) for _, path in seeded]
    for key, runs_of_cell in records.items():
        size, name, split = key.split("/")
        baseline = records.get(f"{size}/{reference}/{split}")
        if name == reference or baseline is None:
            continue
        row = (frame["size"] == size) & (frame["method"] == method(name).label)
        for measure in HELDOUT_MEASURES:
            column = f"{split}_heldout_{measure}"
            cell = f"{size}/{method(name).label}/{column}"
            base = _measure(baseline[0], measure)
            if (cell in spreads) != (base is not None):
                raise ValueError(f"--result {key}: {HELDOUT_MEASURES[measure]} is scored for one of {name} and "
                                 f"{reference} only (results of different versions: rerun rule heldout)")
            if base is None:
                continue
            delta = paired_delta([_measure(r, measure) for r in runs_of_cell], base)
            spreads[cell]["delta"] = delta
            frame.loc[row, f"{column}_delta"] = round(delta["mean"], 4)
    return frame, sources, spreads


def paired_delta(runs: list[dict], reference: dict) -> dict:
    """Change from ``reference`` on the same held-out items (matched by ``doc_id``): per run the mean per-item
    difference of ``score`` and its paired standard error; their mean over runs, with the run's standard error
    (one run) or the standard deviation over runs as its noise."""
    base = {s["doc_id"]: s["score"] for s in reference["samples"]}
    means, errors = [], []
    for run in runs:
        differences = [s["score"] - base[s["doc_id"]] for s in run["samples"] if s["doc_id"] in base]
        if len(differences) != len(base) or len(run["samples"]) != len(base):
            raise ValueError(f"{run['data_file']}: scored other conversations than the reference "
                             f"{reference['data_file']} (held-out files must match)")
        means.append(statistics.fmean(differences))
        errors.append(standard_error(differences) or 0.0)
    return {"mean": statistics.fmean(means), "noise": errors[0] if len(runs) == 1 else statistics.stdev(means),
            "runs": means, "stderr": errors, "n_items": len(base)}


def markdown_heldout(frame: pd.DataFrame, spreads: dict[str, dict], reference: str = "original") -> str:
    """The held-out tables, one per measure with values: per split the value and its paired change Δ from
    ``reference``, each ± standard error (one seed) or ± standard deviation over seeds."""
    reference = method(reference).label
    parts = []
    for measure, name in HELDOUT_MEASURES.items():
        splits = [s for s in HELDOUT_SPLITS if any(k.endswith(f"/{s}_heldout_{measure}") for k in spreads)]
        if not splits:
            continue
        digits = 3 if measure == "loss" else 1
        items = {s: {r["n_items"] for k, r in spreads.items() if k.endswith(f"/{s}_heldout_{measure}")}
                 for s in splits}
        headers = [f"{HELDOUT_SPLITS[s]} {name}, n = {'/'.join(map(str, sorted(items[s])))} (Δ vs {reference})"
                   for s in splits]
        lines = ["| Size | Method | " + " | ".join(headers) + " |", "|---|---|" + "---|" * len(splits)]
        for row in frame.itertuples(index=False):
            values = []
            for split in splits:
                record = spreads.get(f"{row.size}/{row.method}/{split}_heldout_{measure}")
                if record is None:
                    values.append("")
                    continue
                text = f"{record['mean']:.{digits}f} ± {_noise(record):.{digits}f}"
                if "delta" in record:
                    text += f" (Δ {record['delta']['mean']:+.{digits}f} ± {record['delta']['noise']:.{digits}f})"
                values.append(text)
            lines.append(f"| {row.size} | {row.method} | " + " | ".join(values) + " |")
        parts.append("\n".join(lines))
    noise = _noise_note(spreads.values(), "items")
    return ("\n\n".join(parts) + "\n\nNot in the paper. Loss: nats per target token on each training set's held-out "
            "conversations (lower is better). Exact match: the greedy answer to each held-out question with a "
            f"verifiable answer (reasoning-gym's), whitespace-normalised, against the reference (higher is better). "
            f"{noise[0].upper() + noise[1:]}. Δ: the mean per-item change from {reference} on the same items, ± its "
            "paired standard error (one seed) or standard deviation over seeds.\n")
