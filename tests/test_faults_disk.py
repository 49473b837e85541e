"""A full disk in the middle of collect, render and tiles (issue 13, item 3).

What a user must see: one line naming the stage and the file (exit 2); nothing half-written counted as done
(no marker for unfinished work, no temporary file left); and after space is freed the same command finishes
with a bundle identical to a clean run's (rows, coordinates, cells, icons, tiles: every file, byte for byte).

The disk is filled in two ways. The in-process cases run on each one this machine allows; the Dask case on the
tmpfs where it can be mounted, else on the layer:

- ``tmpfs``: a real, small file system, ``mount -t tmpfs -o size=16m`` on the bundle's parent folder (needs root
  or CAP_SYS_ADMIN; skipped cleanly without, as on a CI machine that lacks the privilege). A filler file leaves
  the free space a case wants; "freeing space" shrinks or deletes it. Every writer meets the kernel's ENOSPC:
  atlas.io, Zarr's chunks, the canvas, libvips' pyramid and poster, in the driver and in Dask workers.
- ``layer``: a byte budget enforced in the Python write path, portable to any machine. ``open`` and ``io.open``
  (so pathlib, atlas.io, Zarr's LocalStore, numpy, PIL) return files whose writes are charged, and ``os.write``
  and ``os.pwrite`` (the canvas) are charged by the file their descriptor names. The disk's use is the allocated
  size (st_blocks) of the files under the bundle's parent folder, so the driver and Dask workers share one budget
  (a run's subprocess and its workers install the layer at start-up, from a sitecustomize on PYTHONPATH). A write
  past the budget writes what fits, then raises OSError(ENOSPC) as a real disk does. libvips writes in C and is not charged (its files still count
  against later writes); the tmpfs variant covers it. Not RLIMIT_FSIZE: that caps each file's size, not the
  disk's, and gives EFBIG, not ENOSPC (atlas reports EFBIG and EDQUOT the same way; see the unit tests).

A case's budget: the allocated bytes a clean run's bundle holds once the stages before it are done, plus half of
what the stage itself writes, so the disk fills in the middle of that stage.
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import pickle
import re
import subprocess
import sys
import time
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from atlas.bundle import Bundle
from atlas.errors import AtlasError
from atlas.io import out_of_space, partial_file, write_bytes, write_json, write_npy
from atlas_pipelines.commands.run import STAGE_NAMES
from atlas_pipelines.engine.stage import Stage, run_stages

RENDER_BATCH = 4  # several icon batches, so a render cut short has some done and some not
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
    "--set", f"render.batch_size={RENDER_BATCH}",
]  # fmt: skip
NAME = "atlas"
TMPFS_SIZE = 16 << 20
BLOCK = 4096
ENV_ROOT, ENV_CAPACITY = "ATLAS_TEST_DISK_ROOT", "ATLAS_TEST_DISK_CAPACITY"
TEMPORARY = re.compile(r"(\.tmp|\.partial)$|^\.canvas-")  # atlas.io's and libvips' temporaries, Zarr's, the canvas
LINE = re.compile(r"atlas: error: (\w+): no space left on device writing (into )?(\S+); free space and re-run the same command to resume")
IGNORED = {"manifest.json", ".lock", ".lock.json"}  # timings, cached flags, the holder's pid: differ between any two runs


def main(argv: list[str]) -> int:
    """``atlas`` in this process (imported late: a run's subprocess imports this module before runpy runs the CLI)."""
    from atlas_pipelines.commands.cli import main as atlas

    return atlas(argv)


# --- the byte-budget layer ---------------------------------------------------------------------------------------


class DiskLayer:
    """Files under ``root`` share the capacity written in ``capacity_file`` (-1: unlimited)."""

    def __init__(self, root: Path, capacity_file: Path) -> None:
        self.root, self.capacity_file = os.path.realpath(root), capacity_file

    def covers(self, file: Any) -> bool:
        if isinstance(file, int):
            return False
        path = os.path.realpath(os.fsdecode(file))
        return path == self.root or path.startswith(self.root + os.sep)

    def used(self) -> int:
        total = 0
        for folder, _, names in os.walk(self.root):
            for name in names:
                with suppress(FileNotFoundError):  # removed while walking (a worker's temporary file)
                    total += os.lstat(os.path.join(folder, name)).st_blocks * 512
        return total

    def allowed(self, n: int) -> int:
        """How many of ``n`` bytes about to be written fit."""
        capacity = int(self.capacity_file.read_text())
        return n if capacity < 0 else max(0, min(n, capacity - self.used()))


def _no_space() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class _ChargedFile:
    """A file open for writing whose writes the layer charges; everything else goes to the real file."""

    def __init__(self, file: Any, layer: DiskLayer) -> None:
        self._file, self._layer = file, layer

    def write(self, data: Any) -> int:
        view = data if isinstance(data, str) else memoryview(data).cast("B")
        fits = self._layer.allowed(len(view))
        if fits < len(view):
            if fits:
                self._file.write(view[:fits])
                self._file.flush()
            raise _no_space()
        return self._file.write(data)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __enter__(self) -> _ChargedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()

    def __iter__(self) -> Iterator[Any]:
        return iter(self._file)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)


