# seggrid: the study grid of Sato & Kido (2022) as a Snakemake workflow.
#   snakemake --cores 2                                        # demo (config/config.yaml)
#   snakemake --profile profiles/slurm --configfile config/amos22_task1.yaml
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        all_outputs(),
    default_target: True
