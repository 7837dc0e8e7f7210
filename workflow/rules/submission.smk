# The submission: the dataset's test images (no labels; AMOS imagesTs, MSD `test`, nnU-Net v2
# imagesTs) predicted by the final prediction set, the last row of inference.submission_table
# (default: the last table; AMOS Task 1: Table 4's A & B ensemble). The same code as that
# set's evaluation predictions: the same models, fold averaging, postprocessing decision and
# ensembling, only the case list differs. Labels land in {OUT}/submission/<case><file_ending>
# in each test image's geometry. `inference.submission`: auto (when dataset.json is on disk
# and lists test images), true, false. Without data, `auto` plans nothing: `snakemake -n` works.
# Its input functions: submission_inputs.smk (included by the Snakefile after common.smk).


rule preprocess_test:
    # The test images, preprocessed as the training cases (same fingerprint, spacing, scheme).
    input:
        fingerprint=f"{OUT}/dataset/fingerprint.json",
        dataset=dataset_input,
    output:
        directory(f"{OUT}/preprocessed_test"),
    log:
        f"{OUT}/logs/submission/preprocess_test.log",
    benchmark:
        f"{OUT}/benchmarks/submission/preprocess_test.tsv"
    conda:
        ENV
    threads: config["preprocessing"]["threads"]
    params:
        dataset=dataset_args(),
        spacing=target_spacing_arg(),
        normalization=config["preprocessing"]["normalization"],
        seed=config["seed"],
    shell:
        "python -m seggrid preprocess {params.dataset} --fingerprint {input.fingerprint} {params.spacing} "
        "--normalization {params.normalization} --seed {params.seed} --threads {threads} --test-cases "
        "--out {output} > {log} 2>&1"


rule predict_test_member:
    # One model of the submission's ensemble on the test images: quantised probabilities.
    input:
        unpack(model_inputs),
        preprocessed=f"{OUT}/preprocessed_test",
        dataset=dataset_input,
    output:
        temp(directory(f"{OUT}/probabilities_test/{{pset}}")),
    log:
        f"{OUT}/logs/submission/predict_test_member/{{pset}}.log",
    benchmark:
        f"{OUT}/benchmarks/submission/predict_test_member/{{pset}}.tsv"
    wildcard_constraints:
        pset=submission_member_regex(),
    conda:
        env_for(config["inference"]["gpus"])
    threads: config["inference"]["threads"]
    resources:
        gpu=config["inference"]["gpus"],
        gpu_model=gpu_model_resource(workflow, config["inference"]["gpus"]),
        slurm_partition=partition_resource(workflow, config["inference"]["gpus"]),
        mem_mb=config["inference"]["mem_mb"],
        runtime=submission_runtime,
    params:
        dataset=dataset_args(),
        postprocessing=postprocessing_arg,
        step=config["inference"]["step"],
        flips=config["inference"]["tta_flips"],
        gpus=config["inference"]["gpus"],
    shell:
        "python -m seggrid predict --model {input.models} {params.postprocessing} --preprocessed {input.preprocessed} "
        "--cases test {params.dataset} --step {params.step} --tta-flips {params.flips} --threads {threads} "
        "--gpus {params.gpus} --probabilities-out {output} > {log} 2>&1"


if submission_member_sets():

    rule submission:
        # The ensemble of several models (A & B) on the test images, as rule `ensemble`.
        input:
            members=[f"{OUT}/probabilities_test/{p}" for p in submission_member_sets()],
            preprocessed=f"{OUT}/preprocessed_test",
            dataset=dataset_input,
        output:
            directory(f"{OUT}/submission"),
        log:
            f"{OUT}/logs/submission/submission.log",
        benchmark:
            f"{OUT}/benchmarks/submission/submission.tsv"
        conda:
            ENV
        resources:
            # rule `ensemble`'s, from the workflow profile (profiles/default), capped
            mem_mb=WORKFLOW_PROFILE_RESOURCES["ensemble"]["mem_mb"],
            runtime=capped_runtime(WORKFLOW_PROFILE_RESOURCES["ensemble"]["runtime"]),
        params:
            dataset=dataset_args(),
            seed=prediction_set_seed(config, SUBMISSION_PSET),
        shell:
            "python -m seggrid ensemble --cases test --members {input.members} --preprocessed {input.preprocessed} "
            "{params.dataset} --seed {params.seed} --out {output} > {log} 2>&1"

else:

    rule submission:
        # One model (its folds averaged, postprocessed) on the test images, as rule `predict`.
        input:
            unpack(submission_model_inputs),
            preprocessed=f"{OUT}/preprocessed_test",
            dataset=dataset_input,
        output:
            directory(f"{OUT}/submission"),
        log:
            f"{OUT}/logs/submission/submission.log",
        benchmark:
            f"{OUT}/benchmarks/submission/submission.tsv"
        conda:
            env_for(config["inference"]["gpus"])
        threads: config["inference"]["threads"]
        resources:
            gpu=config["inference"]["gpus"],
            gpu_model=gpu_model_resource(workflow, config["inference"]["gpus"]),
            slurm_partition=partition_resource(workflow, config["inference"]["gpus"]),
            mem_mb=config["inference"]["mem_mb"],
            runtime=submission_runtime,
        params:
            dataset=dataset_args(),
            postprocessing=postprocessing_arg,
            step=config["inference"]["step"],
            flips=config["inference"]["tta_flips"],
            gpus=config["inference"]["gpus"],
        shell:
            "python -m seggrid predict --model {input.models} {params.postprocessing} --preprocessed {input.preprocessed} "
            "--cases test {params.dataset} --step {params.step} --tta-flips {params.flips} --threads {threads} "
            "--gpus {params.gpus} --labels-out {output} > {log} 2>&1"
