"""Helpers only: paths, the cells that the tables need, the search points, and the settings each job receives.

The config is read after validation, when the schema has filled in every default: keys are indexed, and a
``.get`` is left only for keys the schema leaves optional (a default computed from other keys is given once, here).
"""

import json
import shlex

from snakemake.exceptions import WorkflowError

from spiel.methods import EXTENSION, check_hyperparameters, method, same_hyperparameters
from spiel.options import build
from spiel.report.cells import BASE, COMPOSED, Cell, cells, table_columns
from spiel.search import points, searched_as

SIZES = list(config["models"])
BENCHMARKS = ["mmlu", "gsm", "bbh", "tydiqa", "humaneval"]
CACHE = config["cache"]
ENV = "../../envs/spiel.yaml"

MODEL = "resources/models/{size}"
EVAL_DATA = "results/data/eval/{benchmark}.jsonl"
TRAIN_DATA = "results/data/train/{dataset}.jsonl"
HELDOUT_DATA = "results/data/heldout/{dataset}.jsonl"
HELDOUT_EVAL = "results/heldout/{size}/{dataset}/{method}/seed-{seed}/{split}.json"
SEEDS = config.get("seeds", [config["seed"]])  # default: the run's one seed
ADAPTER = "results/adapters/{size}/{dataset}/{method}/seed-{seed}"
EVAL = "results/eval/{size}/{dataset}/{method}/seed-{seed}/{benchmark}.json"
TRAIN_TIMING = "benchmarks/train/{size}/{dataset}/{method}/seed-{seed}.tsv"
EVAL_TIMING = "benchmarks/evaluate/{size}/{dataset}/{method}/seed-{seed}.tsv"
STATIC_SPARSE = config["static_sparse"]["enabled"]
EXTENSION_SIZES = config["static_sparse"].get("sizes", SIZES)  # default: every size


def in_run(names):
    """``names`` without the static sparse baselines (``spiel.methods.EXTENSION``) unless ``static_sparse``."""
    return [name for name in names if STATIC_SPARSE or name not in EXTENSION]


def pairs(sizes, names):
    """(size, method) of ``sizes`` × ``names``, the static sparse baselines only at ``static_sparse.sizes``."""
    return [(size, name) for name in names for size in sizes if name not in EXTENSION or size in EXTENSION_SIZES]


TABLES = ["table1", "table2", *(["table1x"] if STATIC_SPARSE else [])]
"""The score tables of the run: Tables 1 and 2, and Table 1x with ``static_sparse``."""
TABLE_SIZES = {"table1x": EXTENSION_SIZES}
"""A table's sizes where not every size."""
TABLE_COLUMNS = config["tables"].get("columns", {})
"""A table's columns where not all of the paper's (``tables.columns``)."""
SEARCH = config["search"]
GRID = {name: SEARCH["grid"][name] for name in in_run(SEARCH["grid"])}
SEARCH_SIZES = SEARCH.get("sizes", SIZES)  # default: every size
SEARCHED = pairs(SEARCH_SIZES, GRID)
SELECTED = "results/search/{size}/{method}/selected.json"
SEARCH_ADAPTER = "results/search/{size}/{method}/{point}/adapter"
SEARCH_EVAL = "results/search/{size}/{method}/{point}/mmlu.json"
SEARCH_TRAIN_TIMING = "benchmarks/search/{size}/{method}/{point}/train.tsv"
SEARCH_EVAL_TIMING = "benchmarks/search/{size}/{method}/{point}/evaluate.tsv"
STAGE1 = "results/search/{size}/{method}/stage1.json"
MEMORY = config["memory"]
MEMORY_METHODS = in_run(MEMORY["methods"])
MEMORY_SIZES = MEMORY.get("sizes", SIZES)  # default: every size
ABLATION = config["ablation"]
ABLATION_SIZE = ABLATION.get("size", SIZES[0])  # default: the first size
ABLATION_ADAPTER = "results/ablation/{size}/{schedule}-S{interval}/adapter"
ABLATION_EVAL = "results/ablation/{size}/{schedule}-S{interval}/{benchmark}.json"
MEMORY_RESULT = "results/memory/{size}/{method}/checkpointing-{checkpointing}.json"
MEMORY_TIMING = "benchmarks/memory/{size}/{method}/checkpointing-{checkpointing}.tsv"
SEARCH_CONSTRAINTS = {"method": "|".join(GRID) or "none", "point": "(lr|wd)[0-9.e+-]+(-r[0-9]+)?"}


