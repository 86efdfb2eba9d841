"""One training job per method × size × dataset cell; resumes from its checkpoint after a kill."""


rule train:
    input:
        model=MODEL,
        data=TRAIN_DATA,
    output:
        directory(ADAPTER),
    log:
        "logs/train/{size}/{dataset}/{method}.log",
    benchmark:
        "benchmarks/train/{size}/{dataset}/{method}.tsv"
    params:
        work="results/work/{size}/{dataset}/{method}",
        settings=TRAINING_SETTINGS,
        hp=hyperparameters,
        method=lambda w: w.method,
    threads: config.get("threads", 1)
    resources:
        mem_mb=8000,
        runtime=240,
    conda:
        ENV
    shell:
        "OMP_NUM_THREADS={threads} python -m spiel train --model {input.model} --method {params.method} "
        "--data {input.data} --out {output} --work {params.work} --set {params.settings} --hp {params.hp} "
        "> {log} 2>&1"
