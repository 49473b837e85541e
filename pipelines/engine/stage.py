"""The one shape of a pipeline stage, and the one loop that runs stages.

A stage declares its name, the stages whose outputs it reads, what keys it
(its config section plus anything outside the config it depends on, such as
files), and its run function. The loop chains keys (a stage's key covers the
keys of the stages it reads, so a changed model re-runs everything after
collection), skips a stage whose marker holds its key, and records what each
stage adds to the manifest in its marker, so a cached stage still reports.
A disk that fills up during a stage stops the run with one line naming the
stage and the file (``atlas.io.out_of_space_as_error``); re-running resumes.
Stages never talk to each other except through bundle files and keys.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from atlas.bundle import stage_marker
from atlas.errors import AtlasError
from atlas.io import out_of_space_as_error
from atlas.markers import is_fresh, read_marker, write_marker
from atlas.storage import Location
from atlas_pipelines.engine.executor import LazyExecutor

if TYPE_CHECKING:
    from atlas_pipelines.engine.context import RunInputs

Report = dict[str, Any]  # what a stage adds to the manifest; "levels" entries are merged by "grid"


def fingerprint(*parts: Any) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_fingerprint(path: Location) -> str:
    """Content hash of a file (local or on the bundle's store), streamed so a large index never sits in memory."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def file_identity(path: Any) -> str | None:
    """Path, size and modification time: cheap enough for a large weights file, and retraining always rewrites it."""
    if path is None:
        return None
    stat = Path(path).stat()
    return f"{Path(path).resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


@dataclass(frozen=True)
class StageCall:
    """What a run function gets: the run's (read-only) inputs and this stage's own key."""

    run: RunInputs
    key: str


@dataclass(frozen=True)
class Stage:
    name: str
    reads: tuple[str, ...]
    settings: Callable[[RunInputs], Any]  # JSON-able: the config section and outside inputs that key the stage
    work: Callable[[StageCall], Report]
    version: int = 1  # bump when the stage's outputs change for the same inputs

    def key(self, run: RunInputs, input_keys: Sequence[str]) -> str:
        return fingerprint(self.name, self.version, list(input_keys), self.settings(run))


def check_order(stages: Sequence[Stage]) -> None:
    """A stage may read only stages listed before it (a bug, not a user error, when broken)."""
    seen: set[str] = set()
    for stage in stages:
        missing = [name for name in stage.reads if name not in seen]
        if missing:
            raise ValueError(f"stage {stage.name!r} reads {missing} before they run; order the stages so it comes after them")
        seen.add(stage.name)


@dataclass
class StageRecord:
    key: str
    seconds: float
    cached: bool
    report: Report


def run_stages(stages: Sequence[Stage], run: RunInputs, until: str | None = None) -> dict[str, StageRecord]:
    """Run (or reuse) each stage in order, stopping after ``until``; returns each run stage's record."""
    check_order(stages)
    names = [stage.name for stage in stages]
    if until is not None and until not in names:
        raise AtlasError(f"--until {until!r}: expected one of {', '.join(names)}")
    records: dict[str, StageRecord] = {}
    for stage in stages:
        key = stage.key(run, [records[name].key for name in stage.reads])
        marker = run.bundle.path(stage_marker(stage.name))
        started = time.perf_counter()
        stored = read_marker(marker) if is_fresh(marker, key) else None
        if stored is not None and isinstance(stored.get("report"), dict):
            run.log(f"[{stage.name}] cached")
            report, cached = stored["report"], True
        else:
            run.log(f"[{stage.name}] running")
            # A full disk, in this process or on a worker, is one line naming the stage; the marker is written
            # only after the stage's work returned, so work cut short by it is never counted as done.
            with out_of_space_as_error(stage.name, run.bundle.root):
                report, cached = stage.work(StageCall(run, key)), False
                write_marker(marker, key, report=report)
        seconds = round(time.perf_counter() - started, 3)
        if not cached:
            run.log(f"[{stage.name}] done in {seconds:.1f} s")
            if isinstance(run.executor, LazyExecutor):  # the next stage starts from a trimmed heap (atlas.runtime)
                run.executor.release_memory()
        records[stage.name] = StageRecord(key, seconds, cached, report)
        if stage.name == until:
            break
    return records


def merge_reports(base: Report, *reports: Report) -> Report:
    """Deep-merge stage reports into the manifest: mappings merge, ``levels`` lists merge per grid."""
    merged = dict(base)
    for report in reports:
        for key, value in report.items():
            if key == "levels":
                merged[key] = _merge_levels(merged.get(key, []), value)
            elif isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = merge_reports(merged[key], value)
            else:
                merged[key] = value
    return merged


def _merge_levels(levels: list[dict[str, Any]], more: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_grid = {level["grid"]: dict(level) for level in levels}
    for level in more:
        by_grid[level["grid"]] = {**by_grid.get(level["grid"], {}), **level}
    return [by_grid[grid] for grid in sorted(by_grid)]