wildcard_constraints:
    size="|".join(SIZES),
    dataset="flan|alpaca|tulu",
    benchmark="|".join(BENCHMARKS),
    method="[a-z0-9-]+",
    seed="[0-9]+",


def job_seed(wildcards):
    """The seed of a job: its ``seed`` wildcard (a Table 1/2 cell's training or evaluation), else the run's."""
    return int(wildcards.get("seed", config["seed"]))


def key_values(mapping):
    """``KEY=VALUE`` arguments for the CLI's --set / --hp options: values as JSON (one line, read back as YAML),
    shell-quoted."""
    return " ".join(shlex.quote(f"{k}={json.dumps(v)}") for k, v in mapping.items())


def training_settings(wildcards):
    """The one training loop's settings (App. B), the same for every training job of a size (a size may set its
    own checkpoint interval)."""
    per_size = {k: v for k, v in config["models"][wildcards.size].items() if k == "checkpoint_every"}
    return key_values({**config["training"], **per_size, "seed": job_seed(wildcards), "dtype": config["dtype"]})


def size_resource(key, default, per_attempt=False):
    """A resource of ``models.<size>.resources`` for the job's size (× the attempt number if ``per_attempt``,
    so that a retry after running out of memory or time asks for more). A per-dataset mapping is read at the
    job's dataset (Flan v2 for search and memory jobs, which train on it)."""

    def value(wildcards, attempt):
        amount = config["models"][wildcards.size].get("resources", {}).get(key, default)
        if isinstance(amount, dict):
            amount = amount.get(wildcards.get("dataset", "flan"), max(amount.values()))
        return amount * attempt if per_attempt else amount

    return value


def job_resources(runtime_key, default_runtime, resumes=False):
    """Scheduler resources of a training / evaluation / memory job: memory grows with the attempt, and so does the
    runtime of a job that starts over (a training job that ``resumes`` from its checkpoint asks for the same time
    again, which a partition's limit allows); GPUs (and their model, where configured) come from the size."""
    resources = {"mem_mb": size_resource("mem_mb", 8000, True),
                 "runtime": size_resource(runtime_key, default_runtime, not resumes), "gpu": size_resource("gpu", 0)}
    for key in ("gpu_model", "constraint"):
        if any(key in m.get("resources", {}) for m in config["models"].values()):
            resources[key] = size_resource(key, "")
    return resources


def memory_hp(size, name):
    """A memory probe's hyperparameters: the method's at ``memory.rank``, with the memory section's overrides."""
    return method_hp(size, name, rank=MEMORY["rank"], **MEMORY["hyperparameters"].get(name, {}))


def method_hp(size, name, **overrides):
    """A method's hyperparameters: top-level values, overridden by models.<size>.hyperparameters, then by
    ``overrides`` (grid points, ablations)."""
    base = config["hyperparameters"].get(name, {})
    per_size = config["models"][size].get("hyperparameters", {}).get(name, {})
    return {**base, **per_size, **overrides}


def hyperparameters(wildcards, name=None, **overrides):
    """``--hp`` arguments for the training job of ``wildcards`` (method ``name`` if given)."""
    name = name or wildcards.method
    return key_values(method_hp(wildcards.size, name, **overrides))


def check_config():
    """What the schema cannot say, with the checks the jobs apply (one line naming the key): the training loop's
    settings fit together (a batch of whole micro-batches) and every method's hyperparameters are ones it takes."""
    from spiel.settings import TrainConfig

    unknown = sorted(set(EXTENSION_SIZES) - set(SIZES))
    if unknown:
        raise ValueError(f"static_sparse.sizes: {unknown} not among models ({', '.join(SIZES)})")
    for table, columns in TABLE_COLUMNS.items():
        try:
            table_columns(table, columns)
        except ValueError as error:
            raise ValueError(f"tables.columns.{table}: {error}") from None

    for where, settings in (("training", config["training"]),
                            ("memory.training", {**config["training"], **MEMORY["training"]})):
        build(TrainConfig, settings, where)
    for size in SIZES:
        for name in {**config["hyperparameters"], **config["models"][size].get("hyperparameters", {})}:
            check_hyperparameters(name, method_hp(size, name), f"hyperparameters.{name} (size {size})")
        for name in MEMORY_METHODS:
            if method_hp(size, name):  # none configured: its memory job says so if Table 3 is asked for
                check_hyperparameters(name, memory_hp(size, name), f"memory.hyperparameters.{name} (size {size})")


try:
    check_config()
except ValueError as error:
    raise WorkflowError(f"config: {error}") from None


