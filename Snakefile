# seggrid: the study grid of Sato & Kido (2022) as a Snakemake workflow.
#   snakemake --cores 2                                        # demo (config/config.yaml)
#   snakemake --profile slurm --configfile config/amos22_task1.yaml   # profile: seggrid slurm-profile
from snakemake.utils import min_version

min_version("9.0")


# The demo config is the default. A --configfile given on the command line REPLACES it
# (Snakemake would otherwise deep-merge the two grids' settings and tables); --config
# key=value alone is applied on top of it.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/submission_inputs.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/submission.smk"
include: "workflow/rules/cost.smk"


rule all:
    default_target: True
    input:
        all_outputs() + submission_outputs(),
