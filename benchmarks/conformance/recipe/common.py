"""Shared helpers for the recipe-fidelity components (`benchmarks/conformance/recipe_vs_nnunet.py`).

Protocol (every component follows it):

* A component is ``benchmarks/conformance/recipe/<name>.py`` defining::

      def compare(nnunet_python: str, workdir: pathlib.Path) -> dict

  It prepares inputs in ``workdir`` (with our code, in the project venv), runs nnU-Net's side
  with :func:`run_nnunet_side` (which executes ``benchmarks/conformance/recipe/nnunet_<name>.py WORKDIR``
  with ``nnunet_python``: that script uses nnU-Net 2.8.1's OWN functions on the same inputs
  and writes its results to ``workdir``), then compares and returns :func:`result`'s dict:
  at least ``{"component": name, "match": bool}`` plus numbers (JSON-able).
* ``compare`` is split in two so that nnU-Net's answers can be recorded once and checked
  without nnU-Net (``benchmarks/conformance/record_nnunet_fixtures.py`` -> ``tests/fixtures/nnunet/<name>/``
  -> ``tests/test_conformance.py``)::

      def prepare(workdir: Path, small: bool = False) -> None   # inputs only (seeded)
      def check(workdir: Path) -> dict                          # reads inputs AND nnU-Net's
                                                                # outputs from workdir, compares
      FIXTURE_FILES = [...]  or  def fixture_files(workdir) -> list[str]
      def slim(workdir) -> None                                 # optional: shrink for a fixture

  ``compare`` = ``prepare`` + :func:`run_nnunet_side` + ``check``: write
  ``compare = protocol_compare(prepare, check, __file__, "[<name>] what nnU-Net runs")``. ``check`` must read every
  input from ``workdir`` (never regenerate it: a fixture's inputs were made by the code of its
  day), and ``small=True`` selects the component's small variant of its cases (a fixture
  stays small; same kinds of case, same tolerances).
* Each component ends with::

      if __name__ == "__main__":
          run_standalone(compare, "<name>")

  so ``python benchmarks/conformance/recipe/<name>.py NNUNET_PYTHON [--workdir DIR]`` prints its one
  JSON line (progress and the nnU-Net side's own output go to stderr).
* Imports: write ``from common import ...`` (not ``benchmarks.recipe.common``). This module's
  folder is on ``sys.path`` in all three ways a file here runs: as a script (Python puts the
  script's folder first), imported by the driver (it adds ``benchmarks/conformance/recipe`` to
  ``sys.path``), and as ``nnunet_<name>.py`` in the nnU-Net venv. Importing this module
  also puts ``workflow/`` on ``sys.path``, so ``import seggrid`` works in the project venv.
* This module uses only the standard library and numpy: it is imported on BOTH sides.
* On the nnU-Net side, call :func:`nnunet_env_setup` before ``import nnunetv2`` when the
  script may be run by hand (:func:`run_nnunet_side` already sets ``nnUNet_raw``,
  ``nnUNet_preprocessed``, ``nnUNet_results`` to folders under ``workdir``).
* Plans: our side writes them with :func:`write_nnunet_plans` (seggrid's one builder) in
  ``prepare``; the nnU-Net side loads that file.
* nnU-Net side: the plans + :func:`nnunet_dataset_json` + :func:`nnunet_trainer` give a real
  (uninitialised, CPU) ``nnUNetTrainer`` whose own methods (``_build_loss``,
  ``get_training_transforms``, ``configure_rotation_dummyDA_mirroring_and_inital_patch_size``,
  ``_set_batch_size_and_oversample``, ...) can be called without a dataset;
  :func:`nnunet_import_setup` stubs seaborn when the venv lacks it.
* Exchange data as ``.npy``/``.npz``/``.json`` files in ``workdir``: :func:`save_npz`,
  :func:`load_npz`, :func:`save_json`, :func:`load_json`.

Example (our side)::

    from common import load_npz, max_abs_diff, result, run_nnunet_side, run_standalone, save_npz

    def compare(nnunet_python: str, workdir: Path) -> dict:
        save_npz(workdir / "inputs.npz", x=np.arange(4.0))
        run_nnunet_side(nnunet_python, __file__, workdir)     # runs nnunet_<name>.py
        theirs = load_npz(workdir / "nnunet.npz")["y"]
        diff = max_abs_diff(ours, theirs)
        return result("<name>", diff <= 1e-6, max_abs_diff=diff, tolerance=1e-6)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

RECIPE_DIR = Path(__file__).resolve().parent
REPO_ROOT = RECIPE_DIR.parents[2]
WORKFLOW_DIR = REPO_ROOT / "workflow"
NNUNET_ENV_VARS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")

for _path in (str(RECIPE_DIR), str(WORKFLOW_DIR)):
    if _path not in sys.path:
        sys.path.insert(0, _path)


def log(message: str) -> None:
    """Progress line to stderr (stdout carries only the JSON lines)."""
    print(message, file=sys.stderr, flush=True)


def nnunet_env_setup(workdir: Path) -> dict[str, str]:
    """Point nnUNet_raw/_preprocessed/_results at (created) folders under ``workdir``.

    Sets them in ``os.environ`` only where unset (so nnunetv2 imports quietly) and returns
    a copy of the environment with them, for a child process.
    """
    env = dict(os.environ)
    for name in NNUNET_ENV_VARS:
        folder = Path(workdir) / "_nnunet_dirs" / name
        folder.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault(name, str(folder))
        env[name] = str(folder)
    return env


def nnunet_script_for(component_file: str | Path) -> Path:
    """``benchmarks/conformance/recipe/<name>.py`` -> ``benchmarks/conformance/recipe/nnunet_<name>.py``."""
    path = Path(component_file).resolve()
    return path.with_name(f"nnunet_{path.name}")


def run_nnunet_side(
    nnunet_python: str,
    component_file: str | Path,
    workdir: Path,
    *extra_args: str,
    timeout_s: float | None = 1800,
) -> float:
    """Run ``nnunet_<name>.py WORKDIR [extra_args]`` with ``nnunet_python``; return seconds.

    ``component_file`` is the component's ``__file__`` (or the nnunet_ script itself). The
    child runs with cwd = repository root, the nnUNet_* variables pointing into ``workdir``,
    and its stdout sent to our stderr, so the driver's stdout stays one JSON line per
    component. A non-zero exit raises ``subprocess.CalledProcessError`` (check=True).
    """
    script = Path(component_file).resolve()
    if not script.name.startswith("nnunet_"):
        script = nnunet_script_for(script)
    if not script.is_file():
        raise FileNotFoundError(f"{script}: nnU-Net side of this component not found")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    env = nnunet_env_setup(workdir)
    env.setdefault("OMP_NUM_THREADS", "2")
    start = time.perf_counter()
    subprocess.run(
        [nnunet_python, str(script), str(workdir), *extra_args],
        check=True,
        cwd=REPO_ROOT,
        env=env,
        stdout=sys.stderr.fileno(),
        timeout=timeout_s,
    )
    return time.perf_counter() - start


def save_npz(path: Path, **arrays: Any) -> None:
    """Save named arrays (anything ``np.asarray`` takes) uncompressed to ``path``."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{k: np.asarray(v) for k, v in arrays.items()})


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """Load every array of an ``.npz`` into a plain dict (file closed on return).

    float16 arrays come back as float32: the components exchange float32 only, and a fixture
    (``record_fixtures.py``) stores a float32 array whose values are all float16 values as float16."""
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k].astype(np.float32) if data[k].dtype == np.float16 else data[k] for k in data.files}


