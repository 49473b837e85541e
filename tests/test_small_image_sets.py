"""A dozen photos make an atlas: positions per image and grid sizes chosen from the data, and the rules' arithmetic."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from PIL import Image

from atlas.collect import sample_positions
from atlas.collect.sampling import interior_count, positions_to_reach
from atlas.config import AtlasConfig, load_config, packaged_default_config
from atlas.grid.sizes import fitted_sizes, largest_filled_side, sizes_for_rows
from atlas_pipelines.commands.cli import main
from atlas_pipelines.engine.data_choices import choose_from_data
from atlas_pipelines.stages import collect, grid

DOZEN = (
    "astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina", "camera", "brick",
    "grass", "coins", "moon",
)  # fmt: skip
# Quick, and beside the rules: no attribution (a forward-mode pass per row), a short render without a probe.
QUICK = ["--set", "collect.attribution=false", "--set", "render.steps=8", "--set", "render.icon_size=32", "--set", "render.probe_cells=0"]


@pytest.fixture(scope="module")
def dozen_photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Twelve of scikit-image's photos as JPEG files in one folder: what a new user tries first."""
    from skimage import data

    folder = tmp_path_factory.mktemp("dozen")
    for name in DOZEN:
        Image.fromarray(getattr(data, name)()).convert("RGB").save(folder / f"{name}.jpg", quality=90)
    return folder


def _run(folder: Path, out: Path, name: str, *settings: str) -> dict:
    assert main(["run", "--images", str(folder), "--out", str(out), "--name", name, "--scheduler", "sync", *settings]) == 0
    manifest: dict = json.loads((out / name / "manifest.json").read_text())
    return manifest


