"""Check our recipe against nnU-Net 2.8.1's own functions, component by component.

    .venv/bin/python benchmarks/conformance/recipe_vs_nnunet.py NNUNET_PYTHON [--only loss,lr_schedule] [--workdir DIR]

NNUNET_PYTHON is the python of a separate environment with nnunetv2 2.8.1 installed
(``pip install nnunetv2==2.8.1``); this script itself runs in the project venv. Each
component ``benchmarks/conformance/recipe/<name>.py`` feeds the same inputs to our code and, through
``nnunet_<name>.py`` run by NNUNET_PYTHON, to nnU-Net's, and compares (protocol:
``benchmarks/conformance/recipe/common.py``). Prints ONE JSON line per component to stdout (progress on
stderr); a component whose module does not exist is reported as skipped, one that raises
as ``{"match": false, "error": ...}``. Exit code 0 when every present component matches.
The fidelity table these numbers back is docs/recipe_fidelity.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
RECIPE_DIR = REPO_ROOT / "benchmarks" / "conformance" / "recipe"
COMPONENTS = ["planner", "resampling", "normalisation", "sampler", "augmentation", "loss", "lr_schedule",
              "sliding_window"]


def load_component(name: str) -> ModuleType | None:
    """Import ``benchmarks/conformance/recipe/<name>.py`` under a private module name; None if absent."""
    path = RECIPE_DIR / f"{name}.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location(f"seggrid_recipe_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and pickling look the module up here
    spec.loader.exec_module(module)
    return module


def run_component(name: str, nnunet_python: str, workdir: Path) -> dict[str, Any]:
    """One component's JSON-able report; exceptions become ``match: false`` with the error."""
    try:
        module = load_component(name)
        if module is None:
            return {"component": name, "skipped": "module not present"}
        workdir.mkdir(parents=True, exist_ok=True)
        out = dict(module.compare(nnunet_python, workdir))
        out.setdefault("component", name)
        out["match"] = bool(out.get("match", False))
        return out
    except Exception as exc:  # noqa: BLE001 - one failing component must not stop the others
        traceback.print_exc(file=sys.stderr)
        return {"component": name, "match": False, "error": f"{type(exc).__name__}: {exc}"}


def parse_only(text: str | None) -> list[str]:
    """``"loss,lr_schedule"`` -> those names in COMPONENTS order; unknown names are an error."""
    if not text:
        return list(COMPONENTS)
    wanted = [w.strip() for w in text.split(",") if w.strip()]
    unknown = sorted(set(wanted) - set(COMPONENTS))
    if unknown:
        raise SystemExit(f"--only: unknown component(s) {unknown}; known: {COMPONENTS}")
    return [c for c in COMPONENTS if c in wanted]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("nnunet_python", help="python of an environment with nnunetv2 2.8.1")
    ap.add_argument("--only", default=None, help="comma-separated subset of " + ",".join(COMPONENTS))
    ap.add_argument("--workdir", type=Path, default=None, help="keep every component's files here")
    args = ap.parse_args(argv)
    if not Path(args.nnunet_python).exists():
        print(f"{args.nnunet_python}: no such python (give the nnU-Net venv's python)", file=sys.stderr)
        return 2
    names = parse_only(args.only)
    os.chdir(REPO_ROOT)
    for path in (str(RECIPE_DIR), str(REPO_ROOT / "workflow")):
        if path not in sys.path:
            sys.path.insert(0, path)

    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="recipe_vs_nnunet_")
        root = Path(tmp.name)
    else:
        root = args.workdir.resolve()
    all_match = True
    try:
        for name in names:
            print(f"[recipe] {name} ...", file=sys.stderr, flush=True)
            start = time.perf_counter()
            out = run_component(name, args.nnunet_python, root / name)
            elapsed = time.perf_counter() - start
            if "skipped" not in out:
                out.setdefault("seconds", round(elapsed, 2))
                all_match = all_match and out["match"]
            print(f"[recipe] {name}: {out.get('skipped') or ('match' if out['match'] else 'NO MATCH')} "
                  f"({elapsed:.1f} s)", file=sys.stderr, flush=True)
            print(json.dumps(out, default=str), flush=True)
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0 if all_match else 1


if __name__ == "__main__":
    sys.exit(main())
