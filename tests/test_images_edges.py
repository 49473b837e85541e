"""Image sources at the edges (issue 13, item 7): real photos under hostile names, files that change under the run,
folders with nothing to read, and a folder of 100,000 files.

Runs use a tiny convolutional net of the user's own (``package.module:factory`` plus ``model.weights``) so that
each end-to-end run costs seconds; what is tested is the image source, the listing and the manifest.
"""

from __future__ import annotations

import importlib
import json
import os
import pickle
import shutil
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from atlas.images import FolderSource
from atlas.images.folder import INDEX_NAME, listing_line, read_listing_line
from atlas_pipelines.commands.cli import main

MAX_PIXELS = 10**8
POSITIONS = 2
RUN = [
    "--scheduler", "sync",
    "--layer", "3",
    "--set", "model.input_size=64",
    "--set", f"collect.positions_per_image={POSITIONS}",
    "--set", "collect.shard_size=4",
    "--set", "layout.fit_sample=40",
    "--set", "layout.n_neighbors=5",
    "--set", "grid.sizes=[1,2]",
    "--set", "grid.min_count=1",
    "--set", "grid.examples=60",
    "--set", "tiles.examples_per_cell=60",
    "--set", "render.steps=4",
    "--set", "render.icon_size=32",
]  # fmt: skip

TINY_NET = """
import torch
from torch import nn


def make():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3),
    ).eval()
"""


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    folder = tmp_path_factory.mktemp("edge_model")
    (folder / "edge_tiny_net.py").write_text(TINY_NET)
    sys.path.insert(0, str(folder))
    torch.manual_seed(0)
    weights = folder / "tiny.pt"
    torch.save(importlib.import_module("edge_tiny_net").make().state_dict(), weights)
    yield ["--model", "edge_tiny_net:make", "--set", f"model.weights={weights}"]
    sys.path.remove(str(folder))


@pytest.fixture(scope="module")
def photos(photo_folder: Path) -> list[Path]:
    """The photo folder's real, readable JPEGs."""
    return sorted(p for p in photo_folder.rglob("*.jpg") if "broken" not in p.name and "cmyk" not in p.name)


def _error_lines(err: str) -> list[str]:
    """What the command printed besides progress bars: exactly one ``atlas: error:`` line, and it is the last."""
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip() and not line.startswith("collect:")]
    assert len(lines) == 1 and lines[0].startswith("atlas: error: ") and err.rstrip().endswith(lines[0]), lines
    return lines


def _name(raw: bytes) -> str:
    return os.fsdecode(raw)


# Real photos under names that break line-based, shell-like or UTF-8-only handling: the listing must keep each.
ODD = [
    b"new\nline.jpg",
    b"caf\xe9.jpg",  # Latin-1, not UTF-8
    b"-rf.jpg",
    b"--help.png",
    b"back\\slash.jpg",
    b"lit\\n.jpg",  # a backslash and an n: must not turn into a newline
    b"tab\tname.jpg",
    b"carriage\rreturn.jpg",
    b"\xc3\xa9t\xc3\xa9 \xe2\x98\x80.jpg",  # valid UTF-8
    b"dir\nwith newline/inner.jpg",
    b"-/-.jpg",
]
ODD_BROKEN = {b"bad\nbroken.jpg": b"not a JPEG", b"\xff\xfe.png": b"", b"-x.jpg": b"text"}


