"""Kills and Ctrl-C inside render and tiles, and runs racing for one bundle, as a user would meet them.

Every run here is a real `atlas run` subprocess on the default local Dask cluster (two single-threaded
workers), small settings. The kill or the signal lands inside a stage deterministically: the test
waits for that stage's first finished piece of work (a shard's, an icon batch's or a grid's marker),
then sends it. Opt-in: ``python -m pytest -q -m faults tests/test_faults_stages.py`` (.ci/run runs it).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from atlas.bundle import Bundle
from atlas.lock import OWNER_FILE
from atlas_pipelines.stages.render import plan_batches

pytestmark = pytest.mark.faults

SIZES = (2, 4)
BATCH = 2  # icons per render task: 9 batches over the two grids, so a kill leaves most of them unfinished
ARGS = [
    "--set", "model.input_size=128",
    "--set", "collect.positions_per_image=3",
    "--set", "collect.shard_size=3",
    "--set", "collect.batch_size=16",
    "--set", "layout.fit_sample=30",
    "--set", "layout.chunk_size=12",
    "--set", "layout.n_neighbors=8",
    "--set", f"grid.sizes=[{','.join(map(str, SIZES))}]",
    "--set", "grid.min_count=1",
    "--set", "render.steps=8",
    "--set", "render.icon_size=48",
    "--set", f"render.batch_size={BATCH}",
    "--set", "tiles.scale=24",  # 1152 px cells: grid 4's canvas is 4608 px square, so tiling takes a moment
    "--set", "scheduler.workers=2",
    "--set", "scheduler.threads_per_worker=1",
]  # fmt: skip
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
HINT = "atlas: interrupted; re-run the same command to resume"
COMPARED = ("activations", "layout", "levels", "examples", "tiles")  # everything but the manifest (it holds timings)


def command(images: Path, out: Path, name: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "atlas_pipelines.commands.cli",
        "run",
        "--images",
        str(images),
        "--out",
        str(out),
        "--name",
        name,
        *ARGS,
        *extra,
    ]


def start(cmd: list[str], logs: Path) -> subprocess.Popen[bytes]:
    """A run in its own session (as in a terminal: Ctrl-C reaches the driver and its workers), logging to files."""
    return subprocess.Popen(
        cmd, env=ENV, stdout=logs.with_suffix(".out").open("wb"), stderr=logs.with_suffix(".err").open("wb"), start_new_session=True
    )


def wait_for(process: subprocess.Popen[bytes], ready: Callable[[], bool], logs: Path, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None:
            pytest.fail(f"the run ended ({process.returncode}) before the fault: {logs.with_suffix('.err').read_text()[-2000:]}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("timed out waiting for the stage to start")
        time.sleep(0.02)


def stop(process: subprocess.Popen[bytes], sig: signal.Signals) -> tuple[int, float]:
    """SIGKILL the driver alone (kill -9 PID), or SIGINT its whole group (Ctrl-C); wait until its workers are gone too.

    Returns the exit code and the seconds from the signal to the last process gone.
    """
    workers = psutil.Process(process.pid).children(recursive=True)
    sent = time.monotonic()
    if sig == signal.SIGKILL:
        process.kill()
    else:
        os.killpg(process.pid, sig)
    code = process.wait(timeout=120)
    _, alive = psutil.wait_procs(workers, timeout=60)
    for orphan in alive:
        orphan.kill()
    assert not alive, f"worker processes outlived their driver: {alive}"
    return code, time.monotonic() - sent


def finish(cmd: list[str], logs: Path) -> str:
    result = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=900)
    logs.with_suffix(".out").write_text(result.stdout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def contents(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for part in COMPARED for p in sorted((root / part).rglob("*")) if p.is_file()}


def stamps(root: Path, names: list[str]) -> dict[str, tuple[int, bytes]]:
    return {name: ((root / name).stat().st_mtime_ns, (root / name).read_bytes()) for name in names}


def tile_files(root: Path, grid: int) -> list[str]:
    files = [f"tiles/{grid}.dzi", f"tiles/{grid}.png", f"tiles/.{grid}.json"]
    return files + [str(p.relative_to(root)) for p in sorted((root / f"tiles/{grid}_files").rglob("*")) if p.is_file()]


def assert_identical(root: Path, clean: Path) -> None:
    """Byte for byte, and nothing more: a killed run's temporaries and lock record are gone."""
    resumed, expected = contents(root), contents(clean)
    assert resumed.keys() == expected.keys(), sorted(set(resumed) ^ set(expected))
    assert [name for name in expected if resumed[name] != expected[name]] == []
    assert not any(root.rglob("*.tmp")) and not (root / OWNER_FILE).exists()


