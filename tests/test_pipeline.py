"""`atlas run` end to end on real models and real images, as a user would run it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from atlas_pipelines.commands.cli import main

SMALL = [
    "--set", "model.input_size=128",
    "--set", "collect.positions_per_image=3",
    "--set", "collect.shard_size=6",
    "--set", "collect.batch_size=16",
    "--set", "layout.fit_sample=30",
    "--set", "layout.chunk_size=12",
    "--set", "layout.n_neighbors=8",
    "--set", "grid.sizes=[2,4]",
    "--set", "grid.min_count=1",
    "--set", "render.steps=8",
    "--set", "render.icon_size=48",
]  # fmt: skip


def read_bundle(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


@pytest.fixture(scope="module")
def photo_run(photo_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One in-process run over the photo folder, shared by the tests that read it."""
    out = tmp_path_factory.mktemp("runs")
    assert main(["run", "--images", str(photo_folder), "--out", str(out), "--name", "photos", "--scheduler", "sync", *SMALL]) == 0
    return out / "photos"


def test_folder_run_skips_broken_files_and_writes_the_contract(photo_folder: Path, photo_run: Path) -> None:
    run_dir = photo_run
    manifest = read_bundle(run_dir)
    assert manifest["format"] == "activation-atlas/1"
    assert manifest["model"] == "efficientnet-lite0" and manifest["layer"] == "blocks.4"
    assert manifest["channels"] == 112 and manifest["input_size"] == 128
    assert manifest["n_images"] == 17
    assert manifest["n_activations"] == 17 * 3
    skipped = {Path(s["name"]).name for s in manifest["skipped"]["files"]}
    assert {"broken_truncated.jpg", "broken_text.jpg", "empty.png", "notes.txt"} <= skipped
    assert manifest["skipped"]["count"] == 4
    assert set(manifest["stages"]) == {
        "collect",
        "layout",
        "grid",
        "render",
        "examples",
        "path",
        "tiles",
    }  # examples: its own stage since issue 9
    assert manifest["config"]["images"]["source"] == str(photo_folder)

    coords = np.load(run_dir / "layout" / "coords.npy")
    assert coords.shape == (51, 2) and coords.dtype == np.float32
    assert coords.min() >= 0.0 and coords.max() <= 1.0
    whitening = np.load(run_dir / "layout" / "whitening.npy")
    assert whitening.shape == (112, 112)
    for level in manifest["levels"]:
        cells = json.loads((run_dir / level["cells"]).read_text())
        directions = np.load(run_dir / level["directions"])
        assert directions.shape == (len(cells), 112) and directions.dtype == np.float32
        assert sum(c["count"] for c in cells) == 51
        assert all(0 <= c["i"] < level["grid"] and 0 <= c["j"] < level["grid"] for c in cells)
        assert all(len(c["top_classes"]) == 5 and c["top_classes"][0]["label"] for c in cells)

    # A second run of the same config is served from the cache.
    assert (
        main(["run", "--images", str(photo_folder), "--out", str(run_dir.parent), "--name", "photos", "--scheduler", "sync", *SMALL]) == 0
    )
    assert all(stage["cached"] for stage in read_bundle(run_dir)["stages"].values())


def test_wrong_layer_fails_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", "--layer", "blocks.44", "--out", str(tmp_path), "--name", "bad", "--scheduler", "sync"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "blocks.44" in err and "blocks.4" in err
    assert not (tmp_path / "bad" / "activations").exists()


def test_local_dask_cluster_gives_the_same_rows_as_in_process(photo_folder: Path, photo_run: Path, tmp_path: Path) -> None:
    # The default scheduler: a local cluster of worker processes, each loading the model once.
    assert main(["run", "--images", str(photo_folder), "--out", str(tmp_path), "--name", "dask", *SMALL]) == 0
    import zarr

    a = zarr.open_group(photo_run / "activations" / "rows.zarr", mode="r")
    b = zarr.open_group(tmp_path / "dask" / "activations" / "rows.zarr", mode="r")
    for name in ("image_id", "y", "x", "valid"):
        np.testing.assert_array_equal(a[name][:], b[name][:])
    # Thread counts differ (one per worker vs all cores in-process), so float sums differ in the last bits.
    for name in ("activation", "attribution"):
        expected = a[name][:]
        np.testing.assert_allclose(b[name][:], expected, rtol=1e-3, atol=5e-3 * np.abs(expected).max())
    coords = np.load(tmp_path / "dask" / "layout" / "coords.npy")
    assert coords.shape == (51, 2) and coords.min() >= 0.0 and coords.max() <= 1.0


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_kill_and_resume_gives_identical_activations(tmp_path: Path) -> None:
    args = [
        sys.executable, "-m", "atlas_pipelines.commands.cli", "run", "--scheduler", "sync", "--until", "collect",
        "--set", "collect.n_images=48", "--set", "collect.shard_size=3", *SMALL[:4], *SMALL[6:],
    ]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    subprocess.run([*args, "--out", str(tmp_path), "--name", "whole"], check=True, env=env, capture_output=True)

    killed = subprocess.Popen(
        [*args, "--out", str(tmp_path), "--name", "killed"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    done = tmp_path / "killed" / "activations" / "done"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and len(list(done.glob("*.json")) if done.exists() else []) < 5:
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    finished = len(list(done.glob("*.json")))
    assert 5 <= finished < 16, "the kill should land in the middle of collection"

    subprocess.run([*args, "--out", str(tmp_path), "--name", "killed"], check=True, env=env, capture_output=True)
    whole = _files(tmp_path / "whole" / "activations")
    resumed = _files(tmp_path / "killed" / "activations")
    assert whole.keys() == resumed.keys()
    assert all(whole[name] == resumed[name] for name in whole)
    assert read_bundle(tmp_path / "killed")["n_activations"] == 48 * 3
