"""Hyperparameter search (App. D): grid points trained on Flan v2 and scored on MMLU dev, the selection per
method and size, Table 4 and Figure 4. Points, stages and tie-breaking are defined in ``spiel.search``."""

import json

from spiel.search import stage1_points


use rule train as train_search with:
    input:
        model=MODEL,
        data=TRAIN_DATA.format(dataset="flan"),
        selected=lambda w: STAGE1.format(**w) if grid_point(w).stage == 2 else [],
    output:
        directory(SEARCH_ADAPTER),
    log:
        "logs/search/{size}/{method}/{point}/train.log",
    benchmark:
        SEARCH_TRAIN_TIMING
    wildcard_constraints:
        **SEARCH_CONSTRAINTS,
    params:
        work="results/work/search/{size}/{method}/{point}",
        settings=training_settings,
        hp=lambda w: hyperparameters(w, **grid_point(w).hp),
        method=lambda w: w.method,


use rule evaluate_flan as evaluate_search with:
    input:
        model=MODEL,
        adapters=search_adapter,
        data=EVAL_DATA.format(benchmark="mmlu"),
    output:
        SEARCH_EVAL,
    log:
        "logs/search/{size}/{method}/{point}/evaluate.log",
    benchmark:
        SEARCH_EVAL_TIMING
    wildcard_constraints:
        **SEARCH_CONSTRAINTS,
    params:
        benchmarks="mmlu",
        flags=lambda w: evaluate_flags(w, ["mmlu"]) + " "
        + key_values({f"mmlu.{k}": v for k, v in SEARCH["protocol"].items()}),


rule select_stage1:
    input:
        lambda w: [SEARCH_EVAL.format(point=p.label, **w) for p in stage1_points(GRID[w.method])],
    output:
        STAGE1,
    log:
        "logs/search/{size}/{method}/stage1.log",
    wildcard_constraints:
        method="|".join(m for m in GRID if GRID[m].get("weight_decay")) or "none",
    params:
        grid=lambda w: shlex.quote(json.dumps(GRID[w.method])),
        points=lambda w: point_args(w, stage1_points(GRID[w.method])),
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    conda:
        ENV
    shell:
        "python -m spiel select --method {wildcards.method} --grid {params.grid} --stage 1 "
        "--point {params.points} --out {output} > {log} 2>&1"


rule select:
    input:
        evals=lambda w: [SEARCH_EVAL.format(point=p.label, **w) for p in points(GRID[w.method])],
        stage1=lambda w: STAGE1.format(**w) if GRID[w.method].get("weight_decay") else [],
    output:
        SELECTED,
    log:
        "logs/search/{size}/{method}/select.log",
    wildcard_constraints:
        method=SEARCH_CONSTRAINTS["method"],
    params:
        grid=lambda w: shlex.quote(json.dumps(GRID[w.method])),
        points=lambda w: point_args(w, points(GRID[w.method])),
        stage1=lambda w: f"--stage1 {STAGE1.format(**w)}" if GRID[w.method].get("weight_decay") else "",
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    conda:
        ENV
    shell:
        "python -m spiel select --method {wildcards.method} --grid {params.grid} --stage final {params.stage1} "
        "--point {params.points} --out {output} > {log} 2>&1"


SELECTIONS = {(size, name): SELECTED.format(size=size, method=name) for size, name in SEARCHED}
SELECTION_ARGS = " ".join(f"{size}/{name}={path}" for (size, name), path in SELECTIONS.items())


rule table4:
    input:
        list(SELECTIONS.values()),
    output:
        csv=report("results/table4.csv", caption="../report/table4.rst", category="Tables"),
        md="results/table4.md",
        sources="results/table4.json",
    log:
        "logs/report/table4.log",
    params:
        selected=SELECTION_ARGS,
        full=" ".join(f"{size}={method_hp(size, 'full')['lr']}" for size in SEARCH_SIZES
                      if "lr" in method_hp(size, "full")),
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        ENV
    shell:
        "python -m spiel table4 --selected {params.selected} --full {params.full} --out {output.csv} > {log} 2>&1"


rule figure4:
    input:
        list(SELECTIONS.values()),
    output:
        png=report("results/figure4.png", caption="../report/figure4.rst", category="Figures"),
        pdf="results/figure4.pdf",
        csv="results/figure4.csv",
    log:
        "logs/report/figure4.log",
    params:
        selected=SELECTION_ARGS,
    threads: 1
    resources:
        mem_mb=2000,
        runtime=5,
    conda:
        ENV
    shell:
        "python -m spiel figure4 --selected {params.selected} --out {output.png} > {log} 2>&1"