def install(layer: DiskLayer, patch: Callable[[Any, str, Any], None] = setattr) -> None:
    """Route this process's writes through ``layer`` (``patch``: setattr, or pytest's monkeypatch.setattr)."""
    real_open, real_write, real_pwrite = io.open, os.write, os.pwrite

    def charged_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        handle = real_open(file, mode, *args, **kwargs)
        return _ChargedFile(handle, layer) if any(c in mode for c in "wax+") and layer.covers(file) else handle

    def charged(fd: int, data: Any) -> int:
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return len(data)
        return layer.allowed(len(data)) if layer.covers(path) else len(data)

    def charged_write(fd: int, data: Any) -> int:
        fits = charged(fd, data)
        if fits < len(data):
            if not fits:
                raise _no_space()
            return real_write(fd, memoryview(data).cast("B")[:fits])  # a short write; the next one fails
        return real_write(fd, data)

    def charged_pwrite(fd: int, data: Any, offset: int) -> int:
        fits = charged(fd, data)
        if fits < len(data):
            if not fits:
                raise _no_space()
            return real_pwrite(fd, memoryview(data).cast("B")[:fits], offset)
        return real_pwrite(fd, data, offset)

    patch(io, "open", charged_open)
    patch(builtins, "open", charged_open)
    patch(os, "write", charged_write)
    patch(os, "pwrite", charged_pwrite)


def install_from_env() -> None:
    """In a process the test started (the driver of a Dask run, its workers): the layer the environment describes."""
    if os.environ.get(ENV_ROOT):
        install(DiskLayer(Path(os.environ[ENV_ROOT]), Path(os.environ[ENV_CAPACITY])))


# Imported by every Python process started with its folder on PYTHONPATH: the driver of a run and, since Dask
# spawns them with the driver's environment, its workers. (Not Dask's worker preload: atlas sets its own.)
SITECUSTOMIZE = f"""
import os, sys
from importlib.machinery import PathFinder
from importlib.util import module_from_spec

if os.environ.get({ENV_ROOT!r}):
    sys.path.insert(0, {str(Path(__file__).parent)!r})
    import test_faults_disk

    test_faults_disk.install_from_env()
here = os.path.dirname(os.path.abspath(__file__))
spec = PathFinder.find_spec("sitecustomize", [p for p in sys.path if os.path.abspath(p or ".") != here])
if spec is not None and spec.loader is not None:  # the machine's own sitecustomize, if it has one
    spec.loader.exec_module(module_from_spec(spec))
"""


# --- the two disks ----------------------------------------------------------------------------------------------


class Disk:
    """The folder the bundle is written into, and how full it is."""

    kind = ""

    def __init__(self, root: Path) -> None:
        self.root = root

    def limit(self, budget: int) -> None:
        """From now on the bundle may hold at most ``budget`` allocated bytes."""
        raise NotImplementedError

    def free(self) -> None:
        """Free space, as a user would."""
        raise NotImplementedError


