# Training one (setting, fold, training seed) and predicting the evaluation cases with it.
# A seed S other than the base `seed` adds /seed_S to the paths (seggrid/layout.py): the
# `seedpath` wildcard of this rule is '' or /seed_<S>. Resources come
# from the setting (gpus, threads, mem_mb, runtime_min); `gpu` is Snakemake's standard
# resource, which the SLURM executor turns into --gpus. A multi-node setting gets nodes,
# gres (GPUs per node) and the executor's mpi/tasks resources instead (engine/launch.py).
# gpu_model and the GPU partition of the site profile reach only jobs with GPUs (site_profile.py).
from seggrid.site_profile import gpu_model_resource, gres_resource, partition_resource


rule train:
    input:
        plan=plan_input,
        preprocessed=f"{OUT}/preprocessed",
        splits=f"{OUT}/dataset/splits.json",
    output:
        model=f"{OUT}/train/{{setting}}{{seedpath}}/fold_{{fold}}/model.pt",
        log=f"{OUT}/train/{{setting}}{{seedpath}}/fold_{{fold}}/log.csv",
        summary=f"{OUT}/train/{{setting}}{{seedpath}}/fold_{{fold}}/summary.json",
    log:
        f"{OUT}/logs/train/{{setting}}{{seedpath}}/fold_{{fold}}.log",
    benchmark:
        f"{OUT}/benchmarks/train/{{setting}}{{seedpath}}/fold_{{fold}}.tsv"
    wildcard_constraints:
        seedpath=SEED_PATH,
    conda:
        lambda w: env_for(setting(w)["gpus"])
    threads: lambda w: setting(w)["threads"]
    resources:
        gpu=train_resource("gpu"),
        gpu_model=gpu_model_resource(workflow, train_resource("gpu")),
        slurm_partition=partition_resource(workflow, train_resource("gpu"), train_resource("gres")),
        nodes=train_resource("nodes"),
        gres=gres_resource(workflow, train_resource("gres")),
        mpi=train_resource("mpi"),
        tasks=train_resource("tasks"),
        tasks_per_gpu=train_resource("tasks_per_gpu"),
        mem_mb=lambda w: setting(w)["mem_mb"],
        runtime=lambda w: capped_runtime(setting(w)["runtime_min"]),
    params:
        launcher=launcher,
        gpus=train_gpus,
        requeue_margin=requeue_margin,
        outdir=lambda w: f"{OUT}/train/{w.setting}{w.seedpath}/fold_{w.fold}",
        seed=train_seed,
    shell:
        "{params.launcher} train --plan {input.plan} --preprocessed {input.preprocessed} --splits {input.splits} "
        "--fold {wildcards.fold} --seed {params.seed} --threads {threads} --gpus {params.gpus} --requeue-margin-min {params.requeue_margin} --out {params.outdir} > {log} 2>&1"


# Prediction writes only what a later step reads (inference/predict.py): labels in the input geometry
# for every prediction set; quantised probabilities (temp) only for the models an ensemble of
# several models averages; target-spacing labels (temp) of each fold's out-of-fold cases for
# the postprocessing decision. A 5-fold model is ONE job, its folds averaged in memory.
SINGLE_MODEL_SET = r"[A-Za-z0-9][A-Za-z0-9_-]*__f[0-9-]+(__s[0-9]+)?"


rule predict_cv:
    input:
        model=f"{OUT}/train/{{setting}}/fold_{{fold}}/model.pt",
        preprocessed=f"{OUT}/preprocessed",
        splits=f"{OUT}/dataset/splits.json",
    output:
        temp(directory(f"{OUT}/predict_cv/{{setting}}/fold_{{fold}}")),
    log:
        f"{OUT}/logs/predict_cv/{{setting}}/fold_{{fold}}.log",
    benchmark:
        f"{OUT}/benchmarks/predict_cv/{{setting}}/fold_{{fold}}.tsv"
    conda:
        env_for(config["inference"]["gpus"])
    threads: config["inference"]["threads"]
    resources:
        gpu=config["inference"]["gpus"],
        gpu_model=gpu_model_resource(workflow, config["inference"]["gpus"]),
        slurm_partition=partition_resource(workflow, config["inference"]["gpus"]),
        mem_mb=config["inference"]["mem_mb"],
        runtime=capped_runtime(config["inference"]["runtime_min"]),
    params:
        step=config["inference"]["step"],
        flips=config["inference"]["tta_flips"],
        gpus=config["inference"]["gpus"],
    shell:
        "python -m seggrid predict --model {input.model} --preprocessed {input.preprocessed} --splits {input.splits} "
        "--cases cv --fold {wildcards.fold} --step {params.step} --tta-flips {params.flips} --threads {threads} "
        "--gpus {params.gpus} --target-labels-out {output} > {log} 2>&1"


# predict_member and predict run one command with the same inputs and resources; a member of an
# ensemble of several models also writes its quantised probabilities. Shared here, so that each
# rule's command line (and its recorded code and params) stays as it was ({{ }}: a literal brace).
PREDICT_INPUT = dict(
    preprocessed=f"{OUT}/preprocessed",
    splits=f"{OUT}/dataset/splits.json",
    dataset=dataset_input,
)
PREDICT_RESOURCES = dict(
    gpu=config["inference"]["gpus"],
    gpu_model=gpu_model_resource(workflow, config["inference"]["gpus"]),
    slurm_partition=partition_resource(workflow, config["inference"]["gpus"]),
    mem_mb=config["inference"]["mem_mb"],
    runtime=inference_runtime,
)
PREDICT_PARAMS = dict(
    dataset=dataset_args(),
    postprocessing=postprocessing_arg,
    step=config["inference"]["step"],
    flips=config["inference"]["tta_flips"],
    gpus=config["inference"]["gpus"],
)
PREDICT_COMMAND = (
    "python -m seggrid predict --model {input.models} {params.postprocessing} --preprocessed {input.preprocessed} "
    "--splits {input.splits} {params.dataset} --step {params.step} --tta-flips {params.flips} --threads {threads} "
    "--gpus {params.gpus} --labels-out "
)


rule predict_member:
    input:
        unpack(model_inputs),
        **PREDICT_INPUT,
    output:
        labels=directory(f"{OUT}/predictions/{{pset}}"),
        probabilities=temp(directory(f"{OUT}/probabilities/{{pset}}")),
    log:
        f"{OUT}/logs/predict_member/{{pset}}.log",
    benchmark:
        f"{OUT}/benchmarks/predict_member/{{pset}}.tsv"
    wildcard_constraints:
        pset=member_regex(),
    conda:
        env_for(config["inference"]["gpus"])
    threads: config["inference"]["threads"]
    resources:
        **PREDICT_RESOURCES,
    params:
        **PREDICT_PARAMS,
    shell:
        f"{PREDICT_COMMAND}{{output.labels}} --probabilities-out {{output.probabilities}} > {{log}} 2>&1"


rule predict:
    input:
        unpack(model_inputs),
        **PREDICT_INPUT,
    output:
        directory(f"{OUT}/predictions/{{pset}}"),
    log:
        f"{OUT}/logs/predict/{{pset}}.log",
    benchmark:
        f"{OUT}/benchmarks/predict/{{pset}}.tsv"
    wildcard_constraints:
        pset=SINGLE_MODEL_SET,
    conda:
        env_for(config["inference"]["gpus"])
    threads: config["inference"]["threads"]
    resources:
        **PREDICT_RESOURCES,
    params:
        **PREDICT_PARAMS,
    shell:
        f"{PREDICT_COMMAND}{{output}} > {{log}} 2>&1"


ruleorder: predict_member > predict
