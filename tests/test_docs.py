"""The README and ``docs/*.md`` name only things that exist: every command of their ```bash
blocks, and every code path and test they cite.

The README's "Running on a cluster" commands are also RUN as written, by
``tests/test_site_profile.py::test_the_readme_cluster_commands_are_the_ones_the_tests_run``;
here each command of every page is checked without running it (fast): a ``make`` target is in the
Makefile, a ``seggrid`` command line parses with the real CLI parser, a script or config it names
is in the repository, a ``snakemake`` target is a rule, a table of its config or an output path.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PACKAGE = ROOT / "workflow" / "seggrid"
STAGES = ("data", "engine", "inference", "evaluation", "outputs")
# commands that set up a separate environment for the nnU-Net side of the benchmarks
EXTERNAL = (re.compile(r"^python -m venv /tmp/\w+$"), re.compile(r"^/tmp/\w+/bin/pip install [\w.=-]+$"))


def bash_commands(page: Path) -> list[str]:
    """The command lines of a page's ```bash blocks: continuation lines joined, comments dropped,
    ``a && b`` split into ``a`` and ``b``."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.S):
        text = re.sub(r"\\\n\s*", " ", block)
        for line in text.splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                commands += [part.strip() for part in line.split("&&")]
    return commands


def all_commands() -> list[tuple[str, str]]:
    return [(page.relative_to(ROOT).as_posix(), c) for page in PAGES for c in bash_commands(page)]


def make_targets() -> set[str]:
    return set(re.findall(r"^([\w.-]+):", (ROOT / "Makefile").read_text(), re.M))


def rule_names() -> set[str]:
    text = "\n".join(p.read_text() for p in [ROOT / "Snakefile", *(ROOT / "workflow" / "rules").glob("*.smk")])
    return {a or b for a, b in re.findall(r"^\s*(?:rule (\w+):|use rule \w+ as (\w+) with:)", text, re.M)}


def seggrid_parser():
    from seggrid.cli import build_parser

    return build_parser()


def command_problem(command: str) -> str | None:
    """Why ``command`` (one line of a bash block, run from the repository root) would not run as
    written, or None."""
    if any(p.match(command) for p in EXTERNAL):
        return None
    args = shlex.split(command)
    program, rest = args[0], args[1:]
    if program == "make":
        missing = [t for t in rest if t not in make_targets() and not re.match(r"^[A-Z_]+=", t)]
        return f"no make target {missing}" if missing or not rest else None
    if program in (".venv/bin/seggrid",) or (program == ".venv/bin/python" and rest[:2] == ["-m", "seggrid"]):
        cli_args = rest if program == ".venv/bin/seggrid" else rest[2:]
        try:
            seggrid_parser().parse_args(cli_args)
        except SystemExit:
            return f"`seggrid {' '.join(cli_args)}` does not parse"
        configs = [a for a in cli_args if a.endswith((".yaml", ".yml"))]
        return next((f"{c} does not exist" for c in configs if not (ROOT / c).exists()), None)
    if program == ".venv/bin/python" and rest[:2] == ["-m", "pytest"]:
        files = [a.split("::")[0] for a in rest[2:] if a.startswith("tests/")]
        return next((f"{f} does not exist" for f in files if not (ROOT / f).exists()), None)
    if program == ".venv/bin/python":
        script = rest[0] if rest else ""
        if not script.endswith(".py") or not (ROOT / script).is_file():
            return f"no script {script!r}"
        return next((f"{a} does not exist" for a in rest[1:] if a.startswith("config/") and not (ROOT / a).exists()),
                    None)
    if program.startswith("benchmarks/"):
        path = ROOT / program
        return None if path.is_file() and path.stat().st_mode & 0o111 else f"{program} is not an executable script"
    if program == ".venv/bin/snakemake":
        return snakemake_problem(rest)
    return f"unknown program {program!r}: add a check for it to tests/test_docs.py"


