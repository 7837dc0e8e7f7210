# Averaging members into a prediction set (one model, a 5-fold ensemble, or A & B) and
# scoring it: DSC and NSD per organ per case.


rule ensemble:
    input:
        members=ensemble_members,
        preprocessed=f"{OUT}/preprocessed",
    output:
        directory(f"{OUT}/predictions/{{pset}}"),
    params:
        dataset=dataset_args(),
        seed=config["seed"],
    log:
        f"{OUT}/logs/ensemble/{{pset}}.log",
    conda:
        ENV
    resources:
        mem_mb=8000,
        runtime=60,
    shell:
        "python -m seggrid ensemble --members {input.members} --preprocessed {input.preprocessed} "
        "{params.dataset} --seed {params.seed} --out {output} > {log} 2>&1"


rule evaluate:
    input:
        predictions=f"{OUT}/predictions/{{pset}}",
        splits=f"{OUT}/dataset/splits.json",
    output:
        csv=f"{OUT}/metrics/{{pset}}.csv",
        summary=f"{OUT}/metrics/{{pset}}.json",
    params:
        dataset=dataset_args(),
        seed=config["seed"],
        metrics=shlex.quote(json.dumps(config["metrics"], sort_keys=True)),
    log:
        f"{OUT}/logs/evaluate/{{pset}}.log",
    conda:
        ENV
    resources:
        mem_mb=8000,
        runtime=60,
    shell:
        "python -m seggrid evaluate --predictions {input.predictions} {params.dataset} "
        "--splits {input.splits} --metrics-json {params.metrics} --out-csv {output.csv} "
        "--out-json {output.summary} --seed {params.seed} > {log} 2>&1"
