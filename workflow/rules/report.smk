"""Tables 1 and 2 (CSV as in the paper, Markdown, and a JSON naming each cell's evaluation file)."""


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
        methods=lambda w: " ".join(config.get("tables", {}).get(w.table)),
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        ENV
    shell:
        "python -m spiel table --table {wildcards.table} --sizes {params.sizes} --methods {params.methods} "
        "--out {output.csv} > {log} 2>&1"