class Tmpfs(Disk):
    kind = "tmpfs"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.filler = root / ".filler"

    def limit(self, budget: int) -> None:
        size = TMPFS_SIZE - budget
        if self.filler.exists():
            assert size <= self.filler.stat().st_size, "budgets only grow"
            os.truncate(self.filler, size)  # truncating a tmpfs file gives its pages back
        else:
            with open(self.filler, "wb") as handle:
                os.posix_fallocate(handle.fileno(), 0, size)

    def free(self) -> None:
        self.filler.unlink()


class Layer(Disk):
    kind = "layer"

    def __init__(self, root: Path, capacity_file: Path) -> None:
        super().__init__(root)
        self.capacity_file = capacity_file
        self.free()

    def limit(self, budget: int) -> None:
        self.capacity_file.write_text(str(budget))

    def free(self) -> None:
        self.capacity_file.write_text("-1")


def mount_tmpfs(folder: Path, size: int) -> bool:
    """Mount a tmpfs of ``size`` bytes on ``folder``; False where this machine does not let us (or, with
    ATLAS_TEST_NO_TMPFS=1, to run the tests as they run there)."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.environ.get("ATLAS_TEST_NO_TMPFS"):
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "atlas-faults", str(folder)], capture_output=True)
    return done.returncode == 0


def unmount(folder: Path) -> None:
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def layer_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Layer:
    """The layer, in this process and (through the environment) in any run's subprocess and its Dask workers."""
    root = tmp_path / "disk"
    root.mkdir(exist_ok=True)
    disk = Layer(root, tmp_path / "capacity")
    install(DiskLayer(root, disk.capacity_file), monkeypatch.setattr)
    monkeypatch.setenv(ENV_ROOT, str(root))
    monkeypatch.setenv(ENV_CAPACITY, str(disk.capacity_file))
    return disk


@pytest.fixture(params=["tmpfs", "layer"])
def disk(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Disk]:
    """Each disk in turn (the tmpfs skipped where it cannot be mounted)."""
    if request.param == "layer":
        yield layer_disk(tmp_path, monkeypatch)
        return
    if not mount_tmpfs(tmp_path / "disk", TMPFS_SIZE):
        pytest.skip("cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN); the layer variant covers the case")
    try:
        yield Tmpfs(tmp_path / "disk")
    finally:
        unmount(tmp_path / "disk")


@pytest.fixture
def best_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Disk]:
    """The real tmpfs where it can be mounted, else the layer: one case that runs everywhere."""
    if not mount_tmpfs(tmp_path / "disk", TMPFS_SIZE):
        yield layer_disk(tmp_path, monkeypatch)
        return
    try:
        yield Tmpfs(tmp_path / "disk")
    finally:
        unmount(tmp_path / "disk")


# --- what a clean run writes, and when ------------------------------------------------------------------------------


def owner(relative: str) -> str:
    """Which step writes a bundle file (``before`` the stages, a stage, or ``assemble`` after them)."""
    parts = relative.split("/")
    if parts[0] == ".stages":
        return parts[1].removesuffix(".json")
    if parts[0] == "activations":
        return "collect"
    if parts[0] in ("layout", "examples", "tiles", "render"):
        return parts[0]
    if parts[0] == "levels" and len(parts) > 2:
        if parts[2] in ("grid.json", "directions.npy", "attribution.npy"):
            return "grid"
        if parts[2] in ("icons", "views", "fidelity.json"):
            return "render"
        if parts[2] == "path.json":
            return "path"
    if parts[0] == "images" or (len(parts) == 1 and parts[0].startswith(".lock")):
        return "before"
    return "assemble"


ORDER = ("before", *STAGE_NAMES, "assemble")


def allocated(path: Path) -> int:
    return -(-path.stat().st_size // BLOCK) * BLOCK


def files(root: Path) -> dict[str, Path]:
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}


def budget_in(clean: Path, stage: str, fraction: float = 0.5) -> int:
    """Allocated bytes of the clean bundle once the stages before ``stage`` are done, plus ``fraction`` of its own."""
    sizes = dict.fromkeys(ORDER, 0)
    for relative, path in files(clean).items():
        sizes[owner(relative)] += allocated(path)
    before = sum(sizes[step] for step in ORDER[: ORDER.index(stage)])
    return before + int(sizes[stage] * fraction) // BLOCK * BLOCK


