# Shared set-up and input functions. The config is validated (and its defaults filled) by
# the same code the `seggrid check-config` CLI uses; nothing here reads the dataset, so
# `snakemake -n` works before the data is downloaded.
import json
import os
import shlex
import sys
from pathlib import Path

import yaml

from snakemake.exceptions import WorkflowError

PACKAGE_DIR = Path(workflow.basedir) / "workflow"
sys.path.insert(0, str(PACKAGE_DIR))

from seggrid.config import (  # noqa: E402
    MIN_RANK_ROWS,
    model_setting,
    resolve_setting,
    row_models,
    validate_config,
)
from seggrid.layout import (  # noqa: E402
    metrics_file,
    multi_seed_prediction_sets,
    parse_prediction_set_id,
    plan_file,
    prediction_set_seed,
    prediction_sets,
    row_prediction_sets,
    SEED_PATH,
    seed_of_path,
    single_model_set,
    table_file,
    training_dir,
    training_jobs,
)
from seggrid.errors import SeggridError  # noqa: E402
from seggrid.engine.launch import cluster_resources, launch_command  # noqa: E402

try:
    validate_config(config, source="config (--configfile / --config)")
except SeggridError as exc:
    raise WorkflowError(str(exc))

OUT = config["outdir"]
# the workflow profile's resources of the CPU steps (a rule that runs another's step reuses them)
WORKFLOW_PROFILE_RESOURCES = yaml.safe_load(
    (Path(workflow.basedir) / "profiles" / "default" / "config.yaml").read_text()
)["set-resources"]
DATA = config["dataset"]
ENV = "../../envs/seggrid.yaml"
CUDA_ENV = "../../envs/seggrid-cuda.yaml"
# The rules call the package from this checkout. Without --sdm conda, `python` in a job is
# the interpreter running Snakemake (e.g. .venv/bin/python); with it, the rule's conda env.
try:
    from snakemake.settings.types import DeploymentMethod

    USE_CONDA = DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
except (ImportError, AttributeError):
    USE_CONDA = False
_path = "" if USE_CONDA else f"export PATH={shlex.quote(os.path.dirname(sys.executable))}:$PATH; "
shell.prefix(f"{_path}export PYTHONPATH={shlex.quote(str(PACKAGE_DIR))}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; ")


wildcard_constraints:
    setting=r"[A-Za-z0-9][A-Za-z0-9_-]*",
    fold=r"\d+",
    pset=r"[A-Za-z0-9_+-]+",
    table=r"[A-Za-z0-9_-]+",
    predict=r"predict|predict_cv",


def dataset_args():
    """--dataset-style options shared by every step that reads the dataset."""
    m = DATA["mr_case_id_min"]
    args = f"--dataset {shlex.quote(DATA['root'])} --modalities {' '.join(DATA['modalities'])}"
    return args if m is None else f"{args} --mr-case-id-min {m}"


def target_spacing_arg():
    t = config["preprocessing"]["target_spacing"]
    return "" if t is None else "--target-spacing " + " ".join(str(v) for v in t)


def dataset_input(wildcards):
    """The demo dataset is built by a rule; a real dataset is only read by the jobs."""
    return [f"{DATA['root']}/dataset.json"] if DATA["demo"] else []


def setting(wildcards):
    return resolve_setting(config, wildcards.setting)


def plan_input(wildcards):
    return f"{OUT}/{plan_file(wildcards.setting)}"


def train_seed(wildcards):
    """The training seed of a train job, from its `seedpath` wildcard (layout.SEED_PATH)."""
    return seed_of_path(config, wildcards.seedpath)


def pset_seed(wildcards):
    """The training seed of a prediction set's models (recorded in its provenance)."""
    return prediction_set_seed(config, wildcards.pset)


def setting_json(wildcards):
    """The `plan` rule's setting: without its scheduling keys (gpus, threads, mem_mb, runtime_min;
    config.SCHEDULING_KEYS), so changing a resource reruns neither the plan nor any training."""
    return shlex.quote(json.dumps(model_setting(setting(wildcards)), sort_keys=True))


