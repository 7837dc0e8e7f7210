# Input functions of the submission rules (submission.smk): which prediction set, whether the
# dataset lists test images (dataset.json only; nothing without a dataset on disk), and the
# targets the default target adds.
import math
from types import SimpleNamespace

from seggrid.data.dataset import listed_test_case_ids, load_dataset

SUBMISSION_PSET = last_row_pset(config["inference"]["submission_table"])
# a predict rule's inputs for the test images (PREDICT_INPUT of train.smk, preprocessed_test)
SUBMISSION_INPUT = dict(
    preprocessed=f"{OUT}/preprocessed_test",
    splits=f"{OUT}/dataset/splits.json",
    dataset=dataset_input,
)
SUBMISSION_MODELS = parse_prediction_set_id(SUBMISSION_PSET)[0]


def listed_test_cases():
    """Test case ids dataset.json lists now (dataset.json only; [] without a dataset on disk)."""
    return listed_test_case_ids(DATA["root"], DATA["mr_case_id_min"], DATA["modalities"])


def submission_enabled():
    mode = str(config["inference"]["submission"]).lower()  # --config gives "true", YAML true
    return bool(listed_test_cases()) if mode == "auto" else mode == "true"


def submission_outputs():
    """The submission targets the default target adds: [] when inference.submission is false, or auto
    without test images on disk."""
    return [f"{OUT}/submission"] if submission_enabled() else []


def submission_member_sets():
    """Single-model sets the submission's ensemble averages ([] for a single-model submission)."""
    if len(SUBMISSION_MODELS) < 2:
        return []
    return [single_model_set(config, SUBMISSION_PSET, m) for m in SUBMISSION_MODELS]


def submission_member_regex():
    import re

    return "|".join(re.escape(p) for p in submission_member_sets()) or "(?!)"


def submission_model_inputs(wildcards):
    """model.pt of each fold (and the postprocessing decision) of the submission's one model."""
    return model_inputs(SimpleNamespace(pset=SUBMISSION_PSET))


def submission_runtime(wildcards):
    """A predict job's wall time (`inference.runtime_min` per fold model, as common.smk's
    inference_runtime) scaled by how many more test cases than evaluation cases there are
    (known when the dataset is on disk), capped once by capped_runtime."""
    pset = getattr(wildcards, "pset", SUBMISSION_PSET)
    base = config["inference"]["runtime_min"] * len(parse_prediction_set_id(pset)[1])
    try:
        ds = load_dataset(DATA["root"], DATA["mr_case_id_min"], DATA["modalities"])
    except SeggridError:
        return base
    n_eval = len(ds.validation) or max(1, round(len(ds.training) * DATA["holdout_fraction"]))
    return capped_runtime(base * max(1, math.ceil(len(ds.test) / n_eval)))
