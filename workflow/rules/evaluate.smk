"""One model on one benchmark: the base model (dataset ``base``), a trained cell, or — dataset ``tulu+alpaca`` —
the Tülu v2 and GPT4-Alpaca adapters composed at load time (§5: SpIEL deltas summed, peft adapters combined),
so composition needs no rule of its own."""


def evaluated_model(wildcards):
    """A FullIFT run is its own model; every other method evaluates on the base model."""
    if wildcards.method == "full":
        return ADAPTER.format(**wildcards)
    return MODEL.format(size=wildcards.size)


def adapters(wildcards):
    if wildcards.dataset == BASE or method(wildcards.method).kind == "full":
        return []
    if wildcards.dataset == COMPOSED:
        return [ADAPTER.format(size=wildcards.size, dataset=d, method=wildcards.method) for d in ("tulu", "alpaca")]
    return [ADAPTER.format(**wildcards)]


def evaluate_flags(wildcards):
    protocol = key_values(config.get("protocol", {}).get(wildcards.benchmark, {}))
    flags = f"--dtype {config['dtype']} --set seed={config['seed']} {protocol}"
    return flags + (" --load-in-4bit" if method(wildcards.method).quantized else "")


rule evaluate:
    input:
        model=evaluated_model,
        adapters=adapters,
        data=EVAL_DATA,
    output:
        "results/eval/{size}/{dataset}/{method}/{benchmark}.json",
    log:
        "logs/evaluate/{size}/{dataset}/{method}/{benchmark}.log",
    benchmark:
        "benchmarks/evaluate/{size}/{dataset}/{method}/{benchmark}.tsv"
    wildcard_constraints:
        dataset=f"flan|alpaca|tulu|{BASE}|{COMPOSED.replace('+', '[+]')}",
    params:
        flags=evaluate_flags,
    threads: config.get("threads", 1)
    resources:
        mem_mb=8000,
        runtime=120,
    conda:
        ENV
    shell:
        "OMP_NUM_THREADS={threads} python -m spiel evaluate --model {input.model} --adapter {input.adapters} "
        "--benchmark {wildcards.benchmark} --data {input.data} {params.flags} --out {output} > {log} 2>&1"
