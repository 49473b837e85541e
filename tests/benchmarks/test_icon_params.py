"""Icon parameterisations compared on the same cells (issue 14, item 5): fourier, maco, accentuate, lucent, Horama.

On two finished atlases, read-only:

- ``outputs/default`` (``atlas run``: EfficientNet-Lite0 ``blocks.4``, built-in photos, 80 px icons): 16 cells of
  grid 20, evenly spaced in cell order (the grid's rows, top to bottom);
- ``outputs/compare_activations/variants/relu`` (``atlas compare configs/compare_activations.yaml``: the ReLU CNN,
  ``features.act5``, 28 px, 1 channel): 16 cells of its grid 16 (its finest; it has no grid 20).

Every setting renders the same cells with the pipeline's seeds towards the same objective: the whitening, retrieval
term, cosine power and learning rate the bundle's own render used (its manifest's ``render``, chosen by its probe);
a bundle from before the probe takes ``whiten: dot``, ``cossim_power: 4``, ``learning_rate: 0.05``. Settings
(``icon_params_sides.py`` has the details of each side):

- ``render.param`` fourier, maco and accentuate at 128 and 512 steps with 1 and 4 tries (all four pairs), the
  cells as one batch, exactly as the render stage renders a batch (``atlas.featurevis.icons.render_cells``);
- maco and accentuate at equal wall time per icon: the steps that take as long as fourier at 128 steps, 1 try,
  from the seconds measured in the same process;
- torch-lucent 0.1.8 (``render_vis``, our objective wrapped) at its default 512 steps and at equal wall time;
- Horama 0.3's ``maco`` (our objective wrapped as its objective function) at 128 steps and at equal wall time.

Scores, on the icons quantised to 8 bits as the PNGs hold them:

- fidelity (``atlas.featurevis.fidelity``): the cosine of the icon's centre activation with its cell's direction,
  and top-1 = the share of icons whose own cell's direction ranks first among ALL of the grid's directions;
- the path check (``atlas.featurevis.pathcheck``, at ``choose_layers(..., "auto")``): the cosine of the icon's
  early-layer vector with the mean of its cell's example patches' (``examples/``, the first
  ``tiles.examples_per_cell`` examples of ``grid.json``), and top-1 among every checked cell's example mean of the
  grid (``path_top1_all``) and among the chosen cells' only (``path_top1_cells``);
- seconds per icon (each timed unit waits for a quiet machine and is re-run when others were busy; the sides run
  one after another in fresh processes with the same threads and malloc settings).

Writes ``outputs/benchmarks/icon_params.json``, prints a Markdown table, and saves contact sheets
``docs/icons.png`` (default atlas) and ``docs/icons_fashion.png``: a row per setting (the cells' first example
patch on top), a column per cell.

Run: ``python -m pytest -q -s -m benchmark tests/benchmarks/test_icon_params.py`` (about 33 minutes on 2 quiet cores).
``ATLAS_BENCH_SMALL=1``: 4 cells, 8x1, 16x1 and 8x2 (steps x tries), lucent 16 and Horama 8 steps (checks the
harness; writes ``icon_params_small.json`` and no contact sheet; 5 minutes on a quiet machine). Knobs:
``ATLAS_BENCH_ICON_CELLS`` (16), ``ATLAS_BENCH_ICON_SETTINGS`` (``128x1,512x1,128x4,512x4``: steps x tries, the first
is the equal-time reference), ``ATLAS_BENCH_QUIET_WAIT``
(150 s per side of waiting for quiet and of noisy runs thrown away), ``ATLAS_BENCH_ICON_ATLASES``
(``default,fashion``). lucent and Horama are installed only under ``outputs/benchmarks/`` (git-ignored): ``pip
install --no-deps --target outputs/benchmarks/lucent-site torch-lucent==0.1.8 kornia==0.9.0 kornia_rs==0.2.0`` and
``--target outputs/benchmarks/horama-site horama==0.3.0 einops``; a side that cannot be installed is skipped and
the reason recorded.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _bench_util import RESULTS, child_env, cores, write_result

REPO = Path(__file__).resolve().parents[2]
SIDES = Path(__file__).with_name("icon_params_sides.py")
COMMAND = "python -m pytest -q -s -m benchmark tests/benchmarks/test_icon_params.py"

SMALL = bool(os.environ.get("ATLAS_BENCH_SMALL"))
CELLS = int(os.environ.get("ATLAS_BENCH_ICON_CELLS", "4" if SMALL else "16"))
# (steps, tries) per param; the first is the reference that equal wall time is measured against. 512 x 4 is 2,048
# steps an icon, 62% of the benchmark's work: "128x1,512x1,128x4" leaves it out.
SETTINGS = [
    (int(steps), int(tries))
    for steps, tries in (
        item.split("x")
        for item in os.environ.get("ATLAS_BENCH_ICON_SETTINGS", "8x1,16x1,8x2" if SMALL else "128x1,512x1,128x4,512x4").split(",")
    )
]
LUCENT_STEPS = 16 if SMALL else 512  # render_vis's default
HORAMA_STEPS = 8 if SMALL else 128
PROBE_STEPS = 8 if SMALL else 32  # one icon, to find the steps of equal wall time for lucent and Horama
# One thread per process, as each local Dask worker renders (one single-threaded worker per core): also the setting
# that other load slows least (2 threads on a busy 2-core machine spun in OpenMP barriers, up to 20x slower).
THREADS = int(os.environ.get("ATLAS_BENCH_ICON_THREADS", "1"))
QUIET_WAIT_S = float(os.environ.get("ATLAS_BENCH_QUIET_WAIT", "150"))
PARAMS = ("fourier", "maco", "accentuate")
RENDER_SETTINGS = {"whiten": "dot", "cossim_power": 4.0, "learning_rate": 0.05}  # for a bundle from before the probe

ATLASES = {
    "default": {"bundle": REPO / "outputs" / "default", "grid": 20, "sheet": REPO / "docs" / "icons.png", "scale": 1},
    "fashion": {
        "bundle": REPO / "outputs" / "compare_activations" / "variants" / "relu",
        "grid": 16,
        "sheet": REPO / "docs" / "icons_fashion.png",
        "scale": 2,
    },
}
CHOSEN = [name for name in os.environ.get("ATLAS_BENCH_ICON_ATLASES", "default,fashion").split(",") if name]

SITES = {
    "lucent": (RESULTS / "lucent-site", ["torch-lucent==0.1.8", "kornia==0.9.0", "kornia_rs==0.2.0"], "lucent"),
    "horama": (RESULTS / "horama-site", ["horama==0.3.*", "einops"], "horama"),
}
SHEET_MAX_BYTES = 1_000_000


# ----------------------------------------------------------------------------- the other libraries' folders


def _importable(site: Path, module: str) -> str | None:
    """None when ``module`` imports from ``site`` (lucent through render_sides' kornia shim), else the error."""
    if module == "lucent":
        code = "import sys; sys.path.insert(0, sys.argv[2]); from render_sides import import_lucent; import_lucent(sys.argv[1])"
    else:
        code = f"import sys; sys.path.insert(0, sys.argv[1]); import {module}; assert {module}.__file__.startswith(sys.argv[1])"
    proc = subprocess.run([sys.executable, "-c", code, str(site), str(SIDES.parent)], capture_output=True, text=True,
                          env=child_env(), timeout=300)  # fmt: skip
    return None if proc.returncode == 0 else (proc.stderr.strip().splitlines() or ["?"])[-1]


def ensure_site(side: str) -> tuple[Path | None, str | None]:
    """The side's library in its own git-ignored folder (never the project's environment): (folder, None) or (None, why)."""
    site, packages, module = SITES[side]
    if site.is_dir() and _importable(site, module) is None:
        return site, None
    staging = site.with_name(site.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile", "--target", str(staging), *packages]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as err:
        return None, f"pip install {' '.join(packages)}: {err}"
    if proc.returncode != 0:
        return None, f"pip install {' '.join(packages)}: {(proc.stderr.strip().splitlines() or ['pip failed'])[-1]}"
    shutil.rmtree(site, ignore_errors=True)
    staging.rename(site)
    problem = _importable(site, module)
    return (site, None) if problem is None else (None, f"installed but {module} does not import: {problem}")


def run_side(side: str, args: dict[str, Any], timeout: float) -> dict[str, Any]:
    """``python icon_params_sides.py side json(args)`` in a fresh process (``_bench_util.run_child``'s environment);
    its progress goes to ``<out>/<side>.log`` as it runs and its result to ``<out>/<side>.json``."""
    out = Path(args["out"])
    out.mkdir(parents=True, exist_ok=True)
    with open(out / f"{side}.log", "w") as log:
        proc = subprocess.run([sys.executable, str(SIDES), side, json.dumps(args)], cwd=REPO, env=child_env(),
                              stdout=subprocess.PIPE, stderr=log, text=True, timeout=timeout)  # fmt: skip
    if proc.returncode != 0:
        raise AssertionError(f"{side} side failed (exit {proc.returncode}):\n{(out / f'{side}.log').read_text()[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    (out / f"{side}.json").write_text(json.dumps(result, indent=1))
    return result


# ----------------------------------------------------------------------------- scoring in this process


class Scorer:
    """Fidelity and the path check of icons of one atlas's grid, the way the render and path stages score them."""

    def __init__(self, bundle_path: Path, grid: int, rows: list[int]) -> None:
        import torch

        from atlas.bundle import Bundle
        from atlas.config import ModelConfig
        from atlas.featurevis.icon_files import load_icons
        from atlas.featurevis.pathcheck import choose_layers, early_vectors
        from atlas.models import ModelView, load_model, resolve_layer
        from atlas_pipelines.stages.path import cell_patches

        torch.set_num_threads(cores())
        self.bundle = Bundle(bundle_path)
        config = self.bundle.manifest["config"]
        self.model = load_model(ModelConfig(**config["model"]))
        self.model.module.eval()
        self.layer = resolve_layer(self.model, config["model"]["layer"])
        self.view = ModelView(self.model, config["model"]["layer"], self.layer)
        self.rows = rows
        self.directions = self.bundle.directions(grid)
        self.cells = self.bundle.grid_cells(grid)
        self.path_layer_names = choose_layers(self.model, config["model"]["layer"], "auto")
        self.path_layers = [resolve_layer(self.model, name) for name in self.path_layer_names]
        prep = self.model.preprocessing
        per_cell = config["tiles"]["examples_per_cell"]
        written = self.bundle.patches()
        self.patch_names = [cell_patches(cell, per_cell, written) for cell in self.cells]
        unique = sorted({name for names in self.patch_names for name in names})
        images = [load_icons(self.bundle, [name], prep.channels, 0)[0] for name in unique]
        vectors = dict(zip(unique, early_vectors(self.view, self.path_layers, images)))
        self.dim = len(next(iter(vectors.values())))
        self.examples = [
            np.stack([vectors[n] for n in names]) if names else np.zeros((0, self.dim), np.float32) for names in self.patch_names
        ]
        self.first_patch = [names[0] if names else None for names in self.patch_names]

    def score(self, icons: np.ndarray) -> dict[str, Any]:
        """``icons``: uint8 [K, C, H, W] for ``self.rows`` in order."""
        import torch

        from atlas.featurevis.fidelity import centre_activations, direction_fidelity
        from atlas.featurevis.pathcheck import early_vectors, path_check

        pixels = torch.from_numpy(icons.astype(np.float32) / 255.0)
        activations = centre_activations(self.view, pixels)
        fidelity = direction_fidelity(activations, self.directions, own=np.asarray(self.rows))
        early = early_vectors(self.view, self.path_layers, pixels)
        every = np.zeros((len(self.cells), self.dim), np.float32)  # other cells' icons are not scored; zeros never NaN
        every[self.rows] = early
        among_all = path_check(every, self.examples)
        among_cells = path_check(early, [self.examples[r] for r in self.rows])
        checked = among_all.checked[self.rows]
        return {
            "fidelity_cosine": float(fidelity.cosine.mean()),
            "fidelity_top1": float(fidelity.top1),
            "fidelity_nonfinite": fidelity.nonfinite,
            "path_cosine": float(np.mean(among_all.cosine[self.rows][checked])) if checked.any() else None,
            "path_top1_all": float(np.mean(among_all.rank[self.rows][checked] == 0)) if checked.any() else None,
            "path_top1_cells": among_cells.top1 if among_cells.cells else None,
            "path_cells": int(checked.sum()),
            "per_cell": [
                {"row": r, "cosine": round(float(c), 4), "rank": int(k), "path_cosine": round(float(pc), 4), "path_rank": int(pr)}
                for r, c, k, pc, pr in zip(
                    self.rows, fidelity.cosine, fidelity.rank, among_all.cosine[self.rows], among_all.rank[self.rows]
                )
            ],
        }

    def patch_image(self, row: int, size: int) -> np.ndarray:
        """The cell's first example patch as uint8 [C, size, size] (grey where it has none)."""
        from PIL import Image

        channels = self.model.preprocessing.channels
        name = self.first_patch[row]
        if name is None:
            return np.full((channels, size, size), 128, np.uint8)
        patch = self.bundle.image(name).convert("L" if channels == 1 else "RGB").resize((size, size), Image.Resampling.BICUBIC)
        array = np.asarray(patch, np.uint8)
        return array[None] if channels == 1 else array.transpose(2, 0, 1)


# ----------------------------------------------------------------------------- contact sheet


def contact_sheet(path: Path, rows: list[tuple[str, np.ndarray]], scale: int) -> dict[str, Any]:
    """One labelled row per setting (uint8 [K, C, H, W] each), a column per cell; PNG kept under ~1 MB."""
    from PIL import Image, ImageDraw

    label_w, gap = 250, 2
    icon = rows[0][1].shape[-1]
    for cell_px in (icon * scale, 64, 56, 48, 40):
        cell_px = min(cell_px, icon * scale)
        count = rows[0][1].shape[0]
        width, height = label_w + count * (cell_px + gap), len(rows) * (cell_px + gap)
        sheet = Image.new("RGB", (width, height), (255, 255, 255))
        draw = ImageDraw.Draw(sheet)
        for n, (label, icons) in enumerate(rows):
            top = n * (cell_px + gap)
            draw.text((6, top + cell_px // 2 - 6), label, fill=(0, 0, 0))
            for k, image in enumerate(icons):
                mode = "L" if image.shape[0] == 1 else "RGB"
                tile = Image.fromarray(image[0] if mode == "L" else image.transpose(1, 2, 0), mode).convert("RGB")
                resample = Image.Resampling.NEAREST if cell_px % icon == 0 else Image.Resampling.LANCZOS
                sheet.paste(tile.resize((cell_px, cell_px), resample), (label_w + k * (cell_px + gap), top))
        path.parent.mkdir(parents=True, exist_ok=True)
        sheet.save(path, optimize=True)
        if path.stat().st_size <= SHEET_MAX_BYTES:
            break
        sheet.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)
        if path.stat().st_size <= SHEET_MAX_BYTES:
            break
    shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    return {"path": str(shown), "bytes": path.stat().st_size, "cell_px": cell_px, "rows": [r[0] for r in rows]}


# ----------------------------------------------------------------------------- the benchmark


def spread_rows(count: int, take: int) -> list[int]:
    take = min(take, count)
    return [(k * count) // take for k in range(take)]


def label_of(name: str, run: dict[str, Any]) -> str:
    equal = f" (time of fourier {SETTINGS[0][0]})" if name.endswith("_equal") else ""
    tries = f" x{run['tries']}" if run["side"] == "ours" else ""
    return f"{run['param']} {run['steps']} steps{tries}{equal}"


def bundle_settings(manifest: dict[str, Any]) -> dict[str, Any]:
    """The objective the bundle's icons were rendered towards (tries are the benchmark's own), or the stated one."""
    render = manifest.get("render") or {}
    if render.get("chosen_by") is None:
        return RENDER_SETTINGS
    return {k: render[k] for k in ("whiten", "cossim_power", "learning_rate")} | {"contrast": bool(render.get("contrast", False))}


def bench_atlas(name: str, spec: dict[str, Any], sites: dict[str, Path | None]) -> dict[str, Any]:
    bundle = spec["bundle"]
    manifest = json.loads((bundle / "manifest.json").read_text())
    count = len(json.loads((bundle / "levels" / str(spec["grid"]) / "grid.json").read_text()))
    rows = spread_rows(count, CELLS)
    out = RESULTS / ("icon-params-small" if SMALL else "icon-params") / name
    shutil.rmtree(out, ignore_errors=True)
    common = {"bundle": str(bundle), "grid": spec["grid"], "rows": rows, "icon_size": manifest["config"]["render"]["icon_size"],
              "render_settings": bundle_settings(manifest), "threads": THREADS, "quiet_budget_s": QUIET_WAIT_S, "out": str(out)}  # fmt: skip
    print(f"\n[{name}] {len(rows)} cells of grid {spec['grid']} ({count} cells), icons {common['icon_size']} px", flush=True)
    sides: dict[str, Any] = {}
    ours_args = {**common, "params": list(PARAMS), "settings": [list(x) for x in SETTINGS], "reference": ["fourier", *SETTINGS[0]]}
    sides["ours"] = run_side("ours", ours_args, timeout=5400)
    reference = sides["ours"]["reference_seconds_per_icon"]
    for side, steps in (("lucent", LUCENT_STEPS), ("horama", HORAMA_STEPS)):
        if sites.get(side) is None:
            continue
        args = {**common, "site": str(sites[side]), "steps": steps, "probe_steps": PROBE_STEPS, "reference_seconds_per_icon": reference}
        try:
            sides[side] = run_side(side, args, timeout=3600)
        except AssertionError as err:  # another library's failure is a finding to record, not a broken benchmark
            sides[side] = {"error": str(err)[-2000:]}
            print(f"[{name}] {side} side failed: {str(err)[-600:]}", flush=True)

    scorer = Scorer(bundle, spec["grid"], rows)
    results: list[dict[str, Any]] = []
    sheet_rows: list[tuple[str, np.ndarray]] = []
    size = common["icon_size"]
    sheet_rows.append(("example patch (first)", np.stack([scorer.patch_image(r, size) for r in rows])))
    for side in ("ours", "lucent", "horama"):
        for run_name, run in (sides.get(side) or {}).get("runs", {}).items():
            icons = np.load(out / f"{run_name}.npy")
            scores = scorer.score(icons)
            results.append({"name": run_name, "label": label_of(run_name, run), **{k: v for k, v in run.items() if k != "seconds"},
                            "seconds": run["seconds"], **scores})  # fmt: skip
            sheet_rows.append((label_of(run_name, run), icons))
    sheet = None
    if not SMALL:
        sheet = contact_sheet(spec["sheet"], sheet_rows, spec["scale"])
    return {
        "bundle": str(bundle.relative_to(REPO)),
        "model": manifest["config"]["model"]["spec"],
        "layer": manifest["config"]["model"]["layer"],
        "grid": spec["grid"],
        "grid_cells": count,
        "rows": rows,
        "cells": [{"i": scorer.cells[r]["i"], "j": scorer.cells[r]["j"], "count": scorer.cells[r]["count"]} for r in rows],
        "icon_size": size,
        "render_settings": common["render_settings"],
        "path_layers": scorer.path_layer_names,
        "reference_seconds_per_icon": reference,
        "equal_steps": sides["ours"]["equal_steps"],
        "results": results,
        "sides": {k: {kk: vv for kk, vv in v.items() if kk != "runs"} for k, v in sides.items()},
        "contact_sheet": sheet,
    }


def markdown(name: str, atlas: dict[str, Any]) -> str:
    def f(value: Any, digits: int = 2) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    lines = [
        f"**{name}**: {atlas['model']} `{atlas['layer']}`, grid {atlas['grid']} ({atlas['grid_cells']} cells), "
        f"{len(atlas['rows'])} cells, {atlas['icon_size']} px; path check at {', '.join(atlas['path_layers'])}",
        "",
        "| setting | s/icon | fidelity cos | fidelity top-1 | path cos | path top-1 (all cells) | path top-1 (these cells) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in atlas["results"]:
        lines.append(
            f"| {r['label']} | {f(r['seconds_per_icon'], 3)} | {f(r['fidelity_cosine'])} | {f(r['fidelity_top1'])} | "
            f"{f(r['path_cosine'])} | {f(r['path_top1_all'])} | {f(r['path_top1_cells'])} |"
        )
    return "\n".join(lines)


@pytest.mark.benchmark
def test_icon_params() -> None:
    available = {name: ATLASES[name] for name in CHOSEN if (ATLASES[name]["bundle"] / "manifest.json").exists()}
    if not available:
        pytest.skip(
            f"none of {[str(ATLASES[n]['bundle']) for n in CHOSEN]} exists; run `atlas run` (and `atlas compare configs/compare_activations.yaml`) first"
        )
    sites: dict[str, Path | None] = {}
    skipped: dict[str, str] = {}
    for side in SITES:
        sites[side], why = ensure_site(side)
        if why:
            skipped[side] = why
            print(f"[{side}] skipped: {why}", flush=True)
    atlases = {name: bench_atlas(name, spec, sites) for name, spec in available.items()}
    data = {
        "command": ("ATLAS_BENCH_SMALL=1 " if SMALL else "") + COMMAND,
        "small": SMALL,
        "settings_source": "each bundle's manifest render (its probe's choice), else whiten dot, cossim_power 4, lr 0.05",
        "skipped_sides": skipped,
        "atlases": atlases,
    }
    write_result("icon_params_small" if SMALL else "icon_params", data)
    print()
    for name, atlas in atlases.items():
        print(markdown(name, atlas) + "\n")
    for atlas in atlases.values():
        for r in atlas["results"]:
            assert r["fidelity_nonfinite"] == 0, f"{r['name']}: icons gave NaN at the layer"
            assert 0.0 <= r["fidelity_top1"] <= 1.0
        assert {r["param"] for r in atlas["results"] if r["side"] == "ours"} == set(PARAMS)