def selection(wildcards, name=None):
    """The search selection that a training cell of method ``name`` (default the wildcard's) trains with:
    only when ``search.enabled`` and the search covers its method (or full-precision counterpart) and size."""
    name = searched_as(name or wildcards.method)
    if SEARCH["enabled"] and (wildcards.size, name) in SEARCHED:
        return SELECTED.format(size=wildcards.size, method=name)
    return []


def memory_settings(wildcards):
    """The training settings of a probe: the run's, the memory section's overrides, checkpointing on/off."""
    settings = {**config["training"], **MEMORY["training"], "seed": config["seed"],
                "dtype": config["dtype"], "gradient_checkpointing": wildcards.checkpointing == "on"}
    return key_values(settings)


def grid_point(wildcards):
    """The search grid point of a ``train_search`` job."""
    return next(p for p in points(GRID[wildcards.method]) if p.label == wildcards.point)


def point_args(wildcards, grid_points):
    """``--point LABEL=FILE`` arguments for the selection rules."""
    return " ".join(f"{p.label}={SEARCH_EVAL.format(point=p.label, **wildcards)}" for p in grid_points)


RELEASED_MODEL = "resources/released/{size}/{dataset}"
"""A released fully fine-tuned model evaluated as a FullIFT cell (models.<size>.full.released)."""
DATASETS = ["flan", "alpaca", "tulu"]


def released_full(size):
    """Dataset → released model spec of the FullIFT cells that are evaluated, not trained, at ``size``."""
    return config["models"][size]["full"]["released"]


FULLIFT_BLANK = [f"{size}/{dataset}" for size in SIZES for dataset in DATASETS
                 if dataset not in config["models"][size]["full"]["train"] and dataset not in released_full(size)]
"""FullIFT cells neither trained nor released (``SIZE/DATASET``): blank in Table 1, as in the paper at 13b."""
FULLIFT_RELEASED = {f"{size}/{dataset}": spec.get("citation", spec.get("id", spec.get("path", "a released model")))
                    for size in SIZES for dataset, spec in released_full(size).items()}


def fullift_args(table):
    """``spiel table``'s FullIFT notes for ``table``: its sizes' blank and released cells, if FullIFT is a row."""
    sizes = TABLE_SIZES.get(table, SIZES)
    if "full" not in config["tables"][table]:
        return ""
    blank = [key for key in FULLIFT_BLANK if key.split("/")[0] in sizes]
    released = [shlex.quote(f"{k}={v}") for k, v in FULLIFT_RELEASED.items() if k.split("/")[0] in sizes]
    return " ".join(["--fullift-blank", *blank, "--fullift-released", *released])


def trained_here(cell):
    """Whether this run trains a table cell's model: not the base model, nor a released FullIFT model."""
    kind = method(cell.method).kind
    return kind != "none" and not (kind == "full" and cell.dataset in released_full(cell.size))


def cell_seeds(cell):
    """The training seeds of a table cell: every seed, except for a model that is not trained here, evaluated
    once, at the run's seed."""
    return SEEDS if trained_here(cell) else [config["seed"]]


def table_evaluations(table):
    """``CELL/SEED`` → evaluation file of every cell of ``table`` and each of its seeds (``spiel table --result``)."""
    return {f"{cell.key}/{seed}": EVAL.format(size=cell.size, dataset=cell.evaluated_on, method=cell.method,
                                              seed=seed, benchmark=cell.benchmark)
            for cell in table_cells(table) for seed in cell_seeds(cell)}


def table_cells(table):
    """Every filled cell of ``table`` in this run (``spiel.report.cells.cells``)."""
    return cells(table, TABLE_SIZES.get(table, SIZES), config["tables"][table], FULLIFT_BLANK,
                 TABLE_COLUMNS.get(table))


def columns_args(table):
    """``spiel table``'s ``--columns`` where ``tables.columns`` names ``table``'s."""
    return f"--columns {' '.join(TABLE_COLUMNS[table])}" if table in TABLE_COLUMNS else ""


def flan_twin(size, name, **overrides):
    """The Table 1 cell (Flan v2, the run's seed) whose training a Flan v2 job of method ``name`` at ``size`` with
    hyperparameter ``overrides`` would repeat (``spiel.methods.same_hyperparameters``; the training settings and
    the seed are the same for both), as ``ADAPTER``/``EVAL`` fields, so that the job reuses it; None if none (also
    where the method has no hyperparameters of its own to train a cell with: a grid point brings its learning rate)."""
    try:
        same = same_hyperparameters(name, method_hp(size, name), method_hp(size, name, **overrides))
    except ValueError:
        return None
    return {"size": size, "dataset": "flan", "method": name, "seed": config["seed"]} if same else None