def train_gpus(wildcards, threads):
    """A train job's GPU count for `train --gpus`. Taking `threads` makes Snakemake treat this
    param as derived from resources, which it never compares for reruns: changing `gpus`
    (2 ranks -> 1) resumes a half-done training instead of restarting it."""
    return setting(wildcards)["gpus"]


def requeue_margin(wildcards, threads):
    """`cluster.requeue_margin_min` for `train --requeue-margin-min`: a param derived from
    resources (it takes `threads`), so changing it reruns no training."""
    return config["cluster"]["requeue_margin_min"]


def capped_runtime(minutes):
    """A job's wall time, capped by `cluster.max_runtime_min` (a training past the cap is
    checkpointed and requeued by itself, engine/walltime.py)."""
    cap = config["cluster"]["max_runtime_min"]
    return minutes if cap is None else min(minutes, cap)


def launcher(wildcards, resources):
    """One process, one torchrun per node, or one torchrun agent per node started by the
    job's task launcher (its `mpi` resource, srun) across nodes (engine/launch.py)."""
    return launch_command(setting(wildcards)["gpus"], config["cluster"]["gpus_per_node"], resources.get("mpi"))


def train_resource(name):
    """A cluster resource of a training job (gpu, nodes, gres; engine/launch.py)."""
    return lambda w: cluster_resources(setting(w)["gpus"], config["cluster"]["gpus_per_node"])[name]


def env_for(gpus):
    """The conda env of a job: the CUDA build of torch for GPU jobs (with --sdm conda)."""
    return CUDA_ENV if gpus > 0 else ENV


def cost_gpus():
    """The `cost` job's GPUs: one when any setting trains on GPUs (their time is measured there)."""
    return int(any(resolve_setting(config, s)["gpus"] > 0 for s in config["settings"]))


def uses_all_folds(folds):
    return sorted(folds) == list(range(config["folds"]))


def model_inputs(wildcards):
    """A single-model prediction set: the model.pt of each of its folds (averaged in one
    predict job) and, for a model of every fold with `inference.postprocessing` on, its
    postprocessing decision."""
    models, folds = parse_prediction_set_id(wildcards.pset)
    if len(models) != 1:
        raise WorkflowError(f"{wildcards.pset}: a prediction job predicts one setting's folds")
    seed = prediction_set_seed(config, wildcards.pset)
    inputs = {"models": [f"{OUT}/{training_dir(config, models[0], f, seed)}/model.pt" for f in folds]}
    if config["inference"]["postprocessing"] and uses_all_folds(folds):
        inputs["postprocessing"] = f"{OUT}/postprocessing/{models[0]}.json"
    return inputs


def postprocessing_arg(wildcards, input):
    p = input.get("postprocessing")
    return f"--postprocessing {shlex.quote(p)}" if p else ""


def member_sets():
    """Single-model prediction sets whose quantised probabilities an ensemble of several
    models reads (e.g. model A and model B of Table 4's A & B row)."""
    out = []
    for pset in prediction_sets(config):
        models = parse_prediction_set_id(pset)[0]
        if len(models) > 1:
            out += [single_model_set(config, pset, m) for m in models]
    return list(dict.fromkeys(out))


def member_regex():
    """Wildcard constraint matching exactly the member sets (matches nothing when none)."""
    import re

    return "|".join(re.escape(p) for p in member_sets()) or "(?!)"


def ensemble_members(wildcards):
    models = parse_prediction_set_id(wildcards.pset)[0]
    return [f"{OUT}/probabilities/{single_model_set(config, wildcards.pset, m)}" for m in models]


def inference_runtime(wildcards):
    """`inference.runtime_min` is per fold model; a 5-fold model's job runs its 5 folds."""
    return capped_runtime(config["inference"]["runtime_min"] * len(parse_prediction_set_id(wildcards.pset)[1]))


def table_spec(name):
    if name not in config["tables"]:
        raise WorkflowError(f"no table '{name}' in the config's tables: {sorted(config['tables'])}")
    return config["tables"][name]


