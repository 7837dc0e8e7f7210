# Dataset -> validation -> fingerprint -> splits -> preprocessing -> plans.


rule make_demo_data:
    output:
        f"{DATA['root']}/dataset.json",
    log:
        f"{OUT}/logs/make_demo_data.log",
    benchmark:
        f"{OUT}/benchmarks/make_demo_data.tsv"
    conda:
        ENV
    params:
        root=lambda w, output: os.path.dirname(output[0]),
        seed=config["seed"],
        counts=f"--ct-train {DATA['demo_ct_train']} --mr-train {DATA['demo_mr_train']} "
        f"--ct-val {DATA['demo_ct_val']} --mr-val {DATA['demo_mr_val']}"
        + ("" if DATA["demo_organs"] is None else " --organs " + " ".join(shlex.quote(o) for o in DATA["demo_organs"])),
    shell:
        "python -m seggrid make-demo-data --out {params.root} --seed {params.seed} {params.counts} > {log} 2>&1"


rule validate_dataset:
    input:
        dataset_input,
    output:
        f"{OUT}/dataset/check.json",
    log:
        f"{OUT}/logs/validate_dataset.log",
    benchmark:
        f"{OUT}/benchmarks/validate_dataset.tsv"
    conda:
        ENV
    params:
        dataset=dataset_args(),
    shell:
        "python -m seggrid validate {params.dataset} --out {output} > {log} 2>&1"


rule fingerprint:
    input:
        f"{OUT}/dataset/check.json",
    output:
        f"{OUT}/dataset/fingerprint.json",
    log:
        f"{OUT}/logs/fingerprint.log",
    benchmark:
        f"{OUT}/benchmarks/fingerprint.tsv"
    conda:
        ENV
    params:
        dataset=dataset_args(),
        seed=config["seed"],
    shell:
        "python -m seggrid fingerprint {params.dataset} --seed {params.seed} --out {output} > {log} 2>&1"


rule split:
    input:
        f"{OUT}/dataset/check.json",
    output:
        f"{OUT}/dataset/splits.json",
    log:
        f"{OUT}/logs/split.log",
    benchmark:
        f"{OUT}/benchmarks/split.tsv"
    conda:
        ENV
    params:
        folds=config["folds"],
        seed=config["seed"],
        holdout=DATA["holdout_fraction"],
    shell:
        "python -m seggrid split --dataset-check {input} --folds {params.folds} --seed {params.seed} "
        "--holdout-fraction {params.holdout} --out {output} > {log} 2>&1"


rule preprocess:
    input:
        f"{OUT}/dataset/fingerprint.json",
    output:
        directory(f"{OUT}/preprocessed"),
    log:
        f"{OUT}/logs/preprocess.log",
    benchmark:
        f"{OUT}/benchmarks/preprocess.tsv"
    conda:
        ENV
    threads: config["preprocessing"]["threads"]
    params:
        dataset=dataset_args(),
        spacing=target_spacing_arg(),
        normalization=config["preprocessing"]["normalization"],
        seed=config["seed"],
    shell:
        "python -m seggrid preprocess {params.dataset} --fingerprint {input} {params.spacing} "
        "--normalization {params.normalization} --seed {params.seed} --threads {threads} --out {output} > {log} 2>&1"


rule plan:
    input:
        fingerprint=f"{OUT}/dataset/fingerprint.json",
        check=f"{OUT}/dataset/check.json",
    output:
        f"{OUT}/plans/{{setting}}.json",
    log:
        f"{OUT}/logs/plan/{{setting}}.log",
    benchmark:
        f"{OUT}/benchmarks/plan/{{setting}}.tsv"
    conda:
        ENV
    params:
        setting=setting_json,
        spacing=target_spacing_arg(),
    shell:
        "python -m seggrid plan --setting-json {params.setting} --fingerprint {input.fingerprint} "
        "--dataset-check {input.check} {params.spacing} --out {output} > {log} 2>&1"
