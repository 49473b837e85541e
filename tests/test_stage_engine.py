"""The stage loop on its own, with fake stages: no model, no images, no Dask; only the bundle folder it keeps markers in."""

from __future__ import annotations

import dataclasses
import errno
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest

from atlas.bundle import Bundle
from atlas.errors import AtlasError
from atlas_pipelines.engine.context import RunInputs
from atlas_pipelines.engine.stage import Report, Stage, StageCall, StageRecord, check_order, merge_reports, run_stages


@dataclass(frozen=True)
class FakeRun:
    """What the stage loop reads of a run (its bundle and its log), plus each fake stage's settings."""

    bundle: Bundle
    settings: dict[str, Any]
    log: Callable[[str], None]
    executor: None = None  # no cluster: the stage loop has no workers' heap to hand back


@dataclass
class Pipeline:
    """Fake stages that count their calls: collect <- layout <- grid, and a separate stage that reads nothing."""

    root: Path
    settings: dict[str, Any] = field(default_factory=lambda: {"collect": 1, "layout": "umap", "grid": [2, 4], "notes": "x"})
    calls: Counter[str] = field(default_factory=Counter)
    lines: list[str] = field(default_factory=list)
    versions: dict[str, int] = field(default_factory=dict)

    def _work(self, name: str) -> Callable[[StageCall], Report]:
        def work(call: StageCall) -> Report:
            self.calls[name] += 1
            return {"stages": {name: {"key": call.key}}, "levels": [{"grid": 2, name: True}]}

        return work

    def _settings(self, name: str) -> Callable[[FakeRun], Any]:
        return lambda run: run.settings[name]

    def stages(self) -> list[Stage]:
        reads = {"collect": (), "layout": ("collect",), "notes": (), "grid": ("layout",)}
        return [
            Stage(name, reads[name], self._settings(name), self._work(name), version=self.versions.get(name, 1))
            for name in ("collect", "layout", "notes", "grid")
        ]

    def inputs(self) -> RunInputs:
        return cast(RunInputs, FakeRun(Bundle(self.root), dict(self.settings), self.lines.append))

    def run(self, until: str | None = None) -> dict[str, StageRecord]:
        return run_stages(self.stages(), self.inputs(), until)

    def keys(self) -> dict[str, str]:
        return {name: record.key for name, record in self.run().items()}


@pytest.fixture
def pipeline(tmp_path: Path) -> Pipeline:
    return Pipeline(tmp_path / "bundle")


def test_a_changed_stage_changes_its_key_and_every_key_after_it_but_no_other(pipeline: Pipeline) -> None:
    before = pipeline.keys()
    assert len(set(before.values())) == 4, "every stage has its own key"
    pipeline.settings["collect"] = 2
    after = pipeline.keys()
    assert {name for name in before if before[name] != after[name]} == {"collect", "layout", "grid"}
    pipeline.settings["grid"] = [2, 4, 8]
    last = pipeline.keys()
    assert {name for name in after if after[name] != last[name]} == {"grid"}, "a stage's key does not cover the stages after it"


def test_a_stage_whose_version_is_bumped_runs_again_and_so_does_everything_after_it(pipeline: Pipeline) -> None:
    before = pipeline.keys()
    pipeline.versions["layout"] = 2
    pipeline.calls.clear()
    after = pipeline.keys()
    assert {name for name in before if before[name] != after[name]} == {"layout", "grid"}
    assert pipeline.calls == Counter({"layout": 1, "grid": 1})


def test_a_cached_stage_is_skipped_and_still_reports(pipeline: Pipeline) -> None:
    first = pipeline.run()
    pipeline.lines.clear()
    second = pipeline.run()
    assert pipeline.calls == Counter({"collect": 1, "layout": 1, "notes": 1, "grid": 1}), "each stage ran once"
    assert all(record.cached for record in second.values()) and not any(record.cached for record in first.values())
    assert {name: record.report for name, record in second.items()} == {name: record.report for name, record in first.items()}
    assert pipeline.lines == [f"[{name}] cached" for name in ("collect", "layout", "notes", "grid")]


def test_until_stops_after_the_named_stage(pipeline: Pipeline) -> None:
    records = pipeline.run(until="layout")
    assert list(records) == ["collect", "layout"] and set(pipeline.calls) == {"collect", "layout"}
    assert list(pipeline.run()) == ["collect", "layout", "notes", "grid"] and pipeline.calls["collect"] == 1, "the rest picks up"


def test_until_an_unknown_stage_is_one_line_naming_the_stages(pipeline: Pipeline) -> None:
    with pytest.raises(AtlasError) as raised:
        pipeline.run(until="tiles")
    message = str(raised.value)
    assert len(message.splitlines()) == 1 and "'tiles'" in message and "collect, layout, notes, grid" in message, message
    assert not pipeline.calls, "nothing ran"


def test_a_stage_listed_before_what_it_reads_is_refused_before_anything_runs(pipeline: Pipeline) -> None:
    collect, layout, notes, grid = pipeline.stages()
    with pytest.raises(ValueError, match="stage 'grid' reads \\['layout'\\]"):
        check_order([collect, grid, layout, notes])
    with pytest.raises(ValueError, match="stage 'layout' reads \\['collect'\\]"):  # a bug in the stage list, not a user error
        run_stages([layout, collect], pipeline.inputs())
    assert not pipeline.calls
    check_order([collect, notes, layout, grid])  # any order that puts what a stage reads first


def test_a_stage_that_fails_leaves_no_marker_and_runs_again(pipeline: Pipeline) -> None:
    def fail(call: StageCall) -> Report:
        raise RuntimeError("cut short")

    collect, layout, notes, grid = pipeline.stages()
    broken = dataclasses.replace(layout, work=fail)
    run = pipeline.inputs()
    with pytest.raises(RuntimeError, match="cut short"):
        run_stages([collect, broken, notes, grid], run)
    records = pipeline.run()
    assert records["collect"].cached and not records["layout"].cached and pipeline.calls["layout"] == 1


def test_a_full_disk_in_a_stage_is_one_line_naming_the_stage(pipeline: Pipeline) -> None:
    def full(call: StageCall) -> Report:
        raise OSError(errno.ENOSPC, "No space left on device", "cells.json")

    collect, *_ = pipeline.stages()
    run = pipeline.inputs()
    with pytest.raises(AtlasError) as raised:
        run_stages([dataclasses.replace(collect, work=full)], run)
    message = str(raised.value)
    assert len(message.splitlines()) == 1 and message.startswith("collect: ") and "cells.json" in message, message
    assert pipeline.run()["collect"].cached is False, "the interrupted stage was not marked done"


def test_reports_merge_mappings_deeply_and_levels_by_grid() -> None:
    base = {"name": "a", "stages": {"collect": {"seconds": 1}}, "levels": [{"grid": 4, "cells": 9}]}
    merged = merge_reports(
        base,
        {"stages": {"layout": {"seconds": 2}}, "levels": [{"grid": 2, "cells": 3}]},
        {"name": "b", "levels": [{"grid": 4, "icons": 9}, {"grid": 2, "tiles": True}]},
    )
    assert merged == {
        "name": "b",
        "stages": {"collect": {"seconds": 1}, "layout": {"seconds": 2}},
        "levels": [{"grid": 2, "cells": 3, "tiles": True}, {"grid": 4, "cells": 9, "icons": 9}],
    }
    assert base["levels"] == [{"grid": 4, "cells": 9}] and base["stages"] == {"collect": {"seconds": 1}}, "the base is not changed"