def heldout_evaluations():
    """``SIZE/METHOD/SPLIT/SEED`` → held-out result file of every Table 1 row on each training set's held-out split
    (the base model on all three; a trained cell on its own dataset's; blank FullIFT cells skipped)."""
    out = {}
    for size in SIZES:
        for name in config["tables"]["table1"]:
            for split in DATASETS:
                if method(name).kind == "full" and f"{size}/{split}" in FULLIFT_BLANK:
                    continue
                cell = Cell(size, name, split, "heldout")
                for seed in cell_seeds(cell):
                    out[f"{size}/{name}/{split}/{seed}"] = HELDOUT_EVAL.format(
                        size=size, dataset=cell.evaluated_on, method=name, seed=seed, split=split)
    return out


def table_inputs(table):
    """The evaluation files behind every cell of ``table``."""
    return list(table_evaluations(table).values())


def final_outputs():
    """The final targets (``all``): every table and figure the config asks for, and the audit."""
    tables = [f"results/{table}.csv" for table in TABLES]
    tables += [*(["results/table3.csv"] if MEMORY_METHODS else []), *(["results/table4.csv"] if GRID else []),
               *(["results/table5.csv"] if ABLATION["update_intervals"] else [])]
    tables += ["results/table1h.csv"] if config["heldout"] else []
    figures = ["results/figure2.png", *(["results/figure4.png"] if GRID else [])]
    return {"tables": tables, "figures": figures, "audit": "results/audit.md"}


def audit_inputs():
    """Every file the audit reads: the tables with their source records, the evaluations behind Tables 1, 2 and 1x
    (per-item scores), the search selections and their evaluations (Table 4's ranks), Figure 2's data and the
    memory results (brackets and per-step times)."""
    tables = final_outputs()["tables"]
    records = [table.replace(".csv", ".json") for table in tables]
    selections = [SELECTED.format(size=s, method=m) for s, m in SEARCHED]
    searched = [SEARCH_EVAL.format(size=s, method=m, point=p.label) for s, m in SEARCHED for p in points(GRID[m])]
    return {"tables": tables, "records": records, "evaluations": [f for t in TABLES for f in table_inputs(t)],
            "selections": selections, "searched": searched, "figure2": "results/figure2.csv",
            "memory": memory_results(), "trained": provenance_inputs()["trained"]}


def provenance_inputs():
    """What the run's provenance reads: the trained folders of the score tables (their device; audit inputs), and
    the benchmark files of their training and evaluation jobs, of the hyperparameter search, the memory search, the
    held-out losses and Table 5's ablation (wall time per stage: the folder under ``benchmarks/``). The benchmark
    files are passed, not declared: a missing one is skipped, never a reason to retrain, and a rerun job also
    reruns the audit through its outputs."""
    trained, evaluated = set(), set()
    for table in TABLES:
        for cell in table_cells(table):
            for seed in cell_seeds(cell):
                run = {"size": cell.size, "method": cell.method, "seed": seed}
                evaluated.add(EVAL_TIMING.format(dataset=cell.evaluated_on, **run))
                if cell.evaluated_on in DATASETS and trained_here(cell):
                    trained.add((cell.size, cell.dataset, cell.method, seed))
    memory = [path.replace("results/", "benchmarks/", 1).replace(".json", ".tsv") for path in memory_results()]
    # a grid point or Table 5 cell that reuses a Table 1 training (``flan_twin``) has no job of its own to time
    search = [pattern.format(size=s, method=m, point=p.label) for s, m in SEARCHED for p in points(GRID[m])
              for pattern in (SEARCH_TRAIN_TIMING, SEARCH_EVAL_TIMING)
              if pattern == SEARCH_EVAL_TIMING or not search_twin(s, m, p)]
    heldout = [path.replace("results/", "benchmarks/", 1).replace(".json", ".tsv")  # rule heldout's benchmark
               for path in (heldout_evaluations().values() if config["heldout"] else [])]
    ablation = [f"benchmarks/ablation/{ABLATION_SIZE}/{schedule}-S{interval}/{job}.tsv"  # Table 5's jobs
                for schedule in ABLATION["schedules"] for interval in ABLATION["update_intervals"]
                if not ablation_twin(schedule, interval) for job in ("train", "evaluate")]
    runs = [dict(zip(("size", "dataset", "method", "seed"), run, strict=True)) for run in sorted(trained)]
    return {"trained": [ADAPTER.format(**run) for run in runs],
            "timings": [TRAIN_TIMING.format(**run) for run in runs] + sorted(evaluated) + search + memory + heldout
            + ablation}


