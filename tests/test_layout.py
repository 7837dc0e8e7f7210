"""The package's layering: a module imports only from its own stage or an earlier one, and
what the Snakefile imports does not pull in torch (``snakemake -n`` stays light).

Stages, earliest first: the bottom (``config``, ``plan``, ``layout``, ``io``, ``errors`` and the tooling beside them,
``config_docs``, ``site_profile``), then ``data`` -> ``engine`` -> ``inference`` ->
``evaluation`` -> ``outputs``; ``cli``, ``commands``, ``bench`` and ``__main__`` sit on top.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "workflow" / "seggrid"
RANK = {"": 0, "config": 0, "plan": 0, "layout": 0, "io": 0, "errors": 0, "config_docs": 0, "site_profile": 0,
        "data": 1, "engine": 2, "inference": 3, "evaluation": 4, "outputs": 5,
        "cli": 6, "commands": 6, "bench": 6, "__main__": 6}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _stage(module: str) -> str:
    """The stage of ``seggrid[.<stage>[...]]``: its first component below the package."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every seggrid import in the file, function-local ones too."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # `from seggrid import data` / `from seggrid.data import normalization` name modules
            found += [(node.lineno, f"{source}.{a.name}") for a in node.names]
    return [(line, name) for line, name in found if name == "seggrid" or name.startswith("seggrid.")]


def back_edges() -> list[str]:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        mine = RANK[_stage(module)]
        for line, target in imported_modules(path):
            stage = _stage(target)
            if stage not in RANK:                     # `from seggrid import __version__` and the like
                stage = ""
            if RANK[stage] > mine:
                problems.append(f"{path.relative_to(ROOT)}:{line}: {module} (stage {_stage(module) or 'bottom'}) "
                                f"imports {target} (later stage {stage})")
    return problems


def test_every_module_has_a_known_stage():
    stages = {_stage(_module_name(p)) for p in PACKAGE.rglob("*.py")}
    assert stages <= set(RANK), f"modules outside the known stages: {sorted(stages - set(RANK))}"


def test_no_module_imports_from_a_later_stage():
    problems = back_edges()
    assert not problems, "imports from a later stage:\n  " + "\n  ".join(problems)


def test_the_walk_sees_function_local_and_relative_imports(tmp_path, monkeypatch):
    """The checker itself: a back-edge hidden in a function body is reported."""
    fake = tmp_path / "seggrid"
    (fake / "data").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "data" / "__init__.py").write_text("")
    (fake / "data" / "x.py").write_text("def f():\n    from seggrid.outputs.figures import figure1\n"
                                        "    from ..engine import planner\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    problems = back_edges()
    assert len(problems) == 2
    assert "seggrid.data.x" in problems[0] and "seggrid.outputs.figures.figure1" in problems[0]
    assert "seggrid.engine.planner" in problems[1]


def _snakefile_imports() -> list[str]:
    """The seggrid modules the workflow's rule files import at parse time."""
    text = "\n".join(p.read_text() for p in [ROOT / "Snakefile", *sorted((ROOT / "workflow" / "rules").glob("*.smk"))])
    return sorted(set(re.findall(r"^\s*from (seggrid(?:\.\w+)*) import", text, re.M)))


@pytest.mark.parametrize("configfile", sorted(p.name for p in (ROOT / "config").glob("*.yaml")))
def test_what_the_snakefile_imports_does_not_import_torch(configfile):
    """Importing the workflow's seggrid modules and validating a config (what `snakemake -n`
    runs, spatial partitions included) leaves torch unimported. In a fresh interpreter, so the
    test process's own torch does not count."""
    modules = _snakefile_imports()
    assert "seggrid.config" in modules and "seggrid.engine.launch" in modules, modules
    script = ("import importlib, json, sys, yaml\n"
              f"for m in {modules!r}: importlib.import_module(m)\n"
              "from seggrid.config import validate_config\n"
              f"validate_config(yaml.safe_load(open({str(ROOT / 'config' / configfile)!r})))\n"
              "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'monai'))))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "workflow")}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
