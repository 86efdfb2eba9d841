"""Table 5 (App. C): SpIEL-AG on Flan v2 with the linear or cosine drop/grow schedule × update interval S,
scored on MMLU and TyDiQA. The training and evaluation rules are reused with ablation paths and overrides."""


use rule train as train_ablation with:
    input:
        model=MODEL,
        data=TRAIN_DATA.format(dataset="flan"),
        selected=lambda w: selection(w, "spiel-ag"),
    output:
        directory(ABLATION_ADAPTER),
    log:
        "logs/ablation/{size}/{schedule}-S{interval}/train.log",
    benchmark:
        "benchmarks/ablation/{size}/{schedule}-S{interval}/train.tsv"
    wildcard_constraints:
        schedule="linear|cosine",
        interval="[0-9]+",
    params:
        work="results/work/ablation/{size}/{schedule}-S{interval}",
        settings=training_settings,
        hp=lambda w: hyperparameters(w, "spiel-ag", **ablation_hp(w.schedule, w.interval)),
        method="spiel-ag",


use rule evaluate_flan as evaluate_ablation with:
    input:
        model=MODEL,
        adapters=ABLATION_ADAPTER,
        data=expand(EVAL_DATA, benchmark=FLAN_BENCHMARKS),
    output:
        expand(ABLATION_EVAL, benchmark=FLAN_BENCHMARKS, allow_missing=True),
    log:
        "logs/ablation/{size}/{schedule}-S{interval}/evaluate.log",
    benchmark:
        "benchmarks/ablation/{size}/{schedule}-S{interval}/evaluate.tsv"
    wildcard_constraints:
        schedule="linear|cosine",
        interval="[0-9]+",
    params:
        benchmarks="mmlu tydiqa",
        flags=lambda w: evaluate_flags(w, FLAN_BENCHMARKS, "spiel-ag"),


rule table5:
    input:
        list(table5_evaluations().values()),
    output:
        csv=report("results/table5.csv", caption="../report/table5.rst", category="Tables"),
        md="results/table5.md",
        sources="results/table5.json",
    log:
        "logs/report/table5.log",
    params:
        results=" ".join(f"{key}={path}" for key, path in table5_evaluations().items()),
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        ENV
    shell:
        "python -m spiel table5 --result {params.results} --out {output.csv} > {log} 2>&1"
