"""Base models, evaluation data and the three instruction-tuning datasets (with their held-out splits)."""


rule prepare_model:
    output:
        directory(MODEL),
    log:
        "logs/prepare_model/{size}.log",
    params:
        source=lambda w: config["models"][w.size]["source"],
        options=lambda w: key_values({k: v for k, v in config["models"][w.size].items()
                                      if k in ("path", "id", "hidden", "layers")}),
        cache=CACHE,
    threads: 1
    resources:
        mem_mb=8000,
        runtime=30,
    conda:
        ENV
    shell:
        "python -m spiel prepare-model --source {params.source} --set {params.options} "
        "--cache {params.cache} --out {output} > {log} 2>&1"


use rule prepare_model as prepare_released with:
    output:
        directory(RELEASED_MODEL),
    log:
        "logs/prepare_released/{size}/{dataset}.log",
    params:
        source=lambda w: released_full(w.size)[w.dataset]["source"],
        options=lambda w: key_values({k: v for k, v in released_full(w.size)[w.dataset].items()
                                      if k in ("path", "id")}),
        cache=CACHE,


rule prepare_eval:
    output:
        EVAL_DATA,
    log:
        "logs/prepare_eval/{benchmark}.log",
    params:
        source=lambda w: config["eval_data"][w.benchmark]["source"],
        options=lambda w: key_values({k: v for k, v in config["eval_data"][w.benchmark].items() if k != "source"}),
        cache=CACHE,
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        ENV
    shell:
        "python -m spiel prepare-eval --benchmark {wildcards.benchmark} --source {params.source} "
        "--set {params.options} --cache {params.cache} --out {output} > {log} 2>&1"


rule prepare_train:
    input:
        expand(EVAL_DATA, benchmark=BENCHMARKS),
    output:
        train=TRAIN_DATA,
        **({"heldout": HELDOUT_DATA} if config["heldout"] else {}),
    log:
        "logs/prepare_train/{dataset}.log",
    params:
        source=lambda w: config["train_data"][w.dataset]["source"],
        options=lambda w: key_values({k: v for k, v in config["train_data"][w.dataset].items() if k != "source"}),
        seed=config["seed"],
        heldout=lambda w: f"--heldout {config['heldout']} --heldout-out {HELDOUT_DATA.format(**w)}"
        if config["heldout"] else "",
    threads: 1
    # a real dataset is held in memory whole: `python -m spiel.bench_data` on a synthetic Tülu v2 (326k
    # conversations, 241M words) peaks at 2.0 GB and decontaminates in 81 s (+ 14 s for the index) on one core
    resources:
        mem_mb=lambda w, attempt: (4000 if config["train_data"][w.dataset]["source"] == "standin" else 12000)
        * attempt,
        runtime=lambda w, attempt: (30 if config["train_data"][w.dataset]["source"] == "standin" else 60) * attempt,
    conda:
        ENV
    # reasoning-gym's generators (the stand-ins) draw from sets, whose order follows Python's string hashing: under
    # a fixed PYTHONHASHSEED the same seed gives the same conversations in every run (spiel.instruct.standin would
    # otherwise build them in a child process that hashes so)
    shell:
        "PYTHONHASHSEED=0 python -m spiel prepare-train --dataset {wildcards.dataset} --source {params.source} "
        "--set {params.options} --seed {params.seed} --exclude {input} --out {output.train} {params.heldout} "
        "> {log} 2>&1"
