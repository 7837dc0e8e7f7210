# Tables 1-4 and Figure 1.


rule tables:
    input:
        table_inputs,
    output:
        expand(f"{OUT}/tables/{{table}}.{{ext}}", table=list(config["tables"]), ext=["csv", "md"]),
        f"{OUT}/tables/provenance.json",
    params:
        config=tables_json(),
        outdir=lambda w, output: os.path.dirname(os.path.dirname(output[-1])),
    log:
        f"{OUT}/logs/tables.log",
    conda:
        ENV
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "python -m seggrid tables --config-json {params.config} --outdir {params.outdir} "
        "--tables-dir {params.outdir}/tables > {log} 2>&1"


rule figure1:
    input:
        unpack(fig1_logs),
    output:
        f"{OUT}/figures/fig1_curves.png",
    params:
        logs=lambda w, input: " ".join(
            f"--log {shlex.quote(fig1_label(k) + '=' + v)}" for k, v in input.items()
        ),
    log:
        f"{OUT}/logs/figure1.log",
    conda:
        ENV
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "python -m seggrid figures {params.logs} --out {output} > {log} 2>&1"
