"""Numerical faults (issue 13, item 2): a model whose layer gives NaN, infinity or zeros for some real photos.

The test model is a user's own ``package.module:factory`` with a state dict (``model.spec`` plus ``model.weights``),
written into a temporary folder. What it does depends on each image's mean input value ("brightness"): NaN at the
layer above one value, an infinite output (so a non-finite attribution, the activation being finite) in a band, and
a layer that is zero in every channel below another. Which photo falls where is measured here, through the same
decoding and preprocessing the run uses, so nothing below hard-codes a photo's brightness.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import math
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
import zarr

from atlas.bundle import fidelity_file
from atlas.collect import collect_records
from atlas.config import AtlasConfig, ModelConfig
from atlas.errors import AtlasError
from atlas.images import FolderSource, to_tensor
from atlas.models import load_model
from atlas.models.record import Preprocessing
from atlas.models.view import ModelView
from atlas_pipelines.commands.cli import main
from atlas_pipelines.stages.collect import collect_settings

TINY = [
    "--scheduler", "sync",
    "--set", "model.input_size=64",
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
POSITIONS = 3

MODEL = """
import math

import torch
from torch import nn

CHANNELS = {channels}
NAN_ABOVE = float("{nan_above}")  # brightness above this: NaN at the layer
INF_BAND = (float("{inf_low}"), float("{inf_high}"))  # brightness inside: infinite logits, so a non-finite attribution
ZERO_BELOW = float("{zero_below}")  # brightness below this: the layer is zero in every channel


class Fault(nn.Module):
    def forward(self, h, brightness):
        b = brightness.view(-1, 1, 1, 1)
        h = torch.where(b > NAN_ABOVE, torch.full_like(h, math.nan), h)
        return torch.where(b < ZERO_BELOW, torch.zeros_like(h), h)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(16, CHANNELS, 3, stride=2, padding=1), nn.Softplus()
        )
        self.fault = Fault()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(CHANNELS, 4)

    def forward(self, x):
        brightness = x.mean(dim=(1, 2, 3))
        logits = self.head(self.pool(self.fault(self.features(x), brightness)).flatten(1))
        low, high = INF_BAND
        blow_up = ((brightness > low) & (brightness < high)).view(-1, 1)
        return torch.where(blow_up, logits * 1e30 * 1e30, logits)  # float32 overflows


def make():
    return Net().eval()
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., list[str]]]:
    """``make(name, ...)`` writes module ``name`` and its weights; returns the ``--model``/``--set`` arguments."""
    folder = tmp_path_factory.mktemp("faulty_models")
    sys.path.insert(0, str(folder))

    def make(
        name: str,
        channels: int = 8,
        nan_above: float = math.inf,
        inf_band: tuple[float, float] = (0.0, 0.0),
        zero_below: float = -math.inf,
    ) -> list[str]:
        source = MODEL.format(channels=channels, nan_above=nan_above, inf_low=inf_band[0], inf_high=inf_band[1], zero_below=zero_below)
        (folder / f"{name}.py").write_text(source)
        module = importlib.import_module(name)
        torch.manual_seed(0)
        weights = folder / f"{name}.pt"
        torch.save(module.make().state_dict(), weights)
        return ["--model", f"{name}:make", "--layer", "fault", "--set", f"model.weights={weights}"]

    yield make
    sys.path.remove(str(folder))


@pytest.fixture(scope="module")
def brightness(photo_folder: Path, models: Callable[..., list[str]]) -> dict[str, float]:
    """Each readable photo's mean model input, as the run preprocesses it."""
    models("plain")
    prep = load_model(ModelConfig(spec="plain:make", input_size=64)).preprocessing
    source = FolderSource(photo_folder, 10**8)
    out = {}
    for shard in source.plan(photo_folder.parent / "brightness_listing", None, 100):
        for record in source.read(shard):
            if record.image is not None:
                out[record.name] = float(to_tensor(record.image, prep).mean())
    return out