def snakemake_problem(args: list[str]) -> str | None:
    """A ``snakemake`` command line: its profile, config files and targets exist."""
    configs, targets, i = [], [], 0
    takes_value = {"--profile", "--workflow-profile", "--rerun-triggers", "--cores", "-j", "--jobs",
                   "--sdm", "--set-resources", "--report"}
    while i < len(args):
        a = args[i]
        if a == "--configfile":
            i += 1
            while i < len(args) and not args[i].startswith("-"):
                configs.append(args[i])
                i += 1
            continue
        if a in ("--profile", "--workflow-profile") and i + 1 < len(args):
            profile = args[i + 1]
            # slurm: written by seggrid slurm-profile; results/...: by seggrid cost --write-resources
            if profile != "slurm" and not profile.startswith("results/") and not (ROOT / profile / "config.yaml").exists():
                return f"no profile {profile}"
        if a in takes_value:
            i += 2
            continue
        if not a.startswith("-"):
            targets.append(a)
        i += 1
    grids = [c for c in configs if not c.startswith("results/")] or ["config/config.yaml"]
    outdirs = {yaml.safe_load((ROOT / c).read_text()).get("outdir", "results") for c in grids if (ROOT / c).exists()}
    # a config fragment under the grid's outdir is written by an earlier command (seggrid cost --write-resources)
    missing = [c for c in configs if not (ROOT / c).exists()
               and not any(c.startswith(o.rstrip("/") + "/") for o in outdirs)]
    if missing:
        return f"no config {missing}"
    tables = set()
    for c in grids:
        tables |= set(yaml.safe_load((ROOT / c).read_text()).get("tables", {}))
    for t in targets:
        if "/" in t:
            if not any(t.startswith(o.rstrip("/") + "/") for o in outdirs):
                return f"target {t} is not under the config's outdir {sorted(outdirs)}"
        elif t not in rule_names() | tables:
            return f"target {t} is neither a rule nor a table of {configs}"
    return None


def test_pages_have_bash_blocks_and_the_readme_has_its_commands():
    commands = dict.fromkeys(c for _, c in all_commands())
    for wanted in ("make demo", "make test", ".venv/bin/python -m seggrid slurm-profile --account my_account "
                   "--partition gpu --gpu-model a100"):
        assert wanted in bash_commands(ROOT / "README.md"), wanted
    assert len(commands) >= 20, list(commands)


@pytest.mark.parametrize("page,command", all_commands())
def test_every_command_of_a_bash_block_names_what_exists(page, command):
    assert command_problem(command) is None, (page, command, command_problem(command))


def test_the_checks_fail_on_what_does_not_exist():
    assert command_problem("make demoo")
    assert command_problem("benchmarks/no_such_bench.sh /tmp/x")
    assert command_problem(".venv/bin/python benchmarks/no_such.py")
    assert command_problem(".venv/bin/python -m seggrid no-such-step")
    assert command_problem(".venv/bin/seggrid bench step --no-such-flag")
    assert command_problem(".venv/bin/snakemake --profile slurm -n --configfile config/no_such.yaml")
    assert command_problem(".venv/bin/snakemake --profile slurm -n table9 --configfile config/amos22_task1.yaml")
    assert command_problem(".venv/bin/snakemake --profile profiles/nope --configfile config/amos22_task1.yaml")
    assert command_problem("rm -rf results")
    assert command_problem(".venv/bin/snakemake --profile slurm -n table1 --configfile config/amos22_task1.yaml") is None


# ---- code paths and tests the prose names ----------------------------------------------------

def cited(page: Path) -> list[str]:
    """Backticked tokens of a page. In recipe_fidelity.md the tables' second column is
    nnU-Net's (paths inside its package), so it is left out there."""
    text = page.read_text()
    if page.name == "recipe_fidelity.md":
        lines = []
        for line in text.splitlines():
            cells = line.split(" | ")
            lines.append(" | ".join(cells[:1] + cells[2:]) if line.startswith("| ") and len(cells) > 3 else line)
        text = "\n".join(lines)
    return re.findall(r"`([^`\n]+)`", text)


def path_problem(token: str) -> str | None:
    """A cited repository path that does not exist; stage paths (``engine/train.py``) are inside
    ``workflow/seggrid/``. Placeholders (<...>, *, {...}) and outputs are not checked."""
    words = token.split("::")[0].split()
    path = words[0] if words else ""
    if re.search(r"[<>*{}\[\]$]|\.\.\.", path) or "/" not in path:
        return None
    top = path.split("/")[0]
    if top in STAGES and path.endswith(".py"):
        return None if (PACKAGE / path).exists() else f"workflow/seggrid/{path}"
    if top == "tests" and not path.endswith(".py"):      # e.g. TotalSegmentator's tests/reference_files
        return None
    if top in ("workflow", "benchmarks", "tests", "config", "profiles", "envs", "docs") or path == ".ci/run":
        return None if (ROOT / path.rstrip("/")).exists() else path
    return None


