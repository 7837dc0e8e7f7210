"""Record nnU-Net 2.8.1's answers for ``tests/test_conformance.py`` (which runs without nnU-Net).

    .venv/bin/python benchmarks/conformance/record_nnunet_fixtures.py NNUNET_PYTHON [--only loss,sampler] [--out DIR]

NNUNET_PYTHON is the python of a separate environment with nnunetv2 2.8.1 (how to make one:
docs/recipe_fidelity.md); this script runs in the project venv. For every recipe component
(``benchmarks/conformance/recipe/<name>.py``, the same ones ``benchmarks/conformance/recipe_vs_nnunet.py`` runs) it

1. writes the component's inputs with ``prepare(workdir, small=True)`` (seeded; the small variant
   of the component's cases, so the fixture stays small),
2. runs the component's nnU-Net side ``benchmarks/conformance/recipe/nnunet_<name>.py`` with NNUNET_PYTHON
   (nnU-Net's own functions on those inputs),
3. lets the component shrink what it does not need compared (``slim``, where it has one),
4. copies the inputs and nnU-Net's outputs (the component's ``fixture_files``/``FIXTURE_FILES``)
   to ``DIR/<name>/`` (default ``tests/fixtures/nnunet``): ``.npz`` compressed, a float32 array
   whose values are all float16 values stored as float16 (``common.load_npz`` returns float32),
5. runs the component's ``check(DIR/<name>)`` (what the test runs) and prints its JSON line.

Writes ``DIR/MANIFEST.json`` (versions of nnU-Net's side, files and sizes). Exit code 0 when
every recorded component's check matches with our current code.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from recipe_vs_nnunet import COMPONENTS, RECIPE_DIR, load_component, parse_only  # noqa: E402

DEFAULT_OUT = REPO_ROOT / "tests" / "fixtures" / "nnunet"
NNUNET_PACKAGES = ("nnunetv2", "batchgeneratorsv2", "dynamic-network-architectures", "torch", "numpy", "scipy",
                   "scikit-image", "acvl-utils")


def nnunet_versions(nnunet_python: str) -> dict[str, str | None]:
    code = ("import importlib.metadata as m, json\n"
            "def v(p):\n"
            "    try:\n        return m.version(p)\n    except m.PackageNotFoundError:\n        return None\n"
            f"print(json.dumps({{p: v(p) for p in {list(NNUNET_PACKAGES)!r}}}))")
    out = subprocess.run([nnunet_python, "-c", code], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def store_npz(src: Path, dst: Path) -> None:
    """``src`` re-saved compressed; float32 arrays that are exactly float16 values as float16."""
    with np.load(src, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    for key, value in arrays.items():
        if value.dtype == np.float32 and value.size:
            half = value.astype(np.float16)
            if np.array_equal(half.astype(np.float32), value):
                arrays[key] = half
    np.savez_compressed(dst, **arrays)


def record(name: str, nnunet_python: str, out: Path) -> tuple[dict, list[dict]]:
    """Record one component into ``out/<name>``; return its check's report and its files."""
    from common import run_nnunet_side

    module = load_component(name)
    if module is None:
        raise FileNotFoundError(f"{RECIPE_DIR / name}.py")
    dest = out / name
    with tempfile.TemporaryDirectory(prefix=f"fixture_{name}_") as tmp:
        work = Path(tmp)
        module.prepare(work, small=True)
        run_nnunet_side(nnunet_python, module.__file__, work)
        if hasattr(module, "slim"):
            module.slim(work)
        files = module.fixture_files(work) if hasattr(module, "fixture_files") else list(module.FIXTURE_FILES)
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        for f in files:
            if f.endswith(".npz"):
                store_npz(work / f, dest / f)
            else:
                shutil.copyfile(work / f, dest / f)
    report = module.check(dest)
    return report, [{"file": f"{name}/{f}", "bytes": (dest / f).stat().st_size} for f in files]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("nnunet_python", help="python of an environment with nnunetv2 2.8.1")
    ap.add_argument("--only", default=None, help="comma-separated subset of " + ",".join(COMPONENTS))
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"fixture folder (default {DEFAULT_OUT})")
    args = ap.parse_args(argv)
    if not Path(args.nnunet_python).exists():
        print(f"{args.nnunet_python}: no such python (give the nnU-Net venv's python)", file=sys.stderr)
        return 2
    for path in (str(RECIPE_DIR), str(REPO_ROOT / "workflow")):
        if path not in sys.path:
            sys.path.insert(0, path)
    names = parse_only(args.only)
    versions = nnunet_versions(args.nnunet_python)
    if versions.get("nnunetv2") != "2.8.1":
        print(f"warning: {args.nnunet_python} has nnunetv2 {versions.get('nnunetv2')}, not 2.8.1", file=sys.stderr)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "MANIFEST.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    manifest.update({"recorded_by": "benchmarks/conformance/record_nnunet_fixtures.py", "nnunet_side": versions})
    components = manifest.setdefault("components", {})
    all_match = True
    for name in names:
        print(f"[fixtures] {name} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        report, files = record(name, args.nnunet_python, out)
        all_match = all_match and bool(report.get("match"))
        components[name] = {"match_when_recorded": bool(report.get("match")), "files": files,
                            "bytes": sum(f["bytes"] for f in files)}
        print(f"[fixtures] {name}: {'match' if report.get('match') else 'NO MATCH'}, "
              f"{components[name]['bytes'] / 1e3:.0f} kB ({time.perf_counter() - start:.1f} s)",
              file=sys.stderr, flush=True)
        print(json.dumps(report, default=str), flush=True)
    manifest["components"] = {k: components[k] for k in COMPONENTS if k in components}
    manifest["total_bytes"] = sum(c["bytes"] for c in manifest["components"].values())
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"[fixtures] {out}: {manifest['total_bytes'] / 1e6:.2f} MB in all", file=sys.stderr)
    return 0 if all_match else 1


if __name__ == "__main__":
    sys.exit(main())