def _bands(brightness: dict[str, float]) -> dict[str, Any]:
    """Thresholds that put the brightest photos on NaN, a middle band on infinity, the darkest on zero."""
    values = sorted(brightness.values())
    nan_above = (values[-4] + values[-5]) / 2  # the 4 brightest
    inf_band = ((values[-8] + values[-7]) / 2, (values[-6] + values[-5]) / 2)  # the next 2
    zero_below = (values[3] + values[4]) / 2  # the 4 darkest
    return {"nan_above": nan_above, "inf_band": inf_band, "zero_below": zero_below}


def _strict_json(path: Path) -> Any:
    def refuse(constant: str) -> None:
        raise AssertionError(f"{path} holds {constant}")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.fixture(scope="module")
def faulty_run(
    photo_folder: Path, brightness: dict[str, float], models: Callable[..., list[str]], tmp_path_factory: pytest.TempPathFactory
) -> SimpleNamespace:
    """``stop`` first (it ends at the first bad image), then the default ``drop`` into the same bundle."""
    bands = _bands(brightness)
    args = ["run", "--images", str(photo_folder), *models("faulty", **bands), *TINY]
    out = tmp_path_factory.mktemp("faulty_runs")
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        stop_code = main([*args, "--out", str(out), "--name", "faulty", "--set", "collect.nonfinite=stop"])
    stop_marker = (out / "faulty" / ".stages" / "collect.json").exists()
    assert main([*args, "--out", str(out), "--name", "faulty"]) == 0
    return SimpleNamespace(root=out / "faulty", bands=bands, stop_code=stop_code, stop_err=stderr.getvalue(), stop_marker=stop_marker)


def _error_lines(err: str) -> list[str]:
    """What the command printed besides its progress bars: one ``atlas: error:`` line, last."""
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip() and not line.startswith(("collect:", "layout:"))]
    assert len(lines) == 1 and lines[0].startswith("atlas: error: ") and err.rstrip().endswith(lines[0]), lines
    return lines


def _expected(brightness: dict[str, float], bands: dict[str, Any]) -> dict[str, list[str]]:
    low, high = bands["inf_band"]
    return {
        "nan": sorted(name for name, b in brightness.items() if b > bands["nan_above"]),
        "inf": sorted(name for name, b in brightness.items() if low < b < high),
        "zero": sorted(name for name, b in brightness.items() if b < bands["zero_below"]),
    }


def test_nonfinite_rows_are_dropped_counted_and_named(faulty_run: SimpleNamespace, brightness: dict[str, float]) -> None:
    expected = _expected(brightness, faulty_run.bands)
    assert [len(expected[k]) for k in ("nan", "inf", "zero")] == [4, 2, 4]
    manifest = json.loads((faulty_run.root / "manifest.json").read_text())
    nonfinite = manifest["nonfinite"]
    bad = expected["nan"] + expected["inf"]
    assert nonfinite["images"] == 6 and nonfinite["count"] == 6 * POSITIONS
    assert sorted(entry["name"] for entry in nonfinite["files"]) == sorted(bad)
    by_name = {entry["name"]: entry for entry in nonfinite["files"]}
    assert all(by_name[name]["error"] == "NaN in its activation" and by_name[name]["rows"] == POSITIONS for name in expected["nan"])
    assert all(by_name[name]["error"].endswith("in its attribution") for name in expected["inf"])
    readable = len(brightness)
    assert manifest["n_images"] == readable - 6 and manifest["n_activations"] == (readable - 6) * POSITIONS
    assert manifest["skipped"]["count"] == 4  # the photo folder's broken files, counted apart


def _finite_except(value: Any, skip: str) -> bool:
    """Every number in a parsed JSON value is finite, leaving out any key named ``skip``."""
    if isinstance(value, dict):
        return all(_finite_except(v, skip) for k, v in value.items() if k != skip)
    if isinstance(value, list):
        return all(_finite_except(v, skip) for v in value)
    return not isinstance(value, float) or math.isfinite(value)


