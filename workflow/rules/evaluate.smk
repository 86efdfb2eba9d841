"""Evaluation: one job per model, scoring every benchmark its table columns need with the model loaded once.

The model is the base model (dataset ``base``), a trained cell, or — dataset ``tulu+alpaca`` — the Tülu v2 and
GPT4-Alpaca adapters composed at load time (§5: SpIEL deltas summed, peft adapters combined), so composition
needs no rule of its own. Each benchmark still gets its own result JSON.
"""

EVALUATIONS = {
    "all": (f"{BASE}|tulu", BENCHMARKS),
    "flan": ("flan", ["mmlu", "tydiqa"]),
    "code": (f"alpaca|{COMPOSED.replace('+', '[+]')}", ["humaneval"]),
}
"""Rule suffix → (datasets, benchmarks): Table 1's columns per training dataset."""


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
        return [ADAPTER.format(size=wildcards.size, dataset=d, method=wildcards.method) for d in ("tulu", "alpaca")]
    return [ADAPTER.format(**wildcards)]


def evaluate_flags(wildcards, benchmarks, name=None):
    """dtype, seed, NF4 loading and the config's protocol overrides as ``BENCHMARK.KEY=VALUE``."""
    overrides = {f"{b}.{k}": v for b in benchmarks for k, v in config["protocol"].get(b, {}).items()}
    flags = f"--dtype {config['dtype']} --set seed={config['seed']} {key_values(overrides)}"
    return flags + (" --load-in-4bit" if method(name or wildcards.method).quantized else "")


for suffix, (datasets, benchmarks) in EVALUATIONS.items():

    rule:
        name:
            f"evaluate_{suffix}"
        input:
            model=evaluated_model,
            adapters=adapters,
            data=expand(EVAL_DATA, benchmark=benchmarks),
        output:
            expand(EVAL, benchmark=benchmarks, allow_missing=True),
        log:
            "logs/evaluate/{size}/{dataset}/{method}.log",
        benchmark:
            "benchmarks/evaluate/{size}/{dataset}/{method}.tsv"
        wildcard_constraints:
            dataset=datasets,
        params:
            benchmarks=" ".join(benchmarks),
            flags=lambda w, benchmarks=benchmarks: evaluate_flags(w, benchmarks),
        threads: config["threads"]
        resources:
            **job_resources("eval_runtime", 240),
        conda:
            ENV
        shell:
            "OMP_NUM_THREADS={threads} python -m spiel evaluate --model {input.model} --adapter {input.adapters} "
            "--benchmark {params.benchmarks} --data {input.data} {params.flags} --out {output} > {log} 2>&1"
