# Training one (setting, fold) and predicting the evaluation cases with it. Resources come
# from the setting (gpus, threads, mem_mb, runtime_min); `gpu` is Snakemake's standard
# resource, which the SLURM executor turns into --gpus.


rule train:
    input:
        plan=f"{OUT}/plans/{{setting}}.json",
        preprocessed=f"{OUT}/preprocessed",
        splits=f"{OUT}/dataset/splits.json",
    output:
        model=f"{OUT}/train/{{setting}}/fold_{{fold}}/model.pt",
        log=f"{OUT}/train/{{setting}}/fold_{{fold}}/log.csv",
        summary=f"{OUT}/train/{{setting}}/fold_{{fold}}/summary.json",
    params:
        launcher=launcher,
        outdir=lambda w: f"{OUT}/train/{w.setting}/fold_{w.fold}",
        seed=config["seed"],
    threads: lambda w: setting(w)["threads"]
    resources:
        gpu=train_resource("gpu"),
        nodes=train_resource("nodes"),
        gres=train_resource("gres"),
        mem_mb=lambda w: setting(w)["mem_mb"],
        runtime=lambda w: setting(w)["runtime_min"],
    log:
        f"{OUT}/logs/train/{{setting}}/fold_{{fold}}.log",
    benchmark:
        f"{OUT}/benchmarks/train/{{setting}}/fold_{{fold}}.tsv"
    conda:
        lambda w: env_for(setting(w)["gpus"])
    shell:
        "{params.launcher} train --plan {input.plan} --preprocessed {input.preprocessed} --splits {input.splits} "
        "--fold {wildcards.fold} --seed {params.seed} --threads {threads} --out {params.outdir} > {log} 2>&1"


rule predict:
    # predict/: the evaluation cases (every prediction set is built from these);
    # predict_cv/: each fold's model on its own validation cases (out-of-fold), on which the
    # postprocessing decision of a 5-fold model is made.
    input:
        model=f"{OUT}/train/{{setting}}/fold_{{fold}}/model.pt",
        preprocessed=f"{OUT}/preprocessed",
        splits=f"{OUT}/dataset/splits.json",
    output:
        directory(f"{OUT}/{{predict}}/{{setting}}/fold_{{fold}}"),
    params:
        cases=lambda w: f"--cases cv --fold {w.fold}" if w.predict == "predict_cv" else "--cases evaluation",
        step=config["inference"]["step"],
        flips=config["inference"]["tta_flips"],
        gpus=config["inference"]["gpus"],
    threads: config["inference"]["threads"]
    resources:
        gpu=config["inference"]["gpus"],
        mem_mb=config["inference"]["mem_mb"],
        runtime=config["inference"]["runtime_min"],
    log:
        f"{OUT}/logs/{{predict}}/{{setting}}/fold_{{fold}}.log",
    benchmark:
        f"{OUT}/benchmarks/{{predict}}/{{setting}}/fold_{{fold}}.tsv"
    conda:
        env_for(config["inference"]["gpus"])
    shell:
        "python -m seggrid predict --model {input.model} --preprocessed {input.preprocessed} --splits {input.splits} "
        "{params.cases} --step {params.step} --tta-flips {params.flips} --threads {threads} --gpus {params.gpus} "
        "--out {output} > {log} 2>&1"
