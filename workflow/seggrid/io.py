"""Small I/O helpers: atomic writes, JSON, figures (PNG), provenance (seed, config, versions)."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

TRACKED_PACKAGES = ("seggrid", "torch", "monai", "numpy", "scipy", "nibabel", "pandas",
                    "surface-distance", "snakemake", "matplotlib")


class _Tee:
    """A text stream writing to ``stream`` and ``copy`` alike."""

    def __init__(self, stream, copy):
        self.stream, self.copy = stream, copy

    def write(self, text: str) -> int:
        self.copy.write(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.copy.flush()
        self.stream.flush()

    def __getattr__(self, name):
        return getattr(self.stream, name)


@contextmanager
def tee_to(path: Path, header: str) -> Iterator[Path]:
    """Copy everything this process prints (stdout and stderr) to ``path`` as well, after a
    ``header`` line; an error that leaves the block is written there too, as ``seggrid`` prints it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", buffering=1) as fh:
        fh.write(header + "\n")
        out, err = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(out, fh), _Tee(err, fh)
        try:
            yield path
        except BaseException as exc:
            fh.write(f"seggrid: error: {type(exc).__name__}: {exc}\n")
            raise
        finally:
            sys.stdout, sys.stderr = out, err


@contextmanager
def atomic_path(final: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``final``; rename it onto ``final`` only on success.

    Works for files and directories: whatever the body creates at the yielded path
    replaces ``final`` atomically, so a crash never leaves a partial output.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    target = tmp / ("out" + suffix)
    try:
        yield target
        if final.is_dir() and not final.is_symlink():
            shutil.rmtree(final)
        os.replace(target, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend (imported on first use)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, out_png: str | Path) -> None:
    """Write a matplotlib figure as PNG (110 dpi) atomically and close it."""
    with atomic_path(out_png, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    pyplot().close(fig)


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def read_json(path: str | Path) -> Any:
    from seggrid.errors import SeggridError

    path = Path(path)
    if not path.exists():
        raise SeggridError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SeggridError(f"{path}: not valid JSON ({exc})") from exc


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj)}")


def config_hash(obj: Any) -> str:
    """Stable short hash of a JSON-able object (sorted keys)."""
    blob = json.dumps(obj, sort_keys=True, default=_json_default).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            if name == "seggrid":
                import seggrid

                versions[name] = seggrid.__version__
    return versions


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def provenance(seed: int | None = None, config: Any = None) -> dict[str, Any]:
    """What produced a result: seed, config (and its hash), package versions, git commit."""
    return {
        "seed": seed,
        "config": config,
        "config_hash": config_hash(config) if config is not None else None,
        "versions": package_versions(),
        "git_commit": git_commit(),
        "command": " ".join(sys.argv),
    }
