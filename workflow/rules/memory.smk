"""Table 3 (App. F): memory requirement and step time per size × method × activation checkpointing, by a
binary search over memory limits in which every probe trains in a fresh process (``spiel.memory``)."""

rule memory:
    input:
        model=MODEL,
        data=TRAIN_DATA.format(dataset="flan"),
    output:
        MEMORY_RESULT,
    log:
        "logs/memory/{size}/{method}/checkpointing-{checkpointing}.log",
    benchmark:
        "benchmarks/memory/{size}/{method}/checkpointing-{checkpointing}.tsv"
    wildcard_constraints:
        method="|".join(MEMORY.get("methods", [])) or "none",
        checkpointing="on|off",
    params:
        settings=memory_settings,
        hp=lambda w: hyperparameters(w, rank=MEMORY.get("rank", 64),
                                     **MEMORY.get("hyperparameters", {}).get(w.method, {})),
        search=" ".join(f"--{key.replace('_', '-')} {MEMORY.get(key, default)}" for key, default in
                        (("low_mb", 0), ("high_mb", 81920), ("step_mb", 1024), ("timeout_s", 3600), ("steps", 30),
                         ("search_steps", MEMORY.get("steps", 30)), ("device", "auto"))),
    threads: config.get("threads", 1)
    resources:
        **job_resources("memory_runtime", 600),
        memory_probe=1,
    conda:
        ENV
    shell:
        "python -m spiel memory --model {input.model} --method {wildcards.method} --data {input.data} "
        "--size {wildcards.size} {params.search} --threads {threads} --set {params.settings} --hp {params.hp} "
        "--out {output} > {log} 2>&1"


rule table3:
    input:
        expand(MEMORY_RESULT, size=MEMORY.get("sizes", SIZES), method=MEMORY.get("methods", []),
               checkpointing=["on" if flag else "off" for flag in MEMORY.get("checkpointing", [False, True])]),
    output:
        csv=report("results/table3.csv", caption="../report/table3.rst", category="Tables"),
        md="results/table3.md",
        sources="results/table3.json",
    log:
        "logs/report/table3.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        ENV
    shell:
        "python -m spiel table3 --result {input} --out {output.csv} > {log} 2>&1"
