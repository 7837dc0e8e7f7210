# The paper's outputs: tables (CSV/MD/TeX with CIs and p-values), per-organ tables,
# Figure 1 (training curves), Figures 2-3 (slices), trend plots. Each is captioned in
# `snakemake --report results/report.html` (captions in workflow/report/).


rule table:
    input:
        table_inputs,
    output:
        csv=report(
            f"{OUT}/tables/{{table}}.csv",
            caption="../report/table.rst",
            category="Tables",
            labels={"table": "{table}", "format": "CSV"},
        ),
        md=f"{OUT}/tables/{{table}}.md",
        tex=f"{OUT}/tables/{{table}}.tex",
        provenance=f"{OUT}/tables/{{table}}.provenance.json",
        ranks=f"{OUT}/tables/{{table}}.ranks.json",
    log:
        f"{OUT}/logs/tables/{{table}}.log",
    benchmark:
        f"{OUT}/benchmarks/tables/{{table}}.tsv"
    conda:
        ENV
    params:
        config=tables_json,
        outdir=lambda w, output: os.path.dirname(os.path.dirname(output.csv)),
    shell:
        "python -m seggrid tables --config-json {params.config} --outdir {params.outdir} "
        "--tables-dir {params.outdir}/tables --table {wildcards.table} > {log} 2>&1"


rule per_organ_table:
    input:
        f"{OUT}/metrics/{{pset}}.csv",
    output:
        csv=report(
            f"{OUT}/tables/per_organ/{{pset}}.csv",
            caption="../report/per_organ.rst",
            category="Per-organ tables",
            labels={"prediction set": "{pset}"},
        ),
        md=f"{OUT}/tables/per_organ/{{pset}}.md",
    log:
        f"{OUT}/logs/tables/per_organ_{{pset}}.log",
    benchmark:
        f"{OUT}/benchmarks/tables/per_organ_{{pset}}.tsv"
    conda:
        ENV
    params:
        title=lambda w: shlex.quote(f"Per-organ scores of {w.pset}"),
    shell:
        "python -m seggrid per-organ --metrics-csv {input} --title {params.title} "
        "--out-csv {output.csv} --out-md {output.md} > {log} 2>&1"


rule figure1:
    input:
        unpack(fig1_logs),
    output:
        report(
            f"{OUT}/figures/fig1_curves.png",
            caption="../report/fig1.rst",
            category="Figures",
            labels={"figure": "1: training curves"},
        ),
    log:
        f"{OUT}/logs/figure1.log",
    benchmark:
        f"{OUT}/benchmarks/figure1.tsv"
    conda:
        ENV
    params:
        logs=lambda w, input: " ".join(f"--log {shlex.quote(f'{fig1_label(k)}={v}')}" for k, v in input.items()),
    shell:
        "python -m seggrid figures {params.logs} --out {output} > {log} 2>&1"


rule slice_figures:
    input:
        predictions=lambda w: f"{OUT}/predictions/{slices_pset()}",
        splits=f"{OUT}/dataset/splits.json",
        dataset=dataset_input,
    output:
        first=report(
            f"{OUT}/figures/fig2_slices.png",
            caption="../report/slices.rst",
            category="Figures",
            labels={"figure": "2: slices, CT case"},
        ),
        second=report(
            f"{OUT}/figures/fig3_slices.png",
            caption="../report/slices.rst",
            category="Figures",
            labels={"figure": "3: slices, MR (or second CT) case"},
        ),
    log:
        f"{OUT}/logs/slice_figures.log",
    benchmark:
        f"{OUT}/benchmarks/slice_figures.tsv"
    conda:
        ENV
    params:
        dataset=dataset_args(),
        name=lambda w: shlex.quote(slices_pset()),
    shell:
        "python -m seggrid slices --predictions {input.predictions} --splits {input.splits} --name {params.name} "
        "{params.dataset} --out-first {output.first} --out-second {output.second} > {log} 2>&1"


rule trend_plot:
    input:
        f"{OUT}/tables/{{table}}.csv",
    output:
        report(
            f"{OUT}/figures/trend_{{table}}.png",
            caption="../report/trend.rst",
            category="Figures",
            labels={"figure": "trend: {table}"},
        ),
    log:
        f"{OUT}/logs/trend_{{table}}.log",
    benchmark:
        f"{OUT}/benchmarks/trend_{{table}}.tsv"
    conda:
        ENV
    params:
        varied=lambda w: shlex.quote(config["tables"][w.table].get("varied", w.table)),
        title=lambda w: shlex.quote(config["tables"][w.table].get("title", w.table)),
    shell:
        "python -m seggrid trends --table {input} --varied {params.varied} --title {params.title} "
        "--out {output} > {log} 2>&1"


rule rank_plot:
    input:
        f"{OUT}/tables/{{table}}.ranks.json",
    output:
        report(
            f"{OUT}/figures/ranks_{{table}}.png",
            caption="../report/ranks.rst",
            category="Figures",
            labels={"figure": "ranks: {table}"},
        ),
    log:
        f"{OUT}/logs/ranks_{{table}}.log",
    benchmark:
        f"{OUT}/benchmarks/ranks_{{table}}.tsv"
    conda:
        ENV
    shell:
        "python -m seggrid rank-plot --ranks {input} --out {output} > {log} 2>&1"


# One target per table: `snakemake table1` builds that table, its per-organ tables and its
# trend plot, and only the plans, trainings, predictions and metrics its rows need.
for _table in config["tables"]:
    if _table in {r.name for r in workflow.rules} | {"all"}:
        raise WorkflowError(f"table name '{_table}' is also the name of a rule of the workflow; rename the table")

    rule:
        name:
            _table
        input:
            table_outputs(_table),
        localrule: True