def search_twin(size, name, point):
    """The Table 1 Flan v2 cell whose training a stage-1 grid ``point`` repeats (``flan_twin``), never with
    ``search.enabled``, where that cell trains with the selection the point feeds; None if none."""
    return None if SEARCH["enabled"] or point.stage == 2 else flan_twin(size, name, **point.hp)


def search_adapter(wildcards):
    """A grid point's trained adapter: its own, or its Table 1 twin's (``search_twin``)."""
    twin = search_twin(wildcards.size, wildcards.method, grid_point(wildcards))
    return ADAPTER.format(**twin) if twin else SEARCH_ADAPTER.format(**wildcards)


def ablation_hp(schedule, interval):
    """A Table 5 cell's SpIEL-AG hyperparameter overrides; the authors' cosine schedule (Eq. 11) has no full
    replacement at the first update, linear (Eq. 8) has."""
    return {"schedule": schedule, "update_interval": int(interval), "replace_all_first": schedule == "linear"}


def ablation_twin(schedule, interval):
    """The Table 1 SpIEL-AG Flan v2 cell whose training a Table 5 cell repeats (``flan_twin``); None if none."""
    return flan_twin(ABLATION_SIZE, "spiel-ag", **ablation_hp(schedule, interval))


def ablation_eval(schedule, interval, benchmark):
    """A Table 5 cell's evaluation: its own, or its Table 1 twin's (``ablation_twin``; both are scored with the
    same protocol)."""
    twin = ablation_twin(schedule, interval)
    if twin:
        return EVAL.format(benchmark=benchmark, **twin)
    return ABLATION_EVAL.format(size=ABLATION_SIZE, schedule=schedule, interval=interval, benchmark=benchmark)


def table5_evaluations():
    """``SCHEDULE/S/BENCHMARK`` → evaluation file of every Table 5 cell (``spiel table5 --result``)."""
    return {f"{schedule}/{interval}/{benchmark}": ablation_eval(schedule, interval, benchmark)
            for schedule in ABLATION["schedules"] for interval in ABLATION["update_intervals"]
            for benchmark in FLAN_BENCHMARKS}


def memory_results():
    """Table 3's memory search results: size × method × activation checkpointing off/on."""
    return [MEMORY_RESULT.format(size=s, method=m, checkpointing="on" if flag else "off")
            for s, m in pairs(MEMORY_SIZES, MEMORY_METHODS) for flag in MEMORY["checkpointing"]]


BASE_4BIT_BENCHMARKS = [b for b in BENCHMARKS
                        if any(c.benchmark == b for c in table_cells("table2") if c.method == "original-4bit")
                        ] or BENCHMARKS  # no 4-bit base row: never asked for
"""What the 4-bit base model is scored on: the benchmarks of its Table 2 cells (GSM and BBH are in none)."""
FLAN_BENCHMARKS = ["mmlu", "tydiqa"]
"""Table 1's columns per training dataset: Flan v2 → MMLU and TyDiQA; GPT4-Alpaca and the composed adapters →
HumanEval; the base model and Tülu v2 → all five (rules ``evaluate_flan``, ``evaluate_code``, ``evaluate_all``)."""


def evaluated_model(wildcards):
    """A FullIFT run is its own model (trained, or released: models.<size>.full.released); every other method
    evaluates on the base model."""
    if method(wildcards.method).kind == "full":
        if wildcards.dataset in released_full(wildcards.size):
            return RELEASED_MODEL.format(**wildcards)
        return ADAPTER.format(**wildcards)
    return MODEL.format(size=wildcards.size)


def adapters(wildcards):
    if wildcards.dataset == BASE or method(wildcards.method).kind == "full":
        return []
    if wildcards.dataset == COMPOSED:
        return [ADAPTER.format(size=wildcards.size, dataset=d, method=wildcards.method, seed=wildcards.seed)
                for d in ("tulu", "alpaca")]
    return [ADAPTER.format(**wildcards)]


def evaluate_flags(wildcards, benchmarks, name=None):
    """dtype, the evaluation seed, NF4 loading and the config's protocol overrides as ``BENCHMARK.KEY=VALUE``."""
    overrides = {f"{b}.{k}": v for b in benchmarks for k, v in config["protocol"].get(b, {}).items()}
    # the run's seed, never a training seed: every model is scored on the same items, shots and sampling draws
    flags = f"--dtype {config['dtype']} --set seed={config['seed']} {key_values(overrides)}"
    return flags + (" --load-in-4bit" if method(name or wildcards.method).quantized else "")
