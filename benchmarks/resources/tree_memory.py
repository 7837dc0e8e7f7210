"""Run a command and record the host memory of its whole process tree (Linux, stdlib only).

    python benchmarks/resources/tree_memory.py OUT.json -- COMMAND [ARGS...]

A training with worker processes (nnU-Net's augmentation workers) holds memory in processes a
single ``ru_maxrss`` does not see. Every ``--interval`` seconds (default 0.25) this sums over
the command and all its descendants: RSS (shared pages counted once per process: an upper
bound) and PSS (``/proc/<pid>/smaps_rollup``: shared pages split between their sharers, the
fair total). OUT.json gets the peaks in MB, the peak process count, the wall seconds, the
CPU seconds (user + system) of the command and every descendant it waited for, and the exit code; the command's own exit code is returned. Peaks shorter than the interval can be missed.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path


def children_map() -> dict[int, list[int]]:
    """ppid -> pids, from /proc/<pid>/stat."""
    out: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        out.setdefault(ppid, []).append(int(entry.name))
    return out


def tree(root: int) -> list[int]:
    kids, todo, seen = children_map(), [root], []
    while todo:
        pid = todo.pop()
        seen.append(pid)
        todo.extend(kids.get(pid, []))
    return seen


def field_kb(path: Path, name: str) -> int:
    try:
        for line in path.read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def sample(root: int) -> tuple[float, float, int]:
    """(RSS MB, PSS MB, processes) of the tree under ``root`` now."""
    pids = tree(root)
    rss = sum(field_kb(Path(f"/proc/{p}/status"), "VmRSS") for p in pids)
    pss = sum(field_kb(Path(f"/proc/{p}/smaps_rollup"), "Pss") for p in pids)
    return rss / 1024, pss / 1024, len(pids)


def main() -> int:
    args = sys.argv[1:]
    interval = 0.25
    if args[:1] == ["--interval"]:
        interval, args = float(args[1]), args[2:]
    if len(args) < 3 or args[1] != "--":
        raise SystemExit(__doc__)
    out_path, command = Path(args[0]), args[2:]
    t0 = time.time()
    proc = subprocess.Popen(command)
    peak = {"rss": 0.0, "pss": 0.0, "processes": 0}
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            rss, pss, n = sample(proc.pid)
            peak["rss"], peak["pss"] = max(peak["rss"], rss), max(peak["pss"], pss)
            peak["processes"] = max(peak["processes"], n)
            done.wait(interval)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    code = proc.wait()
    done.set()
    watcher.join()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)     # this process has no other children
    out_path.write_text(json.dumps({
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2),
        "peak_tree_rss_mb": round(peak["rss"], 1), "peak_tree_pss_mb": round(peak["pss"], 1),
        "peak_processes": peak["processes"], "wall_seconds": round(time.time() - t0, 2), "exit_code": code,
        "interval_s": interval}))
    return code


if __name__ == "__main__":
    sys.exit(main())