def fp16_exact(array: np.ndarray) -> np.ndarray:
    """``array`` as float32 rounded to float16 values: inputs a fixture stores exactly in 2 bytes."""
    return np.asarray(array, dtype=np.float32).astype(np.float16).astype(np.float32)


def save_json(path: Path, obj: Any) -> None:
    """Write ``obj`` (numpy scalars/arrays allowed) as JSON."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(to_jsonable(obj), indent=1))


def load_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def to_jsonable(obj: Any) -> Any:
    """numpy scalars/arrays, tuples, Paths -> plain JSON types; NaN/inf -> strings."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def max_abs_diff(a: Any, b: Any) -> float:
    """Largest |a - b| over all elements (shapes must agree), as a Python float."""
    a_arr, b_arr = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a_arr.shape != b_arr.shape:
        raise ValueError(f"shapes differ: {a_arr.shape} vs {b_arr.shape}")
    return float(np.max(np.abs(a_arr - b_arr))) if a_arr.size else 0.0


def protocol_compare(prepare: Callable[[Path], Any], check: Callable[[Path], dict], component_file: str | Path,
                     message: str = "") -> Callable[[str, Path], dict]:
    """A component's ``compare``: ``prepare`` + :func:`run_nnunet_side` (``message`` logged
    first) + ``check``, with nnU-Net's side's seconds added as ``nnunet_seconds``."""

    def compare(nnunet_python: str, workdir: Path) -> dict:
        prepare(workdir)
        if message:
            log(message)
        seconds = run_nnunet_side(nnunet_python, component_file, workdir)
        return {**check(workdir), "nnunet_seconds": round(seconds, 1)}

    return compare


def result(component: str, match: bool, **numbers: Any) -> dict[str, Any]:
    """The component's JSON-able report: ``{"component", "match", **numbers}``."""
    return to_jsonable({"component": component, "match": bool(match), **numbers})


