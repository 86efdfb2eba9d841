"""One training job per method × size × dataset cell and seed (``seeds``); resumes from its checkpoint after a
kill. With ``search.enabled`` a cell trains with its method's search selection (rule ``select``)."""


rule train:
    input:
        model=MODEL,
        data=TRAIN_DATA,
        selected=selection,
    output:
        directory(ADAPTER),
    log:
        "logs/train/{size}/{dataset}/{method}/seed-{seed}.log",
    benchmark:
        TRAIN_TIMING
    params:
        work="results/work/{size}/{dataset}/{method}/seed-{seed}",
        settings=training_settings,
        hp=lambda w: hyperparameters(w),  # wildcards only: a bare function would also get resources, threads
        method=lambda w: w.method,
    threads: config["threads"]
    resources:
        **job_resources("train_runtime", 240, resumes=True),
    conda:
        ENV
    shell:
        "OMP_NUM_THREADS={threads} python -m spiel train --model {input.model} --method {params.method} "
        "--data {input.data} --out {output} --work {params.work} --set {params.settings} --hp {params.hp} "
        "--hp-file {input.selected} "
        "> {log} 2>&1"
