"""Tables 1 and 2 (CSV as in the paper, Markdown, and a JSON naming each cell's evaluation file); Figure 2."""


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
        table="table1|table2",
    params:
        sizes=" ".join(SIZES),
        methods=lambda w: " ".join(config["tables"][w.table]),
        fullift=" ".join(["--fullift-blank", *FULLIFT_BLANK, "--fullift-released",
                          *(shlex.quote(f"{k}={v}") for k, v in FULLIFT_RELEASED.items())]),
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        ENV
    shell:
        "python -m spiel table --table {wildcards.table} --sizes {params.sizes} --methods {params.methods} "
        "{params.fullift} --out {output.csv} > {log} 2>&1"


FIGURE2_METHODS = {"spiel-ag": "SpIEL-AG", "spiel-ma": "SpIEL-MA"}


rule figure2:
    input:
        expand(ADAPTER, size=SIZES, dataset="flan", method=list(FIGURE2_METHODS)),
    output:
        png=report("results/figure2.png", caption="../report/figure2.rst", category="Figures"),
        pdf="results/figure2.pdf",
        csv="results/figure2.csv",
    log:
        "logs/report/figure2.log",
    params:
        adapters=" ".join(f"'{label} {size}={ADAPTER.format(size=size, dataset='flan', method=name)}'"
                          for size in SIZES for name, label in FIGURE2_METHODS.items()),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=5,
    conda:
        ENV
    shell:
        "python -m spiel figure2 --adapter {params.adapters} --out {output.png} > {log} 2>&1"
