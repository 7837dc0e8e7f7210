# The submission: the dataset's test images (no labels; AMOS imagesTs, MSD `test`, nnU-Net v2
# imagesTs) predicted by the final prediction set, the last row of inference.submission_table
# (default: the last table; AMOS Task 1: Table 4's A & B ensemble). The same code as that
# set's evaluation predictions: the same models, fold averaging, postprocessing decision and
# ensembling, only the case list differs. Labels land in {OUT}/submission/<case><file_ending>
# in each test image's geometry. `inference.submission`: auto (when dataset.json is on disk
# and lists test images), true, false. Without data, `auto` plans nothing: `snakemake -n` works.
# Its input functions: submission_inputs.smk (included by the Snakefile after common.smk).
# Each rule here IS an evaluation rule (`use rule ... with:`): the same command line, with the
# test images' inputs and outputs and `--cases test` / `--test-cases` added to the dataset
# options, so the evaluation rules' command lines (which Snakemake records) are untouched.


# a predict job's resources (train.smk), its wall time scaled to the test images
SUBMISSION_RESOURCES = {**PREDICT_RESOURCES, "runtime": submission_runtime}


use rule preprocess as preprocess_test with:
    # The test images, preprocessed as the training cases (same fingerprint, spacing, scheme).
    output:
        directory(f"{OUT}/preprocessed_test"),
    log:
        f"{OUT}/logs/submission/preprocess_test.log",
    benchmark:
        f"{OUT}/benchmarks/submission/preprocess_test.tsv"
    params:
        dataset=f"{dataset_args()} --test-cases",


use rule predict_member as predict_test_member with:
    # One model of the submission's ensemble on the test images: quantised probabilities.
    input:
        unpack(model_inputs),
        **SUBMISSION_INPUT,
    output:
        labels=temp(directory(f"{OUT}/predictions_test/{{pset}}")),
        probabilities=temp(directory(f"{OUT}/probabilities_test/{{pset}}")),
    log:
        f"{OUT}/logs/submission/predict_test_member/{{pset}}.log",
    benchmark:
        f"{OUT}/benchmarks/submission/predict_test_member/{{pset}}.tsv"
    wildcard_constraints:
        pset=submission_member_regex(),
    resources:
        **SUBMISSION_RESOURCES,
    params:
        dataset=f"{dataset_args()} --cases test",


if submission_member_sets():

    use rule ensemble as submission with:
        # The ensemble of several models (A & B) on the test images.
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
        resources:
            # rule `ensemble`'s, from the workflow profile (profiles/default), capped
            mem_mb=WORKFLOW_PROFILE_RESOURCES["ensemble"]["mem_mb"],
            runtime=capped_runtime(WORKFLOW_PROFILE_RESOURCES["ensemble"]["runtime"]),
        params:
            dataset=f"--cases test {dataset_args()}",
            seed=prediction_set_seed(config, SUBMISSION_PSET),

else:

    use rule predict as submission with:
        # One model (its folds averaged, postprocessed) on the test images.
        input:
            unpack(submission_model_inputs),
            **SUBMISSION_INPUT,
        output:
            directory(f"{OUT}/submission"),
        log:
            f"{OUT}/logs/submission/submission.log",
        benchmark:
            f"{OUT}/benchmarks/submission/submission.tsv"
        resources:
            **SUBMISSION_RESOURCES,
        params:
            dataset=f"{dataset_args()} --cases test",
