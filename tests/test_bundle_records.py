"""The bundle's typed records and its read-only reader, on a small bundle written by hand in the old layout."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import atlas
from atlas.bundle import FORMAT, Bundle, BundleWriter, Cell, Manifest, Score, reader
from atlas.io import read_json

CELLS: list[dict[str, Any]] = [
    {
        "i": 0,
        "j": 1,
        "count": 4,
        "top_classes": [{"index": 3, "label": "dog", "score": 0.5}],
        "icon": "levels/2/icons/0_1.png",
        "examples": [{"row": 7, "image_id": 2, "y": 1, "x": 0, "patch": "examples/2_1_0.jpg"}, {"row": 9, "image_id": 3, "y": 0, "x": 2}],
        "fidelity": {"cosine": 0.91, "rank": 0},
        "view": "levels/2/views/0_1.png",
        "path_check": None,
        "added_by_a_later_version": {"kept": True},
    },
    {
        "i": 1,
        "j": 0,
        "count": 3,
        "top_classes": [],
        "icon": "levels/2/icons/1_0.png",
        "examples": [],
    },
]
MANIFEST: dict[str, Any] = {
    "format": FORMAT,
    "name": "old",
    "model": "efficientnet-lite0",
    "layer": "blocks.4",
    "channels": 3,
    "layer_shape": [3, 4, 4],
    "input_size": 32,
    "input_channels": 3,
    "n_images": 2,
    "n_activations": 7,
    "labels": ["a", "b", "c", "dog"],
    "levels": [{"grid": 2, "cells": "levels/2/cells.json", "directions": "levels/2/directions.npy", "n_cells": 2}],
    "render": {"steps": 8},
    "config": {"grid": {"sizes": [2]}},
    "subset": {"kind": "class"},
}


@pytest.fixture
def old_bundle(tmp_path: Path) -> Path:
    """A bundle as written before grid.json, fidelity.json and patches.json: the manifest, cells.json and directions only."""
    root = tmp_path / "old"
    (root / "levels" / "2").mkdir(parents=True)
    (root / "manifest.json").write_text(json.dumps(MANIFEST))
    (root / "levels" / "2" / "cells.json").write_text(json.dumps(CELLS))
    np.save(root / "levels" / "2" / "directions.npy", np.eye(2, 3, dtype=np.float32))
    return root


def test_each_record_s_json_round_trip_equals_the_file(old_bundle: Path) -> None:
    assert [Cell.from_json(cell).to_json() for cell in read_json(old_bundle / "levels" / "2" / "cells.json")] == CELLS
    assert Manifest.from_json(read_json(old_bundle / "manifest.json")).to_json() == MANIFEST
    assert [Score.maybe_from_json(s) for s in (None, {"cosine": 0.5, "rank": 2})] == [None, Score(0.5, 2)]
    cell = Cell.from_json(CELLS[0])
    assert cell.path_checked and cell.path_check is None and cell.examples[1].patch is None
    assert "path_check" not in Cell.from_json(CELLS[1]).to_json(), "a cell the path stage never saw says nothing about it"


def test_an_old_style_bundle_reads_through_the_typed_records(old_bundle: Path) -> None:
    bundle = atlas.open_bundle(old_bundle)
    assert bundle.grids == [2]
    level = bundle.level(2)
    assert [cell.to_json() for cell in level.cells] == CELLS
    assert level.cells[0].top_classes[0].label == "dog" and level.cells[0].fidelity == Score(0.91, 0)
    assert bundle.manifest.n_activations == bundle.manifest["n_activations"] == 7
    assert bundle.manifest.layer_shape == (3, 4, 4) and bundle.manifest["subset"] == {"kind": "class"}
    assert [e.row for e in bundle.examples(level.cells[0])] == [7, 9]
    assert level.icons == [None, None]


def test_cells_read_before_the_first_manifest_is_written(old_bundle: Path) -> None:
    """A first run cut short before assemble has grid.json or cells.json but no manifest: cells still read, as before."""
    (old_bundle / "manifest.json").unlink()
    assert [cell.to_json() for cell in Bundle(old_bundle).cells(2)] == CELLS


def test_copy_for_viewing_takes_an_opened_bundle_as_before(old_bundle: Path, tmp_path: Path) -> None:
    """atlas.bundle.copy_for_viewing took a Bundle before it took a location: both still reach its check."""
    for given in (Bundle(old_bundle), Bundle(old_bundle).root):
        with pytest.raises(TypeError, match="a local bundle is served where it is"):
            atlas.bundle.copy_for_viewing(given, tmp_path / "copy")


def test_the_reader_has_no_write_methods_and_the_writer_all_of_them() -> None:
    assert not [name for name in dir(Bundle) if name.startswith("write")]
    assert not issubclass(Bundle, BundleWriter) and issubclass(BundleWriter, Bundle)
    assert {"write_manifest", "write_grid_cells", "write_cells", "write_icon", "write_parent_rows"} <= set(dir(BundleWriter))


def test_the_reader_reads_the_manifest_once(old_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[str] = []

    def counting(path: Any) -> Any:
        reads.append(Path(str(path)).name)
        return read_json(path)

    monkeypatch.setattr(reader, "read_json", counting)
    bundle = atlas.open_bundle(old_bundle)
    for _ in range(3):
        level = bundle.level(bundle.grids[-1])
        bundle.examples(level.cells[0])
    assert reads.count("manifest.json") == 1 and reads.count("cells.json") == 3


def test_the_writer_sees_the_manifest_it_wrote(old_bundle: Path) -> None:
    writer = BundleWriter(old_bundle)
    assert writer.manifest.n_images == 2
    writer.write_manifest(Manifest.from_json({**MANIFEST, "n_images": 5}))
    assert writer.manifest.n_images == 5 and read_json(old_bundle / "manifest.json")["n_images"] == 5


def test_importing_the_bundle_loads_no_configuration_or_model_code() -> None:
    code = "import atlas.bundle, sys; print(sorted(m for m in ('pydantic', 'yaml', 'torch', 'atlas.config') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"


def test_the_store_and_the_image_listing_use_the_bundle_s_names() -> None:
    from atlas.bundle import ACTIVATIONS, IMAGE_INDEX, IMAGES, LISTING_SKIPS, ROWS
    from atlas.collect.store import ActivationStore
    from atlas.images.folder import INDEX_NAME, SKIPPED_NAME

    assert f"{ACTIVATIONS}/{ActivationStore.ROWS}" == ROWS
    assert (f"{IMAGES}/{INDEX_NAME}", f"{IMAGES}/{SKIPPED_NAME}") == (IMAGE_INDEX, LISTING_SKIPS)
