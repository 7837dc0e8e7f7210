# `snakemake cost`: what the grid will cost, measured on the device this job gets (a GPU when
# any training uses one). Outside `all`: it measures the machine, it is not a result of the
# study, and it writes only under <outdir>/cost/ (docs/cost.md). Its table is a page of
# `snakemake --report results/report.html all cost`.


def cost_gpus():
    return int(any(resolve_setting(config, s)["gpus"] > 0 for s in config["settings"]))


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
        mem_mb=8000,
        runtime=30,
    params:
        configfiles=" ".join(str(f) for f in workflow.configfiles) or "config/config.yaml",
        outdir=lambda w, output: os.path.dirname(output.json),
    shell:
        "python -m seggrid cost --configfile {params.configfiles} --out {params.outdir} > {log} 2>&1"
