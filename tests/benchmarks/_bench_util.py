"""Helpers shared by the opt-in benchmarks (``python -m pytest -q -s -m benchmark tests/benchmarks``).

Benchmarks compare against a baseline measured in the same run (docs/architecture.md
section 8); every figure is printed and written to ``outputs/benchmarks/``.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "outputs" / "benchmarks"


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def load_average() -> float:
    return os.getloadavg()[0]


def child_env() -> dict[str, str]:
    """The environment both sides of a benchmark start with: this one, plus the repo on the path.

    Both sides also get the allocator settings ``atlas run`` gives its processes and its local
    cluster's workers (``atlas.runtime.MALLOC_ENVIRON``), so a ratio measures the pipeline, not a
    difference in glibc malloc settings (docs/architecture.md, section 7). ``ATLAS_BENCH_PLAIN_MALLOC=1`` leaves
    glibc's defaults in the benchmark's own children instead (workers still get the library's).
    """
    env = dict(os.environ)
    if not env.get("ATLAS_BENCH_PLAIN_MALLOC"):
        try:
            sys.path.insert(0, str(REPO))
            from atlas.runtime import MALLOC_ENVIRON
        except ImportError:  # older trees: the values pipelines/commands/cli.py used to set
            MALLOC_ENVIRON = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}
        finally:
            sys.path.remove(str(REPO))
        for key, value in MALLOC_ENVIRON.items():
            env.setdefault(key, str(value))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")
    return env


def run_child(script: Path, mode: str, args: dict[str, Any], timeout: float = 900, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``python script mode json(args)`` in a fresh process; its last stdout line is a JSON object."""
    started = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(
        [sys.executable, str(script), mode, json.dumps(args)],
        cwd=REPO, env=env or child_env(), capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    if proc.returncode != 0:
        raise AssertionError(f"{mode} side failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_wall_s"] = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU of the child and every descendant it reaped (Dask workers included); less sensitive to other load than wall time
    result["process_cpu_user_s"] = after.ru_utime - before.ru_utime
    result["process_cpu_sys_s"] = after.ru_stime - before.ru_stime
    return result


def write_result(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    data = {"load_average_1min_at_end": load_average(), "cores": cores(), **data}
    path.write_text(json.dumps(data, indent=2, default=str))
    print(f"  -> {path}")
    return path
