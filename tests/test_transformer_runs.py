"""`atlas run` end to end on untrained timm transformers (issue 22): a ViT's patch tokens and a Swin stage's
channels-last map, each at the one input size the model accepts, with icons rendered at it and shown smaller."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import zarr
from PIL import Image

from atlas_pipelines.commands.cli import main

TINY = [
    "--scheduler", "sync",
    "--set", "model.pretrained=false",
    "--set", "collect.n_images=6",
    "--set", "collect.positions_per_image=3",
    "--set", "collect.shard_size=6",
    "--set", "layout.fit_sample=18",
    "--set", "layout.n_neighbors=5",
    "--set", "grid.sizes=[2]",
    "--set", "grid.min_count=1",
    "--set", "render.steps=3",
    "--set", "render.icon_size=32",
]  # fmt: skip


def run_atlas(out: Path, name: str, spec: str, layer: str, *settings: str) -> dict:
    assert main(["run", "--out", str(out), "--name", name, "--model", spec, "--layer", layer, *TINY, *settings]) == 0
    return json.loads((out / name / "manifest.json").read_text())


def check_icons(bundle: Path, manifest: dict) -> None:
    """Icons shown at 32 px; the full view behind each is the 224 px image the model was fed."""
    cells = json.loads((bundle / manifest["levels"][0]["cells"]).read_text())
    assert cells
    for cell in cells:
        assert Image.open(bundle / cell["icon"]).size == (32, 32)
        assert Image.open(bundle / cell["icon"].replace("icons/", "views/")).size == (224, 224)


def test_a_vit_block_collects_its_patch_tokens(tmp_path: Path) -> None:
    manifest = run_atlas(tmp_path, "vit", "timm:vit_tiny_patch16_224", "blocks.6")
    assert manifest["layer_layout"] == {"name": "tokens", "prefix_tokens": 1, "grid": [14, 14]}
    assert manifest["channels"] == 192 and manifest["layer_shape"] == [197, 192] and manifest["input_size"] == 224
    assert manifest["n_activations"] == 6 * 3
    rows = zarr.open_group(str(tmp_path / "vit" / "activations" / "rows.zarr"), mode="r")["activation"]
    assert rows.shape[1] == 192 and np.isfinite(rows[: 6 * 3]).all()
    assert manifest["render"]["receptive_field"]["image_size"] == 224, "the field is measured on the 224 px canvas"
    check_icons(tmp_path / "vit", manifest)


def test_a_swin_stage_stores_its_384_channels(tmp_path: Path) -> None:
    manifest = run_atlas(tmp_path, "swin", "timm:swin_tiny_patch4_window7_224", "layers.2")
    assert manifest["layer_layout"] == {"name": "channels_last"}
    assert manifest["channels"] == 384 and manifest["layer_shape"] == [14, 14, 384]
    rows = zarr.open_group(str(tmp_path / "swin" / "activations" / "rows.zarr"), mode="r")["activation"]
    assert rows.shape[1] == 384
    check_icons(tmp_path / "swin", manifest)


def test_a_deit_block_with_its_class_token_rows_beside_the_patch_rows(tmp_path: Path) -> None:
    """collect.class_token: each image's class token is one more row (y = x = -1) on the same map; the cells count
    them, and a class-token example is the whole image at a patch's size."""
    manifest = run_atlas(tmp_path, "deit", "timm:deit_tiny_patch16_224", "blocks.3", "--set", "collect.class_token=true")
    bundle = tmp_path / "deit"
    assert manifest["layer_layout"] == {"name": "tokens", "prefix_tokens": 1, "grid": [14, 14]}
    assert manifest["channels"] == 192 and manifest["layer_shape"] == [197, 192]
    assert manifest["n_activations"] == 6 * (3 + 1) and manifest["class_tokens"] == 6
    store = zarr.open_group(str(bundle / "activations" / "rows.zarr"), mode="r")
    valid = store["valid"][:]
    kind, y, x = (store[name][:][valid] for name in ("kind", "y", "x"))
    assert (kind == 1).sum() == 6 and (y[kind == 1] == -1).all() and (x[kind == 1] == -1).all() and (y[kind == 0] >= 1).all()
    cells = json.loads((bundle / manifest["levels"][0]["cells"]).read_text())
    assert sum(cell.get("class_tokens", 0) for cell in cells) == 6 and sum(cell["count"] for cell in cells) == 24
    shown = [(e["y"], e["patch"]) for cell in cells for e in cell["examples"] if e.get("patch")]
    sizes = {Image.open(bundle / patch).size for _, patch in shown}
    assert len(sizes) == 1, "class-token examples show at the patches' size"
    check_icons(bundle, manifest)


def test_a_convnext_stage_is_channels_first_and_renders_at_the_icon_size(tmp_path: Path) -> None:
    manifest = run_atlas(tmp_path, "convnext", "timm:convnext_atto", "stages.2")
    assert manifest["layer_layout"] == {"name": "channels_first"}
    assert manifest["channels"] == 160 and manifest["layer_shape"] == [160, 14, 14]
    cells = json.loads((tmp_path / "convnext" / manifest["levels"][0]["cells"]).read_text())
    assert cells and all(Image.open(tmp_path / "convnext" / cell["icon"]).size == (32, 32) for cell in cells)
    assert manifest["render"]["receptive_field"]["image_size"] == 32, "a model of any size is fed the icon's own size"