def table_prediction_sets(name):
    """The prediction sets of one table's rows (one per row and training seed)."""
    table = table_spec(name)
    return list(dict.fromkeys(p for row in table["rows"] for _, p in row_prediction_sets(config, table, row)))


def table_settings(name):
    return list(dict.fromkeys(m for row in table_spec(name)["rows"] for m in row_models(row)))


def table_inputs(wildcards):
    """This table's rows (their metrics, plans and trainings) and the summaries of the grid's
    multi-seed rows (the seed SD a one-seed table borrows for "seeds needed"); outputs/report.py
    reads no other, so a failed job of another table's one-seed row blocks no table."""
    psets = table_prediction_sets(wildcards.table)
    files = [f"{OUT}/{metrics_file(p, ext)}" for p in psets for ext in ("json", "csv")]
    files += [f"{OUT}/{plan_file(s)}" for s in table_settings(wildcards.table)]
    files += [f"{OUT}/{metrics_file(p, 'json')}" for row in multi_seed_prediction_sets(config) for p in row]
    for p in psets:
        models, folds = parse_prediction_set_id(p)
        seed = prediction_set_seed(config, p)
        files += [f"{OUT}/{training_dir(config, m, f, seed)}/summary.json" for m in models for f in folds]
    return list(dict.fromkeys(files))


def table_outputs(name):
    """Everything `snakemake <table>` builds: the table, its per-organ tables, trend and rank plots."""
    outs = [f"{OUT}/{table_file(name, ext)}" for ext in ("csv", "md", "tex")]
    outs += [f"{OUT}/tables/per_organ/{p}.{ext}" for p in table_prediction_sets(name) for ext in ("csv", "md")]
    if name in trend_tables():
        outs.append(f"{OUT}/figures/trend_{name}.png")
    if len(table_spec(name)["rows"]) >= MIN_RANK_ROWS:
        outs.append(f"{OUT}/figures/ranks_{name}.png")
    return list(dict.fromkeys(outs))


def fig1_logs(wildcards):
    return {s: f"{OUT}/train/{s}/fold_0/log.csv" for s in config["figures"]["fig1_settings"]}


def fig1_label(name):
    s = resolve_setting(config, name)
    return f"{name} (batch {s['batch']})"


def tables_json(wildcards):
    """The `table` rule's config: this table and its own settings only, without scheduling keys
    (config.SCHEDULING_KEYS): a table is made from the outputs, so changing a setting's
    resources, or another table, does not rebuild it."""
    keep = {k: config[k] for k in ("folds", "seed", "training_seeds")}
    keep["tables"] = {wildcards.table: table_spec(wildcards.table)}
    keep["seed_sd_sources"] = multi_seed_prediction_sets(config)
    keep["recipe"] = model_setting(config["recipe"])
    keep["settings"] = {name: model_setting(config["settings"][name]) for name in table_settings(wildcards.table)}
    return shlex.quote(json.dumps(keep, sort_keys=True))


def last_row_pset(table_name):
    """The prediction set of the last row of table ``table_name`` (None: the last table)."""
    table = config["tables"][table_name or list(config["tables"])[-1]]
    return row_prediction_sets(config, table, table["rows"][-1])[0][1]


def slices_pset():
    """The prediction set Figures 2-3 show: the last row of `figures.slices_table` (default:
    the last table), e.g. Table 4's A & B ensemble."""
    return last_row_pset(config["figures"]["slices_table"])


def trend_tables():
    return [t for t, spec in config["tables"].items() if spec.get("varied") in ("patch", "batch")]


def all_outputs():
    outs = [f for t in config["tables"] for f in table_outputs(t)]
    if config["figures"]["slices"]:
        outs += [f"{OUT}/figures/fig2_slices.png", f"{OUT}/figures/fig3_slices.png"]
    if config["figures"]["fig1_settings"]:
        outs.append(f"{OUT}/figures/fig1_curves.png")
    return list(dict.fromkeys(outs))