@pytest.fixture(scope="module")
def odd_folder(photos: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("odd")
    for raw, photo in zip(ODD, photos, strict=False):
        path = Path(os.fsdecode(bytes(root) + b"/" + raw))
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.open(photo).save(path)
    for raw, data in ODD_BROKEN.items():
        Path(os.fsdecode(bytes(root) + b"/" + raw)).write_bytes(data)
    return root


def test_listing_lines_round_trip_and_plain_names_are_written_as_before() -> None:
    breaks = ["\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]  # str.splitlines breaks at these too
    odd_breaks = [f"x{char}y.jpg".encode() for char in breaks]
    for raw in [*ODD, *ODD_BROKEN, *odd_breaks, b"/starts/with/slash.jpg", b"a\\\nb.jpg", b"\\n\\\\n\n\n.jpg", b"\\x0a", b"x"]:
        name = _name(raw)
        line = listing_line(name)
        assert line.endswith(b"\n") and len(line.splitlines()) == 1 and len(line.decode("utf-8", "replace").splitlines()) == 1
        assert read_listing_line(line) == name and os.fsencode(read_listing_line(line)) == raw
    for raw in [b"plain.jpg", b"caf\xe9.jpg", b"back\\slash.jpg", b"lit\\n.jpg", b"tab\tname.jpg", b"-rf.jpg", b"a/b/c.png"]:
        assert listing_line(_name(raw)) == raw + b"\n"  # what every earlier listing wrote: cache keys unchanged


def test_odd_names_are_listed_read_and_read_back(odd_folder: Path, tmp_path: Path) -> None:
    source = FolderSource(odd_folder, MAX_PIXELS)
    shards = source.plan(tmp_path, None, 3)
    records = [record for shard in pickle.loads(pickle.dumps(shards)) for record in pickle.loads(pickle.dumps(source)).read(shard)]
    by_name = {os.fsencode(r.name): r for r in records}
    assert set(by_name) == set(ODD) | set(ODD_BROKEN)
    assert all(by_name[raw].image is not None for raw in ODD), {raw: by_name[raw].error for raw in ODD}
    assert all(by_name[raw].image is None for raw in ODD_BROKEN)
    assert source.n_images == len(records) == len((tmp_path / INDEX_NAME).read_bytes().splitlines()) and source.n_skipped == 0
    back = list(source.read_ids(r.image_id for r in records if os.fsencode(r.name) in ODD))
    assert [r.name for r in back] == [r.name for r in records if os.fsencode(r.name) in ODD]
    assert all(r.image is not None for r in back)


@pytest.fixture(scope="module")
def odd_run(odd_folder: Path, tiny_model: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("odd_runs")
    assert main(["run", "--images", str(odd_folder), *tiny_model, *RUN, "--out", str(out), "--name", "odd"]) == 0
    return out / "odd"


def test_odd_names_run_end_to_end_into_the_manifest_and_the_examples(odd_run: Path) -> None:
    text = (odd_run / "manifest.json").read_bytes().decode("utf-8")  # valid UTF-8 ...
    assert "\\ud" not in text.lower()  # ... with no lone surrogate for a strict JSON reader to refuse
    manifest = json.loads(text)
    assert manifest["n_images"] == len(ODD) and manifest["n_activations"] == len(ODD) * POSITIONS
    skipped = {entry["name"]: entry["error"] for entry in manifest["skipped"]["files"]}
    assert manifest["skipped"]["count"] == 3
    assert skipped == {
        "bad\nbroken.jpg": "not an image Pillow can read",
        "\\xff\\xfe.png": "empty file",
        "-x.jpg": "not an image Pillow can read",
    }

    index = (odd_run / "images" / "images.txt").read_bytes()
    names = [read_listing_line(line) for line in index.splitlines(keepends=True)]
    assert sorted(os.fsencode(n) for n in names) == sorted([*ODD, *ODD_BROKEN])
    # Every readable image is an example of the one-cell grid, and its patch was cut from the real file.
    (level,) = [level for level in manifest["levels"] if level["grid"] == 1]
    (cell,) = json.loads((odd_run / level["cells"]).read_text())
    shown = {example["image_id"] for example in cell["examples"] if "patch" in example}
    assert {os.fsencode(names[i]) for i in shown} == set(ODD)
    for example in cell["examples"]:
        patch = Image.open(odd_run / example["patch"])
        assert patch.size[0] > 8 and np.asarray(patch).std() > 1  # a piece of a photo, not a blank
    assert (odd_run / "index.html").is_file()


# --- files that change between listing and reading ---------------------------------------------------------------------

CHANGES: dict[str, tuple[Callable[[Path, Path], None], str | None]] = {
    "gone.jpg": (lambda path, other: path.unlink(), "cannot read: No such file or directory"),
    "garbage.jpg": (lambda path, other: path.write_text("overwritten"), "not an image Pillow can read"),
    "zeroed.jpg": (lambda path, other: path.write_bytes(b""), "empty file"),
    "halved.jpg": (lambda path, other: path.write_bytes(path.read_bytes()[: path.stat().st_size // 3]), "truncated or corrupt"),
    "now_a_dir.jpg": (lambda path, other: (path.unlink(), path.mkdir()), "cannot read: Is a directory"),
    "now_a_fifo.jpg": (lambda path, other: (path.unlink(), os.mkfifo(path)), "empty file"),  # never opened: no hang
    "dangling.jpg": (lambda path, other: (path.unlink(), path.symlink_to(path.parent / "nowhere.jpg")), "cannot read: No such"),
    "looped.jpg": (lambda path, other: (path.unlink(), path.symlink_to(path)), "cannot read: Too many levels of symbolic links"),
    "swapped.jpg": (lambda path, other: shutil.copyfile(other, path), None),  # another real photo: read as it is now
}


def _changing_folder(photos: list[Path], root: Path) -> Path:
    root.mkdir()
    for n, name in enumerate(["kept_a.jpg", *CHANGES, "kept_b.jpg"]):
        Image.open(photos[n % len(photos)]).save(root / name)
    return root


def _change(root: Path, photos: list[Path]) -> None:
    for name, (change, _) in CHANGES.items():
        change(root / name, photos[-1])


def test_files_that_change_after_listing_are_skipped_with_a_reason(photos: list[Path], tmp_path: Path) -> None:
    root = _changing_folder(photos, tmp_path / "changing")
    source = FolderSource(root, MAX_PIXELS)
    shards = source.plan(tmp_path / "work", None, 4)
    _change(root, photos)
    records = {r.name: r for shard in shards for r in source.read(shard)}
    assert len(records) == len(CHANGES) + 2
    for name, (_, reason) in CHANGES.items():
        if reason is None:
            assert records[name].image is not None and records[name].image.size == Image.open(photos[-1]).size
        else:
            assert records[name].image is None and records[name].error.startswith(reason), (name, records[name].error)
    assert records["kept_a.jpg"].image is not None and records["kept_b.jpg"].image is not None
    back = {r.name: r for r in source.read_ids(range(len(records)))}  # the examples stage's read: the same outcome
    assert {n: r.error for n, r in back.items()} == {n: r.error for n, r in records.items()}


def test_a_run_whose_files_change_after_listing_skips_and_counts_them(
    photos: list[Path], tiny_model: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _changing_folder(photos, tmp_path / "changing")
    plan = FolderSource.plan

    def plan_then_change(self: FolderSource, *args: object, **kwargs: object) -> object:
        shards = plan(self, *args, **kwargs)  # type: ignore[arg-type]
        _change(root, photos)  # between the listing (driver) and the reads (workers)
        return shards

    monkeypatch.setattr(FolderSource, "plan", plan_then_change)
    assert main(["run", "--images", str(root), *tiny_model, *RUN, "--out", str(tmp_path), "--name", "changed"]) == 0
    manifest = json.loads((tmp_path / "changed" / "manifest.json").read_text())
    failing = {name: reason for name, (_, reason) in CHANGES.items() if reason is not None}
    assert manifest["skipped"]["count"] == len(failing)
    assert {entry["name"] for entry in manifest["skipped"]["files"]} == set(failing)
    assert manifest["n_images"] == len(CHANGES) + 2 - len(failing)
    assert manifest["n_activations"] == manifest["n_images"] * POSITIONS


# --- nothing to read -------------------------------------------------------------------------------------------------


def test_every_file_unreadable_is_one_line_and_exit_2(
    photos: list[Path], tiny_model: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "unreadable"
    root.mkdir()
    (root / "a_text.jpg").write_text("not a JPEG")
    (root / "b_empty.png").write_bytes(b"")
    (root / "c_truncated.jpg").write_bytes(photos[0].read_bytes()[:500])
    (root / "d_garbage.gif").write_bytes(os.urandom(300))
    (root / "notes.txt").write_text("listed as not an image")
    code = main(["run", "--images", str(root), *tiny_model, *RUN, "--out", str(tmp_path), "--name", "none"])
    assert code == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert line == (
        f"atlas: error: images.source '{root}': none of the 4 image files could be read (for example 'a_text.jpg': "
        "not an image Pillow can read); point images.source at readable images"
    )
    assert not (tmp_path / "none" / ".stages" / "collect.json").exists() and not (tmp_path / "none" / "layout").exists()


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda root: None, "the folder holds no files; point it at a folder of images"),
        (lambda root: (root / "a" / "b").mkdir(parents=True), "the folder holds no files; point it at a folder of images"),
        (
            lambda root: [(root / name).write_text("x") for name in ("data.csv", "notes.txt", "readme.md")],
            "no images found; 3 entries skipped (for example 'data.csv': not an image; all of them in {work}); images are files "
            "with an extension Pillow reads (.jpg, .png, .webp, .tif, ...)",
        ),
    ],
    ids=["empty", "only-folders", "only-non-images"],
)
def test_a_folder_with_no_images_is_one_line_and_exit_2(
    make: Callable[[Path], object], expected: str, tiny_model: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "photos"
    root.mkdir()
    make(root)
    assert main(["run", "--images", str(root), *tiny_model, *RUN, "--out", str(tmp_path), "--name", "zero"]) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    work = tmp_path / "zero" / "images" / "skipped_listing.txt"
    assert line == f"atlas: error: images.source '{root}': " + expected.format(work=work)
    assert not (tmp_path / "zero" / "activations").exists()


# --- many files ----------------------------------------------------------------------------------------------------------


def test_a_folder_of_100000_files_lists_in_bounded_memory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Zero-byte files with an image extension: listing never opens a file, so this measures the listing alone."""
    root = tmp_path / "many"
    root.mkdir()
    n = 100_000
    for i in range(n):
        (root / f"{i:06d}.jpg").touch()
    source = FolderSource(root, MAX_PIXELS)
    started = time.perf_counter()
    shards = source.plan(tmp_path / "work", None, 128)
    seconds = time.perf_counter() - started
    tracemalloc.start()
    source.plan(tmp_path / "again", None, 128)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    with capsys.disabled():
        print(f"\n[100k files] listed {n} files into {len(shards)} shards in {seconds:.2f} s; peak traced memory {peak / 2**20:.1f} MiB")
    assert source.n_images == n and sum(s.count for s in shards) == n and len(shards) == -(-n // 128)
    assert peak < 400 * n  # bytes per file while one folder's entries are held (about 250 measured)
    last = shards[-1]
    assert [r.name for r in source.read(last)][-1] == f"{n - 1:06d}.jpg"
    assert {r.error for r in source.read(last)} == {"empty file"}
    shutil.rmtree(root)
