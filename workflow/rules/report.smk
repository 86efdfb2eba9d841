"""Tables 1 and 2 and, with ``static_sparse``, Table 1x (CSV as in the paper, Markdown, and a JSON naming each
cell's evaluation files with the spread over seeds); Figure 2. Tables 3 and 4 and Figure 4 are built in ``memory.smk``
and ``search.smk``, Table 5 in ``ablation.smk``, Table 1h (held-out loss and exact match) in ``heldout.smk``, beside
the jobs they read."""


rule table:
    input:
        lambda w: table_inputs(w.table),
    output:
        csv=report("results/{table}.csv", caption="../report/table.rst", category="Tables",
                   labels={"table": "{table}"}),
        md="results/{table}.md",
        sources="results/{table}.json",
    log:
        "logs/report/{table}.log",
    wildcard_constraints:
        table="|".join(TABLES),
    params:
        sizes=lambda w: " ".join(TABLE_SIZES.get(w.table, SIZES)),
        methods=lambda w: " ".join(config["tables"][w.table]),
        results=lambda w: " ".join(f"{key}={path}" for key, path in table_evaluations(w.table).items()),
        fullift=lambda w: fullift_args(w.table),
        columns=lambda w: columns_args(w.table),
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        ENV
    shell:
        "python -m spiel table --table {wildcards.table} --sizes {params.sizes} --methods {params.methods} "
        "{params.fullift} {params.columns} --result {params.results} --out {output.csv} > {log} 2>&1"


FIGURE2_METHODS = {"spiel-ag": "SpIEL-AG", "spiel-ma": "SpIEL-MA"}


rule figure2:
    input:
        expand(ADAPTER, size=SIZES, dataset="flan", method=list(FIGURE2_METHODS), seed=SEEDS),
    output:
        png=report("results/figure2.png", caption="../report/figure2.rst", category="Figures"),
        pdf="results/figure2.pdf",
        csv="results/figure2.csv",
    log:
        "logs/report/figure2.log",
    params:
        adapters=" ".join(f"'{label} {size}={ADAPTER.format(size=size, dataset='flan', method=name, seed=seed)}'"
                          for size in SIZES for name, label in FIGURE2_METHODS.items() for seed in SEEDS),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=5,
    conda:
        ENV
    shell:
        "python -m spiel figure2 --adapter {params.adapters} --out {output.png} > {log} 2>&1"
