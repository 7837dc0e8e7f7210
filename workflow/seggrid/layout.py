"""Where every result of a run lives, relative to ``outdir``, and the names the paths are built
from. One module names them all: the rules (workflow/rules/common.smk), ``seggrid status`` and
the tables read them from here instead of writing or decoding path strings of their own.

    plans/<setting>.json                          plan_file
    train/<setting>[/seed_<S>]/fold_<f>/          training_dir   (model.pt, log.csv, summary.json)
    train/<setting>[/seed_<S>]/fold_<f>/runs/     run_log_name   (one log per run of the job)
    logs/train/<setting>[/seed_<S>]/fold_<f>.log  training_log   (Snakemake's: the latest run)
    predictions/<set>/                            predictions_dir
    metrics/<set>.csv, metrics/<set>.json         metrics_file
    tables/<table>.<ext>                          table_file

A training seed other than the base ``seed`` adds ``/seed_<S>``; the base seed keeps the plain
paths (results of earlier versions stay valid). A prediction set (:class:`PredictionSet`: the
models, the folds averaged, the training seed) is named ``A+B__f0-1-2-3-4`` and, for another
seed S, ``a__f0__sS``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from seggrid.config import base_seed, row_folds, row_models, row_seeds

_SEED_SUFFIX = re.compile(r"__s([0-9]+)$")
#: the first line of a training run's own log (``<training dir>/runs/<start>_job<id>.log``)
RUN_HEADER = "[train] run started"
#: the folder of a training dir that keeps one log per run (a requeued job runs several times;
#: Snakemake's log of the job holds only the latest run)
RUN_LOGS = "runs"


@dataclass(frozen=True)
class PredictionSet:
    """The averaged prediction of ``models`` x ``folds`` trained with ``seed`` (None: the base seed)."""

    models: tuple[str, ...]
    folds: tuple[int, ...]
    seed: int | None = None

    @property
    def id(self) -> str:
        return "+".join(self.models) + "__f" + "-".join(str(f) for f in self.folds) + (
            "" if self.seed is None else f"__s{self.seed}")

    @classmethod
    def parse(cls, pset: str) -> "PredictionSet":
        m = _SEED_SUFFIX.search(pset)
        models, folds = _SEED_SUFFIX.sub("", pset).rsplit("__f", 1)
        return cls(tuple(models.split("+")), tuple(int(f) for f in folds.split("-")),
                   int(m.group(1)) if m else None)

    def training_seed(self, config: dict) -> int:
        return base_seed(config) if self.seed is None else self.seed

    def member(self, model: str) -> "PredictionSet":
        """One model of this set with its folds and seed (an ensemble's member)."""
        return PredictionSet((model,), self.folds, self.seed)


def seed_dir(config: dict, seed: int) -> str:
    """The path component of a training seed under ``train/<setting>``: '' for the base
    ``seed`` (plain ``train/<setting>/fold_<f>``), ``/seed_<S>`` for another seed S."""
    return "" if seed == base_seed(config) else f"/seed_{seed}"


#: the regex of the seed component of a training's paths: '' (the base seed) or '/seed_<S>'
#: (the train rule's ``seedpath`` wildcard)
SEED_PATH = r"(/seed_[0-9]+)?"


def seed_of_path(config: dict, seed_path: str) -> int:
    """The training seed a :data:`SEED_PATH` component names ('' = the base seed)."""
    return int(seed_path.removeprefix("/seed_")) if seed_path else base_seed(config)


def training_dir(config: dict, setting: str, fold: int, seed: int) -> str:
    """``train/<setting>[/seed_<S>]/fold_<f>``."""
    return f"train/{setting}{seed_dir(config, seed)}/fold_{fold}"


def training_log(config: dict, setting: str, fold: int, seed: int) -> str:
    """``logs/train/<setting>[/seed_<S>]/fold_<f>.log`` (every run of a requeued job appends)."""
    return f"logs/train/{setting}{seed_dir(config, seed)}/fold_{fold}.log"


def run_log_name(started: float, job: str | None) -> str:
    """``<UTC start, sortable>_job<SLURM job id or 'none'>.log`` under a training dir's ``RUN_LOGS``."""
    import time

    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started)) + f"_job{job or 'none'}.log"


def plan_file(setting: str) -> str:
    return f"plans/{setting}.json"


def predictions_dir(pset: str) -> str:
    return f"predictions/{pset}"


def metrics_file(pset: str, ext: str) -> str:
    """``metrics/<set>.csv`` (per case and organ) or ``.json`` (the means)."""
    return f"metrics/{pset}.{ext}"


def table_file(name: str, ext: str) -> str:
    return f"tables/{name}.{ext}"


def prediction_set_id(models: list[str], folds: list[int], seed: int | None = None) -> str:
    """Name of the averaged prediction of ``models`` x ``folds``, e.g. ``A+B__f0-1-2-3-4``;
    ``seed``: a training seed other than the base seed (None: the base seed), ``a__f0__s7``."""
    return PredictionSet(tuple(models), tuple(folds), seed).id


def parse_prediction_set_id(pset: str) -> tuple[list[str], list[int]]:
    """(models, folds) of a prediction set id (its seed: :func:`prediction_set_seed`)."""
    p = PredictionSet.parse(pset)
    return list(p.models), list(p.folds)


def prediction_set_seed(config: dict, pset: str) -> int:
    """The training seed of a prediction set's models (the base ``seed`` without a suffix)."""
    return PredictionSet.parse(pset).training_seed(config)


def single_model_set(config: dict, pset: str, model: str) -> str:
    """The prediction set of one ``model`` with the folds and training seed of ``pset`` (an
    ensemble's member)."""
    return PredictionSet.parse(pset).member(model).id


def row_prediction_sets(config: dict, table: dict, row: dict) -> list[tuple[int, str]]:
    """(training seed, prediction set id) of each seed a row is trained with."""
    models, folds, base = tuple(row_models(row)), tuple(row_folds(config, row)), base_seed(config)
    return [(s, PredictionSet(models, folds, None if s == base else s).id) for s in row_seeds(config, table, row)]


def prediction_sets(config: dict) -> list[str]:
    """Every prediction set the tables need (one per row and training seed), each once."""
    out: list[str] = []
    for table in config["tables"].values():
        for row in table["rows"]:
            for _, pid in row_prediction_sets(config, table, row):
                if pid not in out:
                    out.append(pid)
    return out


def training_jobs(config: dict) -> list[tuple[str, int, int]]:
    """Every (setting, fold, training seed) the tables and figures need, each once."""
    jobs: list[tuple[str, int, int]] = []
    for pset in prediction_sets(config):
        models, folds = parse_prediction_set_id(pset)
        seed = prediction_set_seed(config, pset)
        jobs += [(m, f, seed) for m in models for f in folds]
    jobs += [(s, 0, base_seed(config)) for s in config["figures"]["fig1_settings"]]
    return list(dict.fromkeys(jobs))


def multi_seed_prediction_sets(config: dict) -> list[list[str]]:
    """The prediction sets (one per seed) of every distinct table row trained with 2 or more
    seeds: where a table with one seed per row borrows its seed-to-seed spread from."""
    out: list[list[str]] = []
    for table in config["tables"].values():
        for row in table["rows"]:
            psets = [p for _, p in row_prediction_sets(config, table, row)]
            if len(psets) >= 2 and psets not in out:
                out.append(psets)
    return out