def test_no_nonfinite_number_reaches_the_store_layout_grid_or_directions(faulty_run: SimpleNamespace, brightness: dict[str, float]) -> None:
    root = faulty_run.root
    expected = _expected(brightness, faulty_run.bands)
    group = zarr.open_group(root / "activations" / "rows.zarr", mode="r")
    valid = group["valid"][:]
    activation, attribution = group["activation"][:][valid], group["attribution"][:][valid].astype(np.float32)
    assert np.isfinite(activation).all() and np.isfinite(attribution).all()
    names = (root / "images" / "images.txt").read_text().splitlines()
    kept = {names[i] for i in group["image_id"][:][valid]}
    assert not kept & set(expected["nan"] + expected["inf"])
    # The darkest photos' rows are zero in every channel: kept, laid out and binned like any other.
    zero_rows = ~activation.any(axis=1)
    assert {names[i] for i in group["image_id"][:][valid][zero_rows]} == set(expected["zero"])
    assert zero_rows.sum() == len(expected["zero"]) * POSITIONS

    npy = sorted(root.rglob("*.npy"))
    assert {p.name for p in npy} >= {"coords.npy", "whitening.npy", "directions.npy", "attribution.npy", "cell_index.npy"}
    for path in npy:
        assert np.isfinite(np.load(path).astype(np.float64)).all(), path
    coords = np.load(root / "layout" / "coords.npy")
    assert coords.shape == (len(activation), 2) and coords.min() >= 0 and coords.max() <= 1
    for path in [*root.rglob("grid.json"), root / "examples" / "patches.json"]:
        _strict_json(path)
    assert (root / "index.html").is_file()
    manifest = json.loads((root / "manifest.json").read_text())
    assert _finite_except({k: v for k, v in manifest.items() if k != "render"}, skip="fidelity")
    for level in manifest["levels"]:
        cells = json.loads((root / level["cells"]).read_text())
        assert cells and sum(cell["count"] for cell in cells) == len(activation)
        assert _finite_except(cells, skip="fidelity")  # everything but render's measure (next test)
        assert all((root / cell["icon"]).is_file() for cell in cells)


def test_icons_of_a_model_that_gives_nan_get_a_finite_fidelity(faulty_run: SimpleNamespace) -> None:
    root = faulty_run.root
    for path in [*root.rglob("fidelity.json"), *root.rglob("cells.json"), *root.rglob("blocks/*.json"), root / "manifest.json"]:
        _strict_json(path)
    # The model gives NaN for bright inputs, and some icons are bright: each grid counts them, and scores each one
    # cosine 0 at the last rank (pointing nowhere), never a NaN that would compare as a perfect match.
    for level in _strict_json(root / "manifest.json")["levels"]:
        scores = _strict_json(root / fidelity_file(level["grid"]))
        summary = level["fidelity"]
        assert 1 <= summary["nonfinite"] <= len(scores), (level["grid"], summary)
        last_rank = len(scores) - 1
        assert sum(score == {"cosine": 0.0, "rank": last_rank} for score in scores) >= summary["nonfinite"], scores
        assert math.isfinite(summary["mean_cosine"]) and summary["mean_cosine"] <= 1 - summary["nonfinite"] / len(scores), summary
        cells = _strict_json(root / level["cells"])
        assert [cell["fidelity"] for cell in cells] == scores, "each cell carries its icon's score"


def test_stop_names_the_first_bad_image_and_the_fix(faulty_run: SimpleNamespace, brightness: dict[str, float]) -> None:
    expected = _expected(brightness, faulty_run.bands)
    bad = set(expected["nan"] + expected["inf"])
    listing = (faulty_run.root / "images" / "images.txt").read_text().splitlines()
    first = next(name for name in listing if name in bad)
    assert faulty_run.stop_code == 2
    lines = _error_lines(faulty_run.stop_err)
    what = "NaN in its activation" if first in expected["nan"] else "in its attribution"
    assert lines[0].startswith(f"atlas: error: collect.nonfinite=stop: image '{first}' (image id {listing.index(first)}) gives ")
    assert what in lines[0] and "layer 'fault'" in lines[0] and "set collect.nonfinite=drop" in lines[0]
    assert not faulty_run.stop_marker  # the stage was not recorded as done; the drop run after it collected afresh


