# The postprocessing decision of a 5-fold model, the ensemble of several models (A & B), and
# scoring a prediction set: DSC and NSD per organ per case. All three stream the cases.


rule postprocess_decision:
    input:
        cv=lambda w: [f"{OUT}/predict_cv/{w.setting}/fold_{f}" for f in range(config["folds"])],
        preprocessed=f"{OUT}/preprocessed",
    output:
        f"{OUT}/postprocessing/{{setting}}.json",
    log:
        f"{OUT}/logs/postprocessing/{{setting}}.log",
    benchmark:
        f"{OUT}/benchmarks/postprocessing/{{setting}}.tsv"
    conda:
        ENV
    params:
        seed=config["seed"],
    shell:
        "python -m seggrid postprocess-decide --cv-predictions {input.cv} --preprocessed {input.preprocessed} "
        "--seed {params.seed} --out {output} > {log} 2>&1"


rule ensemble:
    # Several models (e.g. A & B): their quantised maps, each already fold-averaged and
    # postprocessed by its predict job, averaged one case and one class at a time.
    input:
        members=ensemble_members,
        preprocessed=f"{OUT}/preprocessed",
        dataset=dataset_input,
    output:
        directory(f"{OUT}/predictions/{{pset}}"),
    log:
        f"{OUT}/logs/ensemble/{{pset}}.log",
    benchmark:
        f"{OUT}/benchmarks/ensemble/{{pset}}.tsv"
    wildcard_constraints:
        pset=r"[A-Za-z0-9][A-Za-z0-9_-]*(\+[A-Za-z0-9][A-Za-z0-9_-]*)+__f[0-9-]+(__s[0-9]+)?",
    conda:
        ENV
    params:
        dataset=dataset_args(),
        seed=pset_seed,
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
    log:
        f"{OUT}/logs/evaluate/{{pset}}.log",
    benchmark:
        f"{OUT}/benchmarks/evaluate/{{pset}}.tsv"
    conda:
        ENV
    threads: config["metrics"]["threads"]
    params:
        dataset=dataset_args(),
        seed=pset_seed,
        metrics=shlex.quote(json.dumps(config["metrics"], sort_keys=True)),
    shell:
        "python -m seggrid evaluate --predictions {input.predictions} {params.dataset} "
        "--splits {input.splits} --metrics-json {params.metrics} --out-csv {output.csv} "
        "--out-json {output.summary} --seed {params.seed} --threads {threads} > {log} 2>&1"
