"""Evaluation: one job per model and seed, scoring every benchmark its table columns need with the model loaded
once.

The model is the base model (dataset ``base``; the 4-bit base only on the benchmarks of Table 2's columns), a
trained cell, or — dataset ``tulu+alpaca`` — the Tülu v2 and GPT4-Alpaca adapters composed at load time (§5: SpIEL
deltas summed, peft adapters combined), so composition needs no rule of its own. Each benchmark still gets its own
result JSON.
"""

rule evaluate_all:
    input:
        model=evaluated_model,
        adapters=adapters,
        data=expand(EVAL_DATA, benchmark=BENCHMARKS),
    output:
        expand(EVAL, benchmark=BENCHMARKS, allow_missing=True),
    log:
        "logs/evaluate/{size}/{dataset}/{method}/seed-{seed}.log",
    benchmark:
        EVAL_TIMING
    wildcard_constraints:
        dataset=f"{BASE}|tulu",
    params:
        benchmarks=" ".join(BENCHMARKS),
        flags=lambda w: evaluate_flags(w, BENCHMARKS),
    threads: config["threads"]
    resources:
        **job_resources("eval_runtime", 240),
    conda:
        ENV
    shell:
        "OMP_NUM_THREADS={threads} python -m spiel evaluate --model {input.model} --adapter {input.adapters} "
        "--benchmark {params.benchmarks} --data {input.data} {params.flags} --out {output} > {log} 2>&1"


use rule evaluate_all as evaluate_flan with:
    input:
        model=evaluated_model,
        adapters=adapters,
        data=expand(EVAL_DATA, benchmark=FLAN_BENCHMARKS),
    output:
        expand(EVAL, benchmark=FLAN_BENCHMARKS, allow_missing=True),
    wildcard_constraints:
        dataset="flan",
    params:
        benchmarks=" ".join(FLAN_BENCHMARKS),
        flags=lambda w: evaluate_flags(w, FLAN_BENCHMARKS),


use rule evaluate_all as evaluate_code with:
    input:
        model=evaluated_model,
        adapters=adapters,
        data=EVAL_DATA.format(benchmark="humaneval"),
    output:
        EVAL.replace("{benchmark}", "humaneval"),
    wildcard_constraints:
        dataset=f"alpaca|{COMPOSED.replace('+', '[+]')}",
    params:
        benchmarks="humaneval",
        flags=lambda w: evaluate_flags(w, ["humaneval"]),


ruleorder: evaluate_base_4bit > evaluate_all


use rule evaluate_all as evaluate_base_4bit with:
    input:
        model=evaluated_model,
        adapters=adapters,
        data=expand(EVAL_DATA, benchmark=BASE_4BIT_BENCHMARKS),
    output:
        expand(EVAL, benchmark=BASE_4BIT_BENCHMARKS, allow_missing=True),
    wildcard_constraints:
        dataset=BASE,
        method="original-4bit",
    params:
        benchmarks=" ".join(BASE_4BIT_BENCHMARKS),
        flags=lambda w: evaluate_flags(w, BASE_4BIT_BENCHMARKS),
