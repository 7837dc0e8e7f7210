# Averaging members into a prediction set (one model, a 5-fold ensemble, or A & B) and
# scoring it: DSC and NSD per organ per case.


rule postprocess_decision:
    input:
        cv=lambda w: [f"{OUT}/predict_cv/{w.setting}/fold_{f}" for f in range(config["folds"])],
        preprocessed=f"{OUT}/preprocessed",
    output:
        f"{OUT}/postprocessing/{{setting}}.json",
    params:
        seed=config["seed"],
    log:
        f"{OUT}/logs/postprocessing/{{setting}}.log",
    conda:
        ENV
    resources:
        mem_mb=8000,
        runtime=60,
    shell:
        "python -m seggrid postprocess-decide --cv-predictions {input.cv} --preprocessed {input.preprocessed} "
        "--seed {params.seed} --out {output} > {log} 2>&1"


rule ensemble:
    input:
        unpack(ensemble_inputs),
        preprocessed=f"{OUT}/preprocessed",
    output:
        directory(f"{OUT}/predictions/{{pset}}"),
    params:
        dataset=dataset_args(),
        seed=config["seed"],
        postprocessing=lambda w, input: " ".join(
            f"--postprocessing {shlex.quote(f'{Path(p).stem}={p}')}"
            for p in input.get("postprocessing", [])
        ),
    log:
        f"{OUT}/logs/ensemble/{{pset}}.log",
    conda:
        ENV
    resources:
        mem_mb=8000,
        runtime=60,
    shell:
        "python -m seggrid ensemble --members {input.members} {params.postprocessing} "
        "--preprocessed {input.preprocessed} {params.dataset} --seed {params.seed} --out {output} > {log} 2>&1"


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
    threads: config["metrics"]["threads"]
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
        "--out-json {output.summary} --seed {params.seed} --threads {threads} > {log} 2>&1"
