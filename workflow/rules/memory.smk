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
        MEMORY_TIMING
    wildcard_constraints:
        method="|".join(MEMORY_METHODS) or "none",
        checkpointing="on|off",
    params:
        settings=memory_settings,
        hp=lambda w: key_values(memory_hp(w.size, w.method)),
        search=" ".join(f"--{key.replace('_', '-')} {value}" for key, value in
                        {**{k: MEMORY[k] for k in ("low_mb", "high_mb", "step_mb", "timeout_s", "steps", "device")},
                         "search_steps": MEMORY.get("search_steps", MEMORY["steps"])}.items()),
    threads: config["threads"]
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
        memory_results(),
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