@pytest.fixture(scope="module")
def dozen_atlas(dozen_photos: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """The default config on the dozen photos, kept short."""
    out = tmp_path_factory.mktemp("dozen-atlas")
    return _run(dozen_photos, out, "dozen", *QUICK), out / "dozen"


def test_a_dozen_photos_fill_every_grid_with_the_default_config(dozen_atlas: tuple[dict, Path]) -> None:
    manifest, run_dir = dozen_atlas
    assert manifest["n_images"] == 12 and manifest["n_activations"] == 12 * 144  # every interior position of 14 x 14
    positions, sizes = manifest["choices"]["collect.positions_per_image"], manifest["choices"]["grid.sizes"]
    assert positions["value"] == 144 and positions["images"] == 12 and positions["rule"].startswith("auto: ")
    assert sizes["value"] == [5, 10, 20] and sizes["rows"] == 1728 and sizes["rule"].startswith("auto: ")
    assert [level["grid"] for level in manifest["levels"]] == [5, 10, 20]
    for level in manifest["levels"]:
        assert level["n_cells"] > 0 and "note" not in level, level
        assert (run_dir / "tiles" / f"{level['grid']}.dzi").exists()
        cells = json.loads((run_dir / level["cells"]).read_text())
        assert sum(cell["count"] for cell in cells) > 0.5 * 1728, "the kept cells hold most rows"
    # The manifest's config is the one given; what the data decided is under choices.
    assert manifest["config"]["collect"]["positions_per_image"] == 4 and manifest["config"]["grid"]["sizes"] == [10, 20, 40]
    rows = json.loads((run_dir / ".stages" / "collect.json").read_text())
    assert rows["report"]["n_activations"] == 1728


def test_a_rerun_makes_the_same_choices_and_reuses_every_stage(dozen_photos: Path, dozen_atlas: tuple[dict, Path]) -> None:
    manifest, run_dir = dozen_atlas
    again = _run(dozen_photos, run_dir.parent, "dozen", *QUICK)
    assert again["choices"] == manifest["choices"]
    assert all(stage["cached"] for stage in again["stages"].values()), again["stages"]


def test_explicit_positions_and_sizes_win(dozen_photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = [
        "--until",
        "grid",
        "--set",
        "collect.attribution=false",
        "--set",
        "collect.positions_per_image=4",
        "--set",
        "grid.sizes=[10]",
    ]
    manifest = _run(dozen_photos, tmp_path, "explicit", *settings)
    assert manifest["n_activations"] == 48
    assert manifest["choices"]["collect.positions_per_image"] == {
        "value": 4, "rule": "config (collect.target_rows is off)", "images": 12, "interior": 144, "target_rows": None,
    }  # fmt: skip
    assert manifest["choices"]["grid.sizes"]["value"] == [10] and manifest["choices"]["grid.sizes"]["rule"].startswith("config")
    (level,) = manifest["levels"]
    assert level["n_cells"] == 0, "48 rows over 100 cells: none holds 3"
    printed = capsys.readouterr().out
    assert "[choices] collect.positions_per_image = 4: config" in printed
    # Never a silently empty atlas: one line naming the grid and the keys to change.
    (line,) = [line for line in printed.splitlines() if line.startswith("atlas: grid 10:")]
    assert "grid.min_count = 3" in line and "grid.sizes" in line and "collect.positions_per_image" in line


def test_the_default_image_set_keeps_the_default_rows_and_grids() -> None:
    """986 images of builtin:photos x 4 positions = 3,944 rows: over collect.target_rows, and grid 40 filled."""
    config = load_config(packaged_default_config())
    chosen, choices = choose_from_data(config, 986, (14, 14))
    assert chosen.collect.positions_per_image == 4 and chosen.grid.sizes == (10, 20, 40)
    assert choices["collect.positions_per_image"]["rule"].startswith("config: ") and choices["grid.sizes"]["rule"].startswith("config: ")
    assert chosen.collect == config.collect and chosen.grid == config.grid
    # And the stage keys of a config without the rules: cached default bundles stay cached.
    without = config.model_copy(
        update={
            "collect": config.collect.model_copy(update={"target_rows": None}),
            "grid": config.grid.model_copy(update={"fit_to_rows": False}),
        }
    )
    for stage in (collect.STAGE, grid.STAGE):
        assert stage.settings(_inputs(chosen)) == stage.settings(_inputs(without)), stage.name


def _inputs(config: AtlasConfig) -> Any:
    """What the collect and grid stages' settings read of a run, for a config."""
    return SimpleNamespace(
        config=config, labels=None, device=torch.device("cpu"), source=SimpleNamespace(identity=lambda: "images"),
        bundle=SimpleNamespace(path=lambda name: Path("/nonexistent") / name), same_rows=None,
    )  # fmt: skip


def test_a_value_set_on_top_of_the_file_turns_its_rule_off() -> None:
    default = load_config(packaged_default_config())
    assert default.collect.target_rows == 3200 and default.grid.fit_to_rows
    explicit = load_config(packaged_default_config(), ["collect.positions_per_image=4", "grid.sizes=[10]"])
    assert explicit.collect.target_rows is None and not explicit.grid.fit_to_rows
    both = load_config(packaged_default_config(), ["collect.positions_per_image=2", "collect.target_rows=100", "grid.sizes=[8]"])
    assert both.collect.target_rows == 100 and not both.grid.fit_to_rows
    assert load_config(None, values=[("collect.positions_per_image", 2)]).collect.target_rows is None


@pytest.mark.parametrize(
    ("target", "images", "configured", "interior", "most", "expected"),
    [
        (3200, 986, 4, 144, 16384, 4),  # 3,944 rows already
        (3200, 100, 4, 144, 16384, 32),  # ceil(3200 / 100)
        (3200, 12, 4, 144, 16384, 144),  # 267 wanted, every interior position
        (3200, 12, 4, 144, 100, 100),  # what one collect task may hold
        (3200, 12, 8, 4, 16384, 8),  # never fewer than configured
        (3200, 3, 4, 4, 16384, 4),  # a 4 x 4 map's interior is 2 x 2
    ],
)
def test_positions_reach_the_target_rows(target: int, images: int, configured: int, interior: int, most: int, expected: int) -> None:
    value, rule = positions_to_reach(target, images, configured, interior, most)
    assert value == expected
    assert rule.startswith("config: " if images * configured >= target else "auto: ")


def test_every_interior_position_once() -> None:
    assert interior_count(14, 14) == 144 and interior_count(2, 2) == 4 and interior_count(1, 7) == 5
    positions = sample_positions(3, 14, 14, 144, seed=0)
    assert len({(int(y), int(x)) for y, x in positions}) == 144
    assert positions.min() == 1 and positions.max() == 12


@pytest.mark.parametrize(
    ("rows", "min_count", "side"),
    [(3944, 3, 40), (3199, 3, 20), (3200, 3, 40), (1728, 3, 20), (12800, 3, 80), (48, 3, 4), (4, 3, 1), (48, 1, 8)],
)
def test_largest_filled_side(rows: int, min_count: int, side: int) -> None:
    """Two thirds of min_count rows per cell on average: 10 x 2^k from 10 up, any side below."""
    assert largest_filled_side(rows, min_count) == side


def test_sizes_halve_from_the_finest_filled() -> None:
    assert sizes_for_rows(1728, 3, 3) == (5, 10, 20)
    assert sizes_for_rows(48, 3, 3) == (2, 4)
    assert sizes_for_rows(4, 3, 3) == (1,)
    assert fitted_sizes((10, 20, 40), 3944, 3)[0] == (10, 20, 40)
    assert fitted_sizes((10, 20, 40), 1728, 3)[0] == (5, 10, 20)
    assert fitted_sizes((20, 40, 80, 160), 1728, 3)[0] == (2, 5, 10, 20)