def test_the_nonfinite_policy_is_part_of_the_collect_key(tmp_path: Path) -> None:
    """Issue 21 removed the shim that left the default out of the key: a bundle collected under "drop" is collected
    again under "stop" (which would stop at a row "drop" kept out), and the key says which policy made the rows."""

    def settings(nonfinite: str) -> str:
        config = AtlasConfig.model_validate({"collect": {"nonfinite": nonfinite}})
        bundle = SimpleNamespace(path=lambda name: tmp_path / name)
        run = SimpleNamespace(
            config=config, bundle=bundle, source=SimpleNamespace(identity=lambda: "builtin"), device=torch.device("cpu"), same_rows=None
        )
        return json.dumps(collect_settings(run))  # type: ignore[arg-type]

    assert '"nonfinite": "drop"' in settings("drop")
    assert '"nonfinite": "stop"' in settings("stop")
    assert settings("drop") != settings("stop")


def test_a_layer_zero_for_every_image_fails_in_one_line(
    photo_folder: Path, models: Callable[..., list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["run", "--images", str(photo_folder), *models("dead", zero_below=math.inf), *TINY, "--out", str(tmp_path), "--name", "dead"]
    assert main(args) == 2
    lines = _error_lines(capsys.readouterr().err)
    assert "layer 'fault' is zero in every channel for all 51 activations" in lines[0], lines
    assert not (tmp_path / "dead" / "layout").exists()


def test_a_single_channel_layer_needs_a_euclidean_layout_and_then_works(
    photo_folder: Path, models: Callable[..., list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["run", "--images", str(photo_folder), *models("one_channel", channels=1), *TINY, "--out", str(tmp_path), "--name", "one"]
    assert main(args) == 2
    assert _error_lines(capsys.readouterr().err) == [
        "atlas: error: layer 'fault' has 1 channel: layout.metric=cosine sees only the sign of 1-channel activations; "
        "set layout.metric=euclidean, or pick a layer with more channels"
    ]
    assert not (tmp_path / "one" / "activations" / "rows.zarr").exists()  # refused before collecting

    assert main([*args, "--set", "layout.metric=euclidean"]) == 0
    root = tmp_path / "one"
    manifest = _strict_json(root / "manifest.json")
    assert manifest["channels"] == 1 and manifest["n_activations"] == 17 * POSITIONS
    assert np.load(root / "layout" / "whitening.npy").shape == (1, 1)
    coords = np.load(root / "layout" / "coords.npy")
    assert np.isfinite(coords).all() and len(np.unique(coords.round(3), axis=0)) > 4  # a real spread, not one point
    for level in manifest["levels"]:
        directions = np.load(root / level["directions"])
        assert directions.shape[1] == 1 and np.isfinite(directions).all()
        fidelity = _strict_json(root / "levels" / str(level["grid"]) / "fidelity.json")
        assert len(fidelity) == len(directions)
    for path in sorted(root.rglob("*.json")):
        _strict_json(path)


class _NanAtOnePosition(torch.nn.Module):
    """A conv layer whose output is NaN at one spatial position of every image, and finite elsewhere."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3, stride=4, padding=1)
        self.head = torch.nn.Linear(4, 3)
        self.marked = torch.nn.Identity()  # the hooked layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        mask = torch.zeros_like(h, dtype=torch.bool)
        mask[:, :, 2, 3] = True
        h = self.marked(torch.where(mask, torch.full_like(h, math.nan), h))
        return self.head(h.nan_to_num(0.0).mean(dim=(2, 3)))


def test_only_the_bad_positions_of_an_image_are_dropped(photo_folder: Path, tmp_path: Path) -> None:
    module = _NanAtOnePosition().eval()
    prep = Preprocessing(32, 3, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    source = FolderSource(photo_folder, 10**8)
    shards = source.plan(tmp_path, 3, 10)
    records = list(source.read(shards[0]))
    view = ModelView.of_module(module, module.marked, preprocessing=prep)
    result = collect_records(view, records, "all", 64, 0, True, 3)
    assert len(result.rows) == 3 * (64 - 1) and np.isfinite(result.rows.activation).all()
    assert not ((result.rows.y == 2) & (result.rows.x == 3)).any()
    assert [(e["name"], e["rows"], e["error"]) for e in result.nonfinite] == [(r.name, 1, "NaN in its activation") for r in records]
    assert result.n_images == 3

    with pytest.raises(AtlasError) as err:
        collect_records(view, records, "all", 64, 0, True, 3, "stop")
    assert str(err.value).startswith(
        f"collect.nonfinite=stop: image '{records[0].name}' (image id 0) gives NaN in its activation at layer 'marked'"
    )