def cited_test_problem(token: str) -> str | None:
    """``tests/<file>.py::<test>`` names a function of that file; ``::<test>`` (after a file
    named just before) a function of some test file."""
    if re.fullmatch(r"::\w+", token):
        name = token[2:]
        found = any(re.search(rf"def {name}\b", f.read_text()) for f in (ROOT / "tests").glob("test_*.py"))
        return None if found else token
    m = re.fullmatch(r"(tests/\w+\.py)::(\w+)", token)
    if not m or not (ROOT / m.group(1)).exists():
        return None
    return None if re.search(rf"def {m.group(2)}\b", (ROOT / m.group(1)).read_text()) else token


def test_every_cited_code_path_and_test_exists():
    problems = [(page.name, p) for page in PAGES for token in cited(page)
                for p in (path_problem(token), cited_test_problem(token)) if p]
    assert not problems, problems


def test_the_path_check_fails_on_what_does_not_exist():
    assert path_problem("engine/no_such.py") and path_problem("benchmarks/nope.sh")
    assert path_problem("tests/test_docs.py") is None and path_problem("inference/maps.py") is None
    assert cited_test_problem("tests/test_docs.py::test_no_such_test") and cited_test_problem("::test_no_such_test")
    assert cited_test_problem("tests/test_docs.py::test_every_cited_code_path_and_test_exists") is None


def test_every_docs_page_is_linked_from_the_readme():
    readme = (ROOT / "README.md").read_text()
    unlinked = [p.name for p in PAGES[1:] if f"(docs/{p.name})" not in readme]
    assert not unlinked, unlinked


def test_the_pipeline_table_names_real_rules_subcommands_and_modules():
    """docs/pipeline.md's rule -> CLI -> code table: each rule is a rule of the workflow, each
    subcommand (with its options) parses, each module exists."""
    text = (ROOT / "docs" / "pipeline.md").read_text()
    rows = [line.split(" | ") for line in text.splitlines()
            if line.startswith("| `") and len(line.split(" | ")) == 3]
    assert len(rows) >= 15, rows
    parser = seggrid_parser()
    subcommands = set(parser._subparsers._group_actions[0].choices)
    problems = []
    for rule_cell, cli_cell, module_cell in rows:
        problems += [r for r in re.findall(r"`(\w+)`", rule_cell) if r not in rule_names() | {"temp"}]
        for command in re.findall(r"`([a-z][\w-]*(?: --[\w-]+)*)`", cli_cell):
            name, *options = command.split()
            known = {o for a in parser._subparsers._group_actions[0].choices[name]._actions
                     for o in a.option_strings} if name in subcommands else set()
            problems += [command for o in [name, *options] if o not in subcommands | known]
        problems += [m for m in re.findall(r"`([\w/]+\.py)`", module_cell) if not (PACKAGE / m).exists()]
    assert not problems, problems


# ---- counts the docs quote about the demo ----------------------------------------------------

def test_demo_counts_quoted_in_the_docs_equal_the_config():
    """'the demo's N trainings' (or prediction sets, evaluation cases) wherever README, docs/ and
    the demo config say it, and 'N evaluation cases' in README and the demo config, equal what
    the demo config gives."""
    from seggrid.config import load_config
    from seggrid.layout import prediction_sets, training_jobs

    cfg = load_config(ROOT / "config" / "config.yaml")
    counts = {"trainings": len(training_jobs(cfg)), "prediction sets": len(prediction_sets(cfg)),
              "evaluation cases": cfg["dataset"]["demo_ct_val"] + cfg["dataset"]["demo_mr_val"]}
    texts = {p: p.read_text() for p in [ROOT / "README.md", ROOT / "config" / "config.yaml",
                                         *sorted((ROOT / "docs").glob("*.md"))]}
    found = 0
    for path, text in texts.items():
        for what, n in counts.items():
            for m in re.finditer(rf"the demo's (\d+) {what}\b", text):
                found += 1
                assert int(m.group(1)) == n, f"{path.name}: '{m.group(0)}' but the demo config has {n} {what}"
        if path.name in ("README.md", "config.yaml"):            # both speak of the demo only here
            for m in re.finditer(r"(\d+) evaluation cases", text):
                found += 1
                assert int(m.group(1)) == counts["evaluation cases"], f"{path.name}: '{m.group(0)}'"
    assert found >= 3
