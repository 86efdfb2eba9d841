"""The replication audit: every table beside the paper's, the paper's claims checked, provenance of the run."""

PROVENANCE = provenance_inputs()


rule audit:
    input:
        **audit_inputs(),
        paper=expand("config/paper_results/table{n}.csv", n=range(1, 6)),
    output:
        csv=report("results/audit.csv", caption="../report/audit.rst", category="Audit"),
        md=report("results/audit.md", caption="../report/audit.rst", category="Audit"),
        png=report("results/audit.png", caption="../report/audit.rst", category="Audit"),
        pdf="results/audit.pdf",
        provenance="results/provenance.json",
    log:
        "logs/report/audit.log",
    params:
        sizes=" ".join(f"{ours}={paper}" for ours, paper in config["audit"]["sizes"].items()),
        config=shlex.quote(json.dumps(config, default=str)),
        trained=" ".join(PROVENANCE["trained"]),
        measured=" ".join(memory_results()),
        timings=" ".join(f"{path.split('/')[1]}={path}" for path in PROVENANCE["timings"]),
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        ENV
    shell:
        "python -m spiel audit --results results --paper config/paper_results --figure2 results/figure2.csv "
        "--size {params.sizes} --config {params.config} --trained {params.trained} --measured {params.measured} "
        "--timing {params.timings} --out {output.csv} > {log} 2>&1"