def run_standalone(
    compare: Callable[[str, Path], dict], component: str, argv: Sequence[str] | None = None
) -> None:
    """CLI of one component: ``<name>.py NNUNET_PYTHON [--workdir DIR]`` -> one JSON line.

    Exit code 0 when ``match`` is true, 1 otherwise.
    """
    ap = argparse.ArgumentParser(description=f"recipe component '{component}' vs nnU-Net 2.8.1")
    ap.add_argument("nnunet_python", help="python of an environment with nnunetv2 2.8.1")
    ap.add_argument("--workdir", type=Path, default=None, help="keep inputs/outputs here")
    args = ap.parse_args(argv)
    if args.workdir is None:
        with tempfile.TemporaryDirectory(prefix=f"recipe_{component}_") as tmp:
            out = compare(args.nnunet_python, Path(tmp))
    else:
        args.workdir.mkdir(parents=True, exist_ok=True)
        out = compare(args.nnunet_python, args.workdir)
    print(json.dumps(to_jsonable(out)), flush=True)
    sys.exit(0 if out.get("match") else 1)


# --- nnU-Net side helpers (import nnunetv2 lazily: call them only from nnunet_<name>.py) ----------


def write_nnunet_plans(
    path: Path,
    patch: Sequence[int],
    spacing: Sequence[float],
    strides: Sequence[Sequence[int]],
    kernels: Sequence[Sequence[int]],
    batch_size: int = 2,
    batch_dice: bool = True,
    base_features: int = 32,
    max_features: int = 320,
) -> dict:
    """OUR side (project venv): write ``path``, nnU-Net plans with one ``3d_fullres`` configuration
    built by seggrid's one plans builder (``seggrid.outputs.export_nnunet.nnunet_plans``, as
    ``seggrid export-nnunet``), for a plan of this patch, spacing, ``strides`` (per stage, the first
    ``[1, 1, 1]``), ``kernels``, batch and batch Dice (instance norm, features
    ``min(base * 2**i, max)``, CT normalisation, median shape twice the patch). The nnU-Net side
    reads it with :func:`load_json` and gives it to :func:`nnunet_trainer`. Returns the plans."""
    from seggrid.outputs.export_nnunet import nnunet_plans

    n_stages = len(strides)
    if len(kernels) != n_stages:
        raise ValueError(f"{n_stages} stride entries but {len(kernels)} conv kernels")
    plan = {"setting": {"name": "recipe", "batch": int(batch_size), "batch_dice": bool(batch_dice), "norm": "instance"},
            "topology": {"patch_effective": [int(p) for p in patch],
                         "strides": [[int(v) for v in st] for st in strides],
                         "kernels": [[int(v) for v in k] for k in kernels],
                         "features": [min(base_features * 2**i, max_features) for i in range(n_stages)]},
            "target_spacing": [float(v) for v in spacing], "transpose": [0, 1, 2]}
    ct = {"mean": 100.0, "std": 200.0, "percentile_00_5": -900.0, "percentile_99_5": 1500.0}
    plans = nnunet_plans(plan, "Dataset999_Recipe", "ct", ct, False, [int(p) * 2 for p in patch], "recipe",
                         planner="seggrid (benchmarks/conformance/recipe)")
    save_json(path, plans)
    return plans


def nnunet_dataset_json(n_classes: int, channel: str = "CT") -> dict:
    """dataset.json for :func:`nnunet_trainer`: labels background, c1 .. c{n-1}; one channel."""
    labels = {"background": 0, **{f"c{i}": i for i in range(1, n_classes)}}
    return {"channel_names": {"0": channel}, "labels": labels, "numTraining": 10, "file_ending": ".nii.gz"}


def nnunet_import_setup(workdir: Path) -> None:
    """Call before importing nnunetv2's trainer: sets the nnUNet_* folders (see
    :func:`nnunet_env_setup`) and, when seaborn is missing (nnunetv2 2.8.1 requires it but
    uses it only for ``sns.set`` in its progress plot), registers a no-op stand-in so
    ``nnunetv2.training.nnUNetTrainer.nnUNetTrainer`` imports."""
    nnunet_env_setup(workdir)
    try:
        import seaborn  # noqa: F401
    except ImportError:
        import types

        stub = types.ModuleType("seaborn")
        stub.set = lambda *args, **kwargs: None  # type: ignore[attr-defined]
        sys.modules["seaborn"] = stub


def nnunet_trainer(plans: dict, dataset_json: dict, workdir: Path, fold: int = 0) -> Any:
    """A real ``nnUNetTrainer`` (nnU-Net 2.8.1) on CPU for ``plans`` (see :func:`write_nnunet_plans`).

    Not initialised (no network, no data): its methods that only read the plans and its own
    hyperparameters work as in training, e.g. ``_build_loss()``,
    ``_get_deep_supervision_scales()``, ``configure_rotation_dummyDA_mirroring_and_inital_patch_size()``,
    ``get_training_transforms(...)``, ``_set_batch_size_and_oversample()``; for
    ``configure_optimizers()`` set ``trainer.network`` first. Its log files go under
    ``workdir`` (nnUNet_results). Call only in the nnU-Net venv.
    """
    nnunet_import_setup(workdir)
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    plans = json.loads(json.dumps(plans))  # the trainer pops keys from its argument
    plans.setdefault("continue_training", False)
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # its citation banner and device line
        return nnUNetTrainer(plans, "3d_fullres", fold, dataset_json, device=torch.device("cpu"))