def canvas_bytes(clean: Path) -> int:
    """What the tiles stage's canvases hold at their fullest (both exist until the pyramids are cut)."""
    levels = json.loads((clean / "manifest.json").read_text())["levels"]
    return sum(-(-(level["canvas_px"] ** 2) * 3 // BLOCK) * BLOCK + BLOCK for level in levels if level.get("dzi"))


# --- running atlas, and what a failed run may leave ------------------------------------------------------------------


def run_here(photos: Path, out: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    """``atlas run`` in this process: its exit code and what it printed on stderr."""
    capsys.readouterr()
    code = main(["run", "--images", str(photos), "--out", str(out), "--name", NAME, *SMALL, *extra])
    return code, capsys.readouterr().err


def run_subprocess(photos: Path, out: Path, *extra: str) -> tuple[int, str]:
    """``atlas run`` as its own process (``python -m atlas_pipelines.commands.cli``), with the layer, when the test set one, in it
    and in its Dask workers: its exit code and its stderr, the workers' included."""
    startup = out.parent / "startup"
    startup.mkdir(exist_ok=True)
    (startup / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(startup), os.environ.get("PYTHONPATH")]))}
    args = ["run", "--images", str(photos), "--out", str(out), "--name", NAME, *SMALL, *extra]
    done = subprocess.run(
        [sys.executable, "-m", "atlas_pipelines.commands.cli", *args], capture_output=True, text=True, timeout=600, env=env
    )
    return done.returncode, done.stderr


def check_failed(code: int, err: str, stage: str, bundle: Path) -> str:
    """Exit 2, no traceback, and one error line naming ``stage`` and a file (or the folder) of the bundle."""
    assert code == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("atlas: error:")]
    assert len(errors) == 1 and err.rstrip().endswith(errors[0]), err[-3000:]
    match = LINE.fullmatch(errors[0])
    assert match is not None, errors[0]
    assert match.group(1) == stage, errors[0]
    named = Path(match.group(3))
    assert named == bundle or bundle in named.parents, errors[0]
    return errors[0]


def check_nothing_half_done(bundle: Path, clean: Path, stage: str) -> None:
    """No temporary file is left, no marker claims unfinished work, and every marked piece equals the clean run's."""
    left = [r for r in files(bundle) if TEMPORARY.search(Path(r).name)]
    left += [p.relative_to(bundle).as_posix() for p in bundle.rglob("*.tmp") if p.is_dir()]  # libvips' pyramid folder
    assert not left, f"temporary files left by the failed {stage}: {left}"
    for later in ORDER[ORDER.index(stage) : ORDER.index("assemble")]:
        assert not (bundle / ".stages" / f"{later}.json").exists(), f"{later} marked done after {stage} ran out of space"
    assert not (bundle / "manifest.json").exists()
    clean_files = files(clean)
    # Collect: a shard marked done holds exactly the clean run's rows.
    import zarr

    done = sorted((bundle / "activations" / "done").glob("*.json"))
    if done:
        ours, theirs = (zarr.open_group(b / "activations" / "rows.zarr", mode="r") for b in (bundle, clean))
        per_shard = json.loads((clean / "activations" / "layout.json").read_text())["rows_per_shard"]
        for marker in done:
            rows = slice(int(marker.stem) * per_shard, (int(marker.stem) + 1) * per_shard)
            for name in ("activation", "attribution", "image_id", "y", "x", "label", "valid"):
                np.testing.assert_array_equal(ours[name][rows], theirs[name][rows], err_msg=f"shard {marker.stem}: {name}")
    # Render: a batch marked done has every icon, each the clean run's bytes.
    for marker in sorted(bundle.glob("levels/*/icons/.batch-*.json")):
        cells = json.loads((marker.parent.parent / "grid.json").read_text())
        index = int(marker.stem.removeprefix(".batch-"))
        for cell in cells[index * RENDER_BATCH : (index + 1) * RENDER_BATCH]:
            assert (bundle / cell["icon"]).read_bytes() == clean_files[cell["icon"]].read_bytes(), cell["icon"]
    # Tiles: a grid marked done has its whole pyramid and poster, the clean run's bytes.
    for marker in sorted((bundle / "tiles").glob(".*.json")) if (bundle / "tiles").exists() else []:
        grid = marker.stem.removeprefix(".")
        ours = {r: p for r, p in files(bundle).items() if r.startswith((f"tiles/{grid}_files/", f"tiles/{grid}."))}
        theirs = {r: p for r, p in clean_files.items() if r.startswith((f"tiles/{grid}_files/", f"tiles/{grid}."))}
        assert ours.keys() == theirs.keys(), f"grid {grid} marked tiled with files missing"
        assert all(ours[r].read_bytes() == theirs[r].read_bytes() for r in ours), f"grid {grid}: tiles differ"


