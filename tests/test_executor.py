"""A failed stage on a real Dask cluster leaves no task of its own running: the bundle's lock is released after it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from atlas_pipelines.engine.executor import DaskExecutor, _running_keys


def write_after(path: Path, seconds: float) -> str:
    time.sleep(seconds)
    path.write_text("written")
    return path.name


def fail_after(seconds: float) -> None:
    time.sleep(seconds)
    raise RuntimeError("no space left on device")


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    """One worker process with two threads on 127.0.0.1: a failing task and a slow one run side by side."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=1, threads_per_worker=2, processes=True, host="127.0.0.1", dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        yield client


def test_a_failed_task_surfaces_only_once_the_running_ones_ended_and_the_queued_ones_never_start(client: Any, tmp_path: Path) -> None:
    ex = DaskExecutor(client, 1)
    running = tmp_path / "running"
    queued = [tmp_path / f"queued-{n}" for n in range(4)]
    futures = [ex.submit(fail_after, 0.3), ex.submit(write_after, running, 1.5)]
    futures += [ex.submit(write_after, path, 0.5) for path in queued]
    with pytest.raises(RuntimeError, match="no space"):
        for future in ex.as_completed(futures):
            future.result()
    assert running.read_text() == "written"  # the task on the other thread had ended before the error was raised
    assert not any(client.run(_running_keys).values())
    written = sorted(tmp_path.iterdir())
    # The failed task's thread may take one queued task before the cancel reaches the worker; that one ended too.
    assert len(written) <= 2, written
    time.sleep(1.0)
    assert sorted(tmp_path.iterdir()) == written  # nothing ran on after the error was raised


def test_a_caller_that_stops_early_stops_the_tasks_too(client: Any, tmp_path: Path) -> None:
    ex = DaskExecutor(client, 1)
    slow = tmp_path / "slow"
    futures = [ex.submit(write_after, tmp_path / "quick", 0.05), ex.submit(write_after, slow, 1.0)]
    with pytest.raises(KeyboardInterrupt):
        for _ in ex.as_completed(futures):
            raise KeyboardInterrupt
    assert slow.read_text() == "written"
    assert not any(client.run(_running_keys).values())


def test_a_normal_end_leaves_tasks_submitted_meanwhile_running(client: Any, tmp_path: Path) -> None:
    """Tiles submits a grid's pyramid while its bands complete: the bands' loop ending must not cancel it."""
    ex = DaskExecutor(client, 1)
    later: list[Any] = []
    for future in ex.as_completed([ex.submit(write_after, tmp_path / "band", 0.05)]):
        later.append(ex.submit(write_after, tmp_path / "pyramid", 0.5))
        future.result()
    assert [future.result() for future in ex.as_completed(later)] == ["pyramid"]


def hold_and_free_heap(megabytes: int) -> int:
    """On a worker with atlas's allocator settings: allocate in small blocks, free them, return the RSS left (MB)."""
    import numpy as np
    import psutil

    from atlas.runtime import tune_allocator

    tune_allocator()  # atlas's workers start with these thresholds; this test's cluster is Dask's own
    blocks = [np.ones(1 << 16) for _ in range(megabytes * 2)]  # 512 KiB each: below the mmap threshold, on the heap
    del blocks
    return int(psutil.Process().memory_info().rss >> 20)


def worker_rss(dask_worker: Any) -> int:
    import psutil

    return int(psutil.Process().memory_info().rss >> 20)


def test_between_stages_the_workers_hand_back_the_heap_a_stage_freed(client: Any) -> None:
    """atlas keeps freed heap for speed within a stage (atlas.runtime); between stages it is returned, so a long-lived
    worker does not carry every earlier stage's high-water mark into the next one."""
    from contextlib import ExitStack

    from atlas.config import SchedulerConfig
    from atlas_pipelines.engine.executor import LazyExecutor

    with ExitStack() as stack:
        lazy = LazyExecutor(SchedulerConfig(), stack, lambda _: None, client=client)
        kept = lazy().submit(hold_and_free_heap, 600).result()
        before = min(client.run(worker_rss).values())
        lazy.release_memory()
        after = min(client.run(worker_rss).values())
    assert kept >= before >= after + 400, (kept, before, after)
