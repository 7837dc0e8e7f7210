# `snakemake cost`: what the grid will cost, measured on the device this job gets (a GPU when
# any training uses one). Outside `all`: it measures the machine, it is not a result of the
# study, and it writes only under <outdir>/cost/ (docs/cost.md). Its table is a page of
# `snakemake --report results/report.html all cost`. The job gives the calibration 20 minutes
# (--budget-s; AMOS on a GPU: about a minute per topology, cuDNN autotuning included);
# its memory and wall time are in the workflow profile (profiles/default).


rule cost:
    output:
        json=f"{OUT}/cost/cost.json",
        md=report(f"{OUT}/cost/cost.md", caption="../report/cost.rst", category="Cost"),
    log:
        f"{OUT}/logs/cost.log",
    conda:
        env_for(cost_gpus())
    threads: 2
    resources:
        gpu=cost_gpus(),
    params:
        configfiles=" ".join(str(f) for f in workflow.configfiles) or "config/config.yaml",
        outdir=lambda w, output: os.path.dirname(output.json),
    shell:
        "python -m seggrid cost --configfile {params.configfiles} --budget-s 1200 --out {params.outdir} > {log} 2>&1"