def check_identical(bundle: Path, clean: Path) -> None:
    """Every file of the clean run's bundle, and no other, byte for byte: rows (Zarr chunks), coordinates, cells,
    icons, examples, tiles, markers, the viewer's blocks. Only the manifest (timings, cached flags) and the lock's
    holder record differ between any two runs; the manifest's levels and counts are compared instead."""
    ours, theirs = files(bundle), files(clean)
    assert sorted(set(ours) - IGNORED) == sorted(set(theirs) - IGNORED)
    differing = [r for r in theirs if r not in IGNORED and ours[r].read_bytes() != theirs[r].read_bytes()]
    assert not differing, f"differ from a clean run: {differing}"
    a, b = (json.loads((root / "manifest.json").read_text()) for root in (bundle, clean))
    for key in ("n_images", "n_activations", "levels", "skipped"):
        assert a[key] == b[key], key


# --- fixtures ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clean_run(photo_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: one uninterrupted in-process run with the same settings."""
    out = tmp_path_factory.mktemp("clean")
    args = ["run", "--images", str(photo_folder), "--out", str(out), "--name", NAME, *SMALL, "--scheduler", "sync"]
    assert main(args) == 0
    return out / NAME


# --- quick: the pieces (default suite) ------------------------------------------------------------------------------


@pytest.fixture
def layer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Layer:
    return layer_disk(tmp_path, monkeypatch)


def test_atomic_writes_on_a_full_disk_name_the_file_keep_the_old_one_and_leave_no_temporary(layer: Layer) -> None:
    """Layer variant: 64 KiB budget; every atlas.io writer, each over an existing file."""
    folder = layer.root / "levels" / "4"
    old = b"old contents\n"
    writers: dict[str, Callable[[Path], None]] = {
        "icon.png": lambda p: write_bytes(p, b"\x89PNG" + bytes(200_000)),
        "cells.json": lambda p: write_json(p, [{"i": i, "name": "x" * 100} for i in range(2_000)]),
        "directions.npy": lambda p: write_npy(p, np.ones((500, 112), np.float32)),
        "index.txt": lambda p: _stream(p, 20_000),
    }
    for name in writers:
        write_bytes(folder / name, old)
    layer.limit(64 << 10)
    for name, write in writers.items():
        with pytest.raises(OSError) as caught:
            write(folder / name)
        assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(folder / name), name
        assert (folder / name).read_bytes() == old, f"{name}: the old file was damaged"
    assert sorted(p.name for p in folder.iterdir()) == sorted(writers), "a temporary file was left behind"


def _stream(path: Path, lines: int) -> None:
    with partial_file(path) as handle:
        for n in range(lines):
            handle.write(f"image_{n:06d}.jpg\n".encode())


