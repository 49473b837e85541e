"""`atlas run` on a real Dask cluster with the images and the bundle on an S3-compatible object store.

Everything is started here as a user would start it (README, "Run on a cluster"): moto's standalone S3
server, `dask scheduler`, and two `dask worker` processes whose working folder is not the driver's, so
nothing can reach them through a shared local path. Opt-in (`-m cluster`, about two minutes), and run by
.ci/run after the default suite.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from atlas import open_bundle
from atlas.runtime import MALLOC_ENVIRON

pytestmark = pytest.mark.cluster

BUCKET = "atlas-cluster-test"
SECRET = "secret-5f0c1e9a"  # must never reach a manifest
SMALL = [
    "--set", "model.input_size=128",
    "--set", "collect.positions_per_image=3",
    "--set", "collect.shard_size=2",
    "--set", "collect.batch_size=16",
    "--set", "layout.fit_sample=40",
    "--set", "layout.chunk_size=12",
    "--set", "layout.n_neighbors=8",
    "--set", "grid.sizes=[2,4]",
    "--set", "grid.min_count=1",
    "--set", "render.steps=8",
    "--set", "render.icon_size=48",
    "--set", "render.batch_size=2",
]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for_port(port: int, process: subprocess.Popen, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"{what} did not listen on port {port} within {timeout} s")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def store_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """moto's S3 server on 127.0.0.1, and the standard AWS variables that point every process at it."""
    port = _free_port()
    server = subprocess.Popen(
        ["moto_server", "-H", "127.0.0.1", "-p", str(port)],
        cwd=tmp_path_factory.mktemp("moto"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "atlas-test",
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {name: os.environ.get(name) for name in env}
    try:
        _wait_for_port(port, server, "moto_server")
        os.environ.update(env)
        import fsspec

        fsspec.filesystem("s3", skip_instance_cache=True).mkdir(BUCKET)
        yield env
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        _stop(server)


@pytest.fixture(scope="module")
def images(photo_folder: Path, tmp_path_factory: pytest.TempPathFactory, store_env: dict[str, str]) -> tuple[Path, str]:
    """The same image tree twice: a local folder for the reference run and a copy on the store for the cluster."""
    from skimage import data

    local = tmp_path_factory.mktemp("images") / "photos"
    shutil.copytree(photo_folder, local)
    (local / "more").mkdir()
    for name in ("astronaut", "coffee", "chelsea"):
        picture = Image.fromarray(getattr(data, name)())
        for k in range(8):
            picture.crop((20 * k, 10 * k, 20 * k + 220, 10 * k + 220)).save(local / "more" / f"{name}_{k}.jpg", quality=90)
    import fsspec

    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    files = sorted(p for p in local.rglob("*") if p.is_file())
    fs.put([str(p) for p in files], [f"{BUCKET}/photos/{p.relative_to(local).as_posix()}" for p in files])
    return local, f"s3://{BUCKET}/photos"


@dataclass
class Cluster:
    address: str
    scheduler: subprocess.Popen
    workers: list[subprocess.Popen]

    def worker_pids(self) -> dict[str, int]:
        from distributed import Client

        with Client(self.address, timeout="10s") as client:
            return client.run(os.getpid)


@pytest.fixture(scope="module")
def cluster(store_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """`dask scheduler` and two `dask worker`s (one thread each, the README's malloc variables), in their own folder."""
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    folder = tmp_path_factory.mktemp("workers")
    env = {**os.environ, **store_env, **MALLOC_ENVIRON, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    scheduler = subprocess.Popen(
        ["dask", "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
        cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    workers: list[subprocess.Popen] = []
    try:
        _wait_for_port(port, scheduler, "dask scheduler")
        for n in range(2):
            command = ["dask", "worker", address, "--nthreads", "1", "--nworkers", "1", "--memory-limit", "0", "--no-dashboard"]
            command += ["--local-directory", str(folder / f"scratch-{n}")]
            workers.append(subprocess.Popen(command, cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        from distributed import Client

        with Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=120)
        yield Cluster(address, scheduler, workers)
    finally:
        for process in [*workers, scheduler]:
            _stop(process)
    assert not (folder / "outputs").exists(), "workers wrote under their own working folder"


@pytest.fixture(scope="module")
def local_reference(images: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same config on this machine: a local cluster of two one-thread workers, local images, local bundle."""
    out = tmp_path_factory.mktemp("local")
    _atlas(["--images", str(images[0]), "--out", str(out), "--name", "reference", *_LOCAL], {})
    return out / "reference"


_LOCAL = ["--set", "scheduler.workers=2", "--set", "scheduler.threads_per_worker=1", *SMALL]


def _atlas(args: list[str], env: dict[str, str], cwd: Path | None = None) -> subprocess.Popen:
    process = _start(args, env, cwd)
    out, _ = process.communicate(timeout=600)
    assert process.returncode == 0, out[-4000:]
    return process


def _start(args: list[str], env: dict[str, str], cwd: Path | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "atlas_pipelines.commands.cli", "run", *args],
        cwd=cwd, env={**os.environ, **env, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def _cluster_run(cluster: Cluster, images: tuple[Path, str], name: str, env: dict[str, str]) -> list[str]:
    return ["--images", images[1], "--out", f"s3://{BUCKET}/runs", "--name", name, "--scheduler", cluster.address, *SMALL]


def assert_same_atlas(expected_root: Path | str, found_root: str) -> None:
    """Activations, coordinates, cells and icons all equal, bit for bit."""
    expected, found = open_bundle(expected_root), open_bundle(found_root)
    a, b = expected.rows(), found.rows()
    for field in ("activation", "attribution", "image_id", "y", "x", "label"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)
    np.testing.assert_array_equal(expected.coords(), found.coords())
    assert expected.grids == found.grids == [2, 4]
    for grid in expected.grids:
        one, two = expected.level(grid), found.level(grid)
        strip = ("icon", "examples")  # paths are relative and equal; patches are compared through the examples below
        assert [{k: v for k, v in c.to_json().items() if k not in strip} for c in one.cells] == [
            {k: v for k, v in c.to_json().items() if k not in strip} for c in two.cells
        ]
        assert [c.icon for c in one.cells] == [c.icon for c in two.cells]
        np.testing.assert_array_equal(one.directions, two.directions)
        for icon_a, icon_b in zip(one.icons, two.icons):
            assert icon_a is not None and icon_b is not None
            np.testing.assert_array_equal(np.asarray(icon_a), np.asarray(icon_b))


def test_cluster_run_on_object_storage_equals_the_local_run(
    cluster: Cluster, images: tuple[Path, str], local_reference: Path, store_env: dict[str, str], tmp_path: Path
) -> None:
    driver = tmp_path / "driver"
    driver.mkdir()
    _atlas(_cluster_run(cluster, images, "clean", store_env), store_env, cwd=driver)
    assert_same_atlas(local_reference, f"s3://{BUCKET}/runs/clean")

    import fsspec

    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    manifest = fs.cat_file(f"{BUCKET}/runs/clean/manifest.json").decode()
    assert SECRET not in manifest and store_env["AWS_ENDPOINT_URL"] not in manifest
    assert '"dir": "s3://' in manifest
    assert fs.exists(f"{BUCKET}/runs/clean/tiles/4.dzi") and fs.exists(f"{BUCKET}/runs/clean/tiles/4.png")
    assert not any(driver.iterdir()), "the driver wrote to its working folder"

    # Viewing: `atlas serve s3://...` copies the viewer's files down (never the activation store) and serves them.
    from atlas.viewer.serve import local_copy

    copy = local_copy(f"s3://{BUCKET}/runs/clean", tmp_path / "view")
    assert (copy / "index.html").is_file() and (copy / "tiles" / "4.dzi").is_file()
    assert not (copy / "activations" / "rows.zarr").exists()
    assert open_bundle(copy).level(4).cells == open_bundle(f"s3://{BUCKET}/runs/clean").level(4).cells
    assert local_copy(f"s3://{BUCKET}/runs/clean", tmp_path / "view") == copy  # a second copy fetches nothing new


def _marker_count(prefix: str, pattern: str) -> int:
    import fsspec

    fs = fsspec.filesystem("s3", skip_instance_cache=True, use_listings_cache=False)
    return len(fs.glob(f"{BUCKET}/runs/{prefix}/{pattern}"))


@pytest.mark.parametrize(
    ("stage", "pattern", "at_least"),
    [("collect", "activations/done/*.json", 2), ("render", "levels/*/icons/.batch-*.json", 1)],
)
def test_a_worker_killed_mid_stage_loses_nothing(
    cluster: Cluster, images: tuple[Path, str], local_reference: Path, store_env: dict[str, str], stage: str, pattern: str, at_least: int
) -> None:
    name = f"killed-{stage}"
    run = _start(_cluster_run(cluster, images, name, store_env), store_env)
    deadline = time.monotonic() + 300
    while _marker_count(name, pattern) < at_least:
        assert run.poll() is None, f"the run ended before {stage} was under way:\n{run.stdout.read() if run.stdout else ''}"
        assert time.monotonic() < deadline, f"{stage} did not start"
        time.sleep(0.05)
    victim_address, victim = sorted(cluster.worker_pids().items())[0]
    os.kill(victim, signal.SIGKILL)  # the worker process; its nanny starts a replacement, as `dask worker` does in production
    out, _ = run.communicate(timeout=600)
    assert run.returncode == 0, out[-4000:]
    done_when_killed = _marker_count(name, pattern)
    assert done_when_killed > 0
    assert victim not in cluster.worker_pids().values(), f"{victim_address} was not killed"
    assert_same_atlas(local_reference, f"s3://{BUCKET}/runs/{name}")
    bundle = open_bundle(f"s3://{BUCKET}/runs/{name}")
    reference = open_bundle(local_reference)
    assert bundle.manifest["n_activations"] == reference.manifest["n_activations"] == len(bundle.rows())  # none lost, none twice


def test_a_model_the_workers_cannot_import_fails_in_one_line(
    cluster: Cluster, images: tuple[Path, str], store_env: dict[str, str], tmp_path: Path
) -> None:
    module = tmp_path / "only_here" / "private_models.py"
    module.parent.mkdir()
    module.write_text(
        "from collections import OrderedDict\n"
        "import torch.nn as nn\n"
        "def tiny():\n"
        "    return nn.Sequential(OrderedDict(conv=nn.Conv2d(3, 8, 3, padding=1), relu=nn.ReLU(), pool=nn.AdaptiveAvgPool2d(1),\n"
        "                                     flat=nn.Flatten(), fc=nn.Linear(8, 4)))\n"
    )
    env = {**store_env, "PYTHONPATH": str(module.parent)}  # the driver can import it; the workers cannot
    args = ["--images", images[1], "--out", f"s3://{BUCKET}/runs", "--name", "private", "--scheduler", cluster.address,
            "--set", "model.spec=private_models:tiny", "--set", "model.layer=relu", "--set", "model.pretrained=false", *SMALL]  # fmt: skip
    process = _start(args, env)
    out, _ = process.communicate(timeout=300)
    assert process.returncode != 0
    errors = [line for line in out.splitlines() if line.startswith("atlas: error")]
    assert len(errors) == 1, out[-3000:]
    assert "private_models" in errors[0] and "scheduler.upload" in errors[0] and "PYTHONPATH" in errors[0]
    assert "Traceback" not in out

    # The fix the message names: Dask uploads the module to every worker.
    process = _start([*args, "--set", f"scheduler.upload=[{module}]"], env)
    out, _ = process.communicate(timeout=600)
    assert process.returncode == 0, out[-4000:]
    assert open_bundle(f"s3://{BUCKET}/runs/private").manifest["channels"] == 8
