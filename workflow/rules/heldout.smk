"""Held-out loss and exact match (issue 20): every Table 1 row scored on each training set's held-out conversations
(exact match on those with verifiable answers), and the extension table ``results/table1h`` beside Table 1 (whose
layout stays the paper's)."""


rule heldout:
    input:
        model=evaluated_model,
        adapters=adapters,
        data=lambda w: HELDOUT_DATA.format(dataset=w.split),
    output:
        HELDOUT_EVAL,
    log:
        "logs/heldout/{size}/{dataset}/{method}/seed-{seed}/{split}.log",
    benchmark:
        "benchmarks/heldout/{size}/{dataset}/{method}/seed-{seed}/{split}.tsv"
    wildcard_constraints:
        dataset=f"{BASE}|flan|alpaca|tulu",
        split="flan|alpaca|tulu",
    params:
        max_length=config["training"]["max_length"],
        flags=lambda w: f"--dtype {config['dtype']}" + (" --load-in-4bit" if method(w.method).quantized else ""),
    threads: config["threads"]
    resources:
        **job_resources("eval_runtime", 240),
    conda:
        ENV
    shell:
        "OMP_NUM_THREADS={threads} python -m spiel heldout --model {input.model} --adapter {input.adapters} "
        "--data {input.data} --max-length {params.max_length} {params.flags} --exact-match --out {output} > {log} 2>&1"


rule table1h:
    input:
        list(heldout_evaluations().values()),
    output:
        csv=report("results/table1h.csv", caption="../report/table1h.rst", category="Tables"),
        md="results/table1h.md",
        sources="results/table1h.json",
    log:
        "logs/report/table1h.log",
    params:
        sizes=" ".join(SIZES),
        methods=" ".join(config["tables"]["table1"]),
        results=" ".join(f"{key}={path}" for key, path in heldout_evaluations().items()),
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        ENV
    shell:
        "python -m spiel table1h --sizes {params.sizes} --methods {params.methods} --result {params.results} "
        "--out {output.csv} > {log} 2>&1"