def _fake_run(root: Path) -> Any:
    return types.SimpleNamespace(bundle=Bundle(root), log=lambda message: None, executor=None)


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (
            OSError(errno.ENOSPC, "No space left on device", "B/levels/4/icons/1_2.png"),
            "render: no space left on device writing B/levels/4/icons/1_2.png; free space and re-run the same command to resume",
        ),
        (
            OSError(errno.ENOSPC, "No space left on device"),  # Zarr's and os.pwrite's errors name no file
            "render: no space left on device writing into B; free space and re-run the same command to resume",
        ),
        (
            OSError(errno.EDQUOT, "Disk quota exceeded", "B/x.png"),
            "render: disk quota exceeded writing B/x.png; free space or raise the disk quota and re-run the same command to resume",
        ),
        (
            OSError(errno.EFBIG, "File too large", "B/x.png"),
            "render: file too large writing B/x.png; raise the file-size limit (ulimit -f) and re-run the same command to resume",
        ),
        (
            RuntimeError("unable to call dzsave\n  vips__file_write: write error\nsystem error: No space left on device\n"),
            "render: no space left on device writing into B; free space and re-run the same command to resume",
        ),
    ],
    ids=["enospc", "no-file-name", "edquot", "efbig", "libvips-text"],
)
def test_stage_loop_turns_a_full_disk_into_one_line_and_marks_nothing_done(
    tmp_path: Path, raised: BaseException, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every form of the error, raised here or (pickled, as a Dask worker's is) on a worker."""
    monkeypatch.chdir(tmp_path)
    for error in (raised, pickle.loads(pickle.dumps(raised))):

        def work(call: Any, error: BaseException = error) -> dict:
            raise error

        stages = [Stage("grid", (), lambda run: None, lambda call: {}), Stage("render", ("grid",), lambda run: None, work)]
        with pytest.raises(AtlasError) as caught:
            run_stages(stages, _fake_run(Path("B")))
        assert str(caught.value) == expected.replace("writing into B", f"writing into {Bundle(Path('B')).root}")
        assert "\n" not in str(caught.value)
        assert (tmp_path / "B" / ".stages" / "grid.json").exists()
        assert not (tmp_path / "B" / ".stages" / "render.json").exists()


def test_a_marker_that_does_not_fit_is_not_written(layer: Layer) -> None:
    """Layer variant, budget = what the bundle holds: the stage's work returns, its marker cannot be written."""
    bundle = layer.root / "B"

    def work(call: Any) -> dict:
        write_bytes(bundle / "levels" / "2" / "icons" / "0_0.png", bytes(5000))
        layer.limit(layer_used(layer))
        return {"report": "x" * 10_000}

    with pytest.raises(AtlasError, match=r"^render: no space left on device writing .*\.stages/render\.json; free space"):
        run_stages([Stage("render", (), lambda run: None, work)], _fake_run(bundle))
    assert sorted(p.name for p in (bundle / ".stages").iterdir()) == []


def layer_used(layer: Layer) -> int:
    return DiskLayer(layer.root, layer.capacity_file).used()


def test_other_errors_are_left_alone(tmp_path: Path) -> None:
    """A permission error or a bug is not a full disk: it keeps its type (a traceback, or the CLI's own handling)."""
    for error in (PermissionError(errno.EACCES, "Permission denied", "x"), ValueError("a bug")):

        def work(call: Any, error: BaseException = error) -> dict:
            raise error

        with pytest.raises(type(error)):
            run_stages([Stage("render", (), lambda run: None, work)], _fake_run(tmp_path / "B"))
        assert out_of_space(error) is None


def test_truncated_or_empty_tiles_are_never_taken_as_written(tmp_path: Path) -> None:
    """What libvips may leave on a full disk while reporting success, checked on an ordinary disk (EIO: not full)."""
    from PIL import Image

    from atlas.tiles.pyramid import check_written

    folder = tmp_path / "4_files" / "0"
    folder.mkdir(parents=True)
    Image.new("RGB", (64, 64), (200, 10, 10)).save(folder / "0_0.jpg", quality=90)
    Image.new("RGB", (64, 64), (200, 10, 10)).save(folder / "0_1.png")
    check_written(tmp_path / "4_files", tmp_path / "out")
    for name, damage in (("0_0.jpg", lambda b: b[:-100]), ("0_1.png", lambda b: b[:-12]), ("0_0.jpg", lambda b: b"")):
        whole = (folder / name).read_bytes()
        (folder / name).write_bytes(damage(whole))
        with pytest.raises(OSError) as caught:
            check_written(tmp_path / "4_files", tmp_path / "out")
        assert caught.value.errno == errno.EIO and caught.value.filename == str(tmp_path / "out")
        (folder / name).write_bytes(whole)


@contextmanager
def small_tmpfs(folder: Path, size: int) -> Iterator[Path]:
    if not mount_tmpfs(folder, size):
        pytest.skip("cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN)")
    try:
        yield folder
    finally:
        unmount(folder)


def test_libvips_on_a_full_tmpfs_raises_and_leaves_nothing(tmp_path: Path) -> None:
    """tmpfs variant, 200 KiB: libvips 8.18's dzsave reports success there while leaving empty tiles and an empty
    .dzi; the pyramid and the poster must instead raise ENOSPC naming their output and leave nothing behind."""
    import pyvips

    from atlas.tiles.pyramid import save_poster, save_pyramid

    flat, noisy = tmp_path / "flat.png", tmp_path / "noisy.png"  # small tiles (libvips' silent case); an incompressible poster
    (pyvips.Image.black(1500, 1500, bands=3) + 100).cast("uchar").pngsave(str(flat))
    pyvips.Image.new_from_array(np.random.default_rng(0).integers(0, 256, (1000, 1000, 3), dtype=np.uint8)).pngsave(str(noisy))
    with small_tmpfs(tmp_path / "tiles", 200 << 10) as tiles:
        for save, output in (
            (lambda: save_pyramid(flat, tiles, "4"), tiles / "4_files"),
            (lambda: save_poster(noisy, tiles / "4.png"), tiles / "4.png"),
        ):
            with pytest.raises(OSError) as caught:
                save()
            assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(output)
            assert list(tiles.iterdir()) == []


def test_collect_on_a_full_disk_then_resumed_gives_the_clean_rows(
    photo_folder: Path, tmp_path: Path, layer: Layer, capsys: pytest.CaptureFixture[str]
) -> None:
    """Layer variant, in-process, ``--until collect``: the disk fills after the first shard's worth; then freed."""
    import zarr

    clean_out = tmp_path / "clean"
    assert run_here(photo_folder, clean_out, capsys, "--scheduler", "sync", "--until", "collect")[0] == 0
    clean = clean_out / NAME
    layer.limit(budget_in(clean, "collect", 0.5))
    code, err = run_here(photo_folder, layer.root, capsys, "--scheduler", "sync", "--until", "collect")
    bundle = layer.root / NAME
    check_failed(code, err, "collect", bundle)
    check_nothing_half_done(bundle, clean, "collect")
    shards = len(list((clean / "activations" / "done").glob("*.json")))
    assert len(list((bundle / "activations" / "done").glob("*.json"))) < shards
    layer.free()
    assert run_here(photo_folder, layer.root, capsys, "--scheduler", "sync", "--until", "collect")[0] == 0
    a, b = (zarr.open_group(root / "activations" / "rows.zarr", mode="r") for root in (bundle, clean))
    for name in ("activation", "attribution", "image_id", "y", "x", "label", "valid"):
        np.testing.assert_array_equal(a[name][:], b[name][:])


# --- slow: whole runs (pytest -m faults) -----------------------------------------------------------------------------


def chain(disk: Disk, clean: Path, cases: list[tuple[str, int]], run: Callable[[], tuple[int, str]]) -> list[dict[str, Any]]:
    """Fill the disk in the middle of each case's stage in turn, freeing a little more space each time; then free it
    all. Returns what happened in each run, for the README's table."""
    bundle = disk.root / NAME
    outcomes: list[dict[str, Any]] = []
    kept_icons: dict[str, int] = {}
    for stage, budget in cases:
        disk.limit(budget)
        started = time.perf_counter()
        code, err = run()
        line = check_failed(code, err, stage, bundle)
        check_nothing_half_done(bundle, clean, stage)
        for icon in kept_icons:  # icons of batches marked done are never rendered again
            assert (bundle / icon).stat().st_mtime_ns == kept_icons[icon], f"{icon} was rendered again"
        kept_icons = {p.relative_to(bundle).as_posix(): p.stat().st_mtime_ns for p in bundle.glob("levels/*/icons/*.png")}
        # A batch cut short may have written some icons before its marker: resuming renders that batch again.
        kept_icons = {icon: mtime for icon, mtime in kept_icons.items() if _in_done_batch(bundle, icon)}
        outcomes.append({"stage": stage, "budget": budget, "seconds": round(time.perf_counter() - started, 1), "line": line})
    disk.free()
    started = time.perf_counter()
    code, err = run()
    assert code == 0, err[-3000:]
    for icon, mtime in kept_icons.items():
        assert (bundle / icon).stat().st_mtime_ns == mtime, f"{icon} was rendered again"
    check_identical(bundle, clean)
    assert not [r for r in files(bundle) if TEMPORARY.search(Path(r).name)]
    outcomes.append({"stage": "freed", "seconds": round(time.perf_counter() - started, 1)})
    print(f"\n[{disk.kind}] " + json.dumps(outcomes, indent=1))
    return outcomes


def _in_done_batch(bundle: Path, icon: str) -> bool:
    folder = (bundle / icon).parent
    cells = json.loads((folder.parent / "grid.json").read_text())
    position = next(n for n, cell in enumerate(cells) if cell["icon"] == icon)
    return (folder / f".batch-{position // RENDER_BATCH:05d}.json").exists()


def cases_for(disk: Disk, clean: Path, libvips: bool = True) -> list[tuple[str, int]]:
    """Collect, render and tiles cut in half (tiles: in the canvas); on a real tmpfs also tiles with room for the
    canvases, so that libvips' pyramid or poster meets the full disk."""
    before_tiles = budget_in(clean, "tiles", 0.0)
    half_tiles = budget_in(clean, "tiles") - before_tiles
    cases = [("collect", budget_in(clean, "collect")), ("render", budget_in(clean, "render")), ("tiles", before_tiles + half_tiles)]
    if libvips and disk.kind == "tmpfs":
        cases.append(("tiles", before_tiles + canvas_bytes(clean) + half_tiles))
    return cases


@pytest.mark.faults
def test_full_disk_in_collect_render_and_tiles_then_freed_gives_a_clean_bundle(
    photo_folder: Path, clean_run: Path, disk: Disk, capsys: pytest.CaptureFixture[str]
) -> None:
    """In-process scheduler (``--scheduler sync``), on each disk: collect, render, tiles (canvas), and on tmpfs
    tiles again (libvips' pyramid or poster); then the same command after space is freed."""
    chain(disk, clean_run, cases_for(disk, clean_run), lambda: run_here(photo_folder, disk.root, capsys, "--scheduler", "sync"))


@pytest.mark.faults
def test_full_disk_on_dask_workers_then_freed_gives_a_clean_bundle(photo_folder: Path, clean_run: Path, best_disk: Disk) -> None:
    """The local Dask cluster, on the tmpfs where it can be mounted (else the layer): collect, render and tiles
    (canvas). The errors are raised inside tasks on a worker process and must surface as the same one line. The
    run is its own process, so its stderr is all a user sees, the workers' logs included. One worker with as many
    threads as the in-process run, so the arithmetic, hence every byte, matches the clean run's.

    The tiles case runs on a worker that rendered first (render resumes in the same run), where
    atlas_pipelines.engine.worker_state has already quietened Dask's own log of a user error; a worker that runs nothing but
    tiles tasks is quiet only once the local cluster's preload installs that too (hence no libvips case here).
    """
    from atlas_pipelines.engine.executor import cores

    extra = ("--set", "scheduler.workers=1", "--set", f"scheduler.threads_per_worker={cores()}")
    chain(
        best_disk, clean_run, cases_for(best_disk, clean_run, libvips=False), lambda: run_subprocess(photo_folder, best_disk.root, *extra)
    )


def test_a_full_disk_before_any_stage_is_one_line_too(photo_folder: Path, layer: Layer, capsys: pytest.CaptureFixture[str]) -> None:
    """The lock's record is the first thing a run writes: full there, the run says so in the same one line."""
    layer.capacity_file.write_text("0")
    args = ["run", "--images", str(photo_folder), "--out", str(layer.root), "--name", NAME, *SMALL, "--scheduler", "sync"]
    assert main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in lines[0]
    match = LINE.fullmatch(lines[0])
    assert match and match.group(1) == "run", lines[0]
    assert not (layer.root / NAME / ".stages").exists()