@pytest.fixture(scope="module")
def clean(photo_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same command run once without faults: what every interrupted bundle must end up as."""
    out = tmp_path_factory.mktemp("clean")
    finish(command(photo_folder, out, "atlas"), out / "clean")
    return out / "atlas"


def test_sigkill_in_render_then_in_tiles_resumes_identically_without_redoing_finished_work(
    photo_folder: Path, clean: Path, tmp_path: Path
) -> None:
    cmd, root = command(photo_folder, tmp_path, "atlas"), tmp_path / "atlas"

    # 1. kill -9 the run once its first icon batch is done: the rest of render is unfinished.
    first = start(cmd, tmp_path / "1")
    wait_for(first, lambda: any(root.glob("levels/*/icons/.batch-*.json")), tmp_path / "1")
    stop(first, signal.SIGKILL)
    batches = plan_batches(Bundle(root), SIZES, BATCH, 0)
    done = [b for b in batches if (root / b.marker).exists()]
    assert 1 <= len(done) < len(batches) and not (root / ".stages/render.json").exists(), "the kill landed inside render"
    finished_icons = stamps(root, [icon for b in done for icon in b.icons])

    # 2. The same command: takes the dead run's lock over, renders only the unfinished batches; kill -9 it once a grid is tiled.
    second = start(cmd, tmp_path / "2")
    wait_for(second, lambda: any(root.glob("tiles/.*.json")), tmp_path / "2")
    stop(second, signal.SIGKILL)
    log = (tmp_path / "2.out").read_text()
    assert f"taking over from a run that stopped without releasing it (pid {first.pid} on {socket.gethostname()}" in log
    assert f"[render] rendering {len(batches) - len(done)} of {len(batches)} icon batches ({len(done)} already done" in log
    assert stamps(root, list(finished_icons)) == finished_icons, "finished batches were not rendered again"
    tiled = [g for g in SIZES if (root / f"tiles/.{g}.json").exists()]
    assert 1 <= len(tiled) < len(SIZES) and not (root / ".stages/tiles.json").exists(), "the kill landed inside tiles"
    finished_tiles = stamps(root, [name for g in tiled for name in tile_files(root, g)])

    # 3. The same command again: tiles only the grids left, and the bundle is the clean run's, byte for byte.
    log = finish(cmd, tmp_path / "3")
    assert "[render] cached" in log
    assert f"[tiles] tiling {len(SIZES) - len(tiled)} of {len(SIZES)} grids ({len(tiled)} already done" in log
    assert stamps(root, list(finished_tiles)) == finished_tiles, "finished grids were not tiled again"
    assert_identical(root, clean)
    print(f"\nrender: {len(done)} of {len(batches)} batches finished before the kill, {len(batches) - len(done)} re-rendered;", end=" ")
    print(f"tiles: {len(tiled)} of {len(SIZES)} grids finished before the kill, {len(SIZES) - len(tiled)} re-tiled")


def test_ctrl_c_in_collect_render_and_tiles_exits_130_with_the_resume_hint(photo_folder: Path, clean: Path, tmp_path: Path) -> None:
    cmd, root = command(photo_folder, tmp_path, "atlas"), tmp_path / "atlas"
    first_piece = {
        "collect": lambda: any(root.glob("activations/done/*.json")),
        "render": lambda: any(root.glob("levels/*/icons/.batch-*.json")),
        "tiles": lambda: any(root.glob("tiles/.*.json")),
    }
    for stage, ready in first_piece.items():
        run = start(cmd, tmp_path / stage)
        wait_for(run, ready, tmp_path / stage)
        code, seconds = stop(run, signal.SIGINT)  # the terminal's Ctrl-C: driver and workers alike
        err = (tmp_path / f"{stage}.err").read_text()
        assert code == 130, err[-2000:]
        assert err.rstrip().splitlines()[-1] == HINT and "Traceback" not in err
        assert not (root / ".stages" / f"{stage}.json").exists(), f"Ctrl-C landed inside {stage}"
        assert not (root / OWNER_FILE).exists(), "the lock was released"
        assert seconds < 60
        print(f"\nCtrl-C in {stage}: exit 130 after {seconds:.1f} s", end="")
    log = finish(cmd, tmp_path / "last")
    assert "[lock]" not in log, "nothing to take over after Ctrl-C"
    assert_identical(root, clean)


def test_a_second_run_into_the_same_bundle_refuses_and_a_killed_runs_lock_is_taken_over(
    photo_folder: Path, clean: Path, tmp_path: Path
) -> None:
    cmd, root = command(photo_folder, tmp_path, "atlas"), tmp_path / "atlas"
    first = start(cmd, tmp_path / "first")
    wait_for(first, lambda: (root / OWNER_FILE).exists(), tmp_path / "first")
    started = time.monotonic()
    second = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=120)
    seconds = time.monotonic() - started
    err = second.stderr.strip().splitlines()
    assert second.returncode == 2 and len(err) == 1, second.stderr[-2000:]
    assert f"pid {first.pid} on {socket.gethostname()}, started 20" in err[0] and "command: cli.py run --images" in err[0]
    assert first.poll() is None, "the first run goes on undisturbed"
    print(f"\nrefused in {seconds:.1f} s (interpreter start included): {err[0]}")

    stop(first, signal.SIGKILL)  # dies holding the lock
    log = finish(cmd, tmp_path / "third")
    assert f"taking over from a run that stopped without releasing it (pid {first.pid}" in log and "no longer running" in log
    assert_identical(root, clean)


def test_two_runs_into_different_bundles_at_once_both_succeed(photo_folder: Path, clean: Path, tmp_path: Path) -> None:
    runs = {name: start(command(photo_folder, tmp_path, name), tmp_path / name) for name in ("a", "b")}
    wait_for(runs["b"], lambda: all((tmp_path / name / OWNER_FILE).exists() for name in runs), tmp_path / "b")  # both hold a lock at once
    for name, run in runs.items():
        assert run.wait(timeout=900) == 0, (tmp_path / f"{name}.err").read_text()[-2000:]
        assert_identical(tmp_path / name, clean)
