"""The sides of the icon parameterisation benchmark, each run in a fresh process by ``test_icon_params.py``.

``python icon_params_sides.py ours|lucent|horama ARGS_JSON``; the last stdout line is a JSON object, and each
setting's icons (8-bit ``[K, C, H, W]``, exactly as the saved PNGs hold them) go to ``ARGS["out"]/<setting>.npy``.

Every side renders the same cells of one atlas (``ARGS["bundle"]``, grid ``ARGS["grid"]``, rows ``ARGS["rows"]``)
with the pipeline's seeds (``derive_seed(seed, grid, i, j)``) towards the same objective: the cells' directions under
``whiten: dot`` (``atlas.featurevis.icons.objective_for``: grow along the whitened direction, point along the cell's
own), ``cossim_power`` and the model's own mean and std. Timed units wait for a quiet machine and are re-run when
other processes were busy (``render_sides.Guard``); set-up (model loading, warm-up) is never timed.

- ``ours``: ``atlas.featurevis.icons.render_cells`` exactly as the render stage calls it, one batch of the cells,
  for ``render.param`` fourier, maco and accentuate at each (steps, tries) of ``ARGS["settings"]``, and each
  param once more at equal wall time: the steps that take as long per icon as fourier at the reference setting,
  from the two params' measured seconds in this same process. maco's magnitude spectrum is estimated as
  ``run_spectrum`` does (up to 256 of the run's own images, through the same image source).
- ``lucent``: torch-lucent 0.1.8's ``render_vis`` (its fft image, its ``standard_transforms``, Adam lr 0.05), one
  icon at a time, with our objective wrapped as a lucent objective (as ``render_sides.py`` does); on
  EfficientNet-Lite0 a truncated copy up to ``blocks.4``. At lucent's default 512 steps and at equal wall time.
- ``horama``: serre-lab's Horama 0.3.0 ``maco`` (phase-only Fourier, NAdam lr 1.0, 6 crops per step, noise), one
  icon per call, our objective wrapped as its ``objective_function`` (the mean over its crops). Fitted to an atlas
  icon: ``image_size`` = ``model_input_size`` = the icon size and ``box_size=(0.8, 0.9)`` (its crops then cover
  90-100% of the icon; its default 20-25% crops of a 1280 px image would show the model a part of the icon that
  fidelity never feeds it). Its ImageNet magnitude template is downloaded from Google Cloud on first use; without
  network access this side writes the run's own spectrum (as ours uses) under that file name in its working
  folder. Horama is 3-channel only: for a 1-channel model its crops are averaged to grey before the model.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
for path in (str(REPO), str(HERE)):
    if path not in sys.path:
        sys.path.insert(0, path)

from render_sides import Guard, Truncated, _drop_hooks, import_lucent, quantise  # noqa: E402

SPECTRUM_IMAGES = 256
MAX_EQUAL_STEPS = 2048  # a sanity cap on lucent's and Horama's equal-time steps


# --------------------------------------------------------------------------- shared set-up


class Atlas:
    """One bundle's model, layer, cells, directions and whitening, read-only."""

    def __init__(self, args: dict[str, Any]) -> None:
        from atlas.bundle import Bundle
        from atlas.config import ModelConfig
        from atlas.featurevis import derive_seed
        from atlas.models import ModelView, load_model, resolve_layer

        torch.set_num_threads(args["threads"])
        self.bundle = Bundle(args["bundle"])
        manifest = self.bundle.manifest
        self.config = manifest["config"]
        self.model_config = ModelConfig(**self.config["model"])
        self.model = load_model(self.model_config)
        self.model.module.eval().to(memory_format=torch.channels_last)  # as a pipeline worker holds it
        self.layer_name = self.model_config.layer
        self.layer = resolve_layer(self.model, self.layer_name)
        self.view = ModelView(self.model, self.layer_name, self.layer)
        self.grid = args["grid"]
        self.rows = list(args["rows"])
        self.cells = [self.bundle.grid_cells(self.grid)[r] for r in self.rows]
        self.directions = self.bundle.directions(self.grid)  # the whole grid's: the retrieval term ranks among all
        self.whitening = self.bundle.whitening()
        self.seeds = [derive_seed(self.config["seed"], self.grid, c.i, c.j) for c in self.cells]
        self.size = args["icon_size"]
        prep = self.model.preprocessing
        self.channels, self.mean, self.std = prep.channels, list(prep.mean), list(prep.std)

    def settings(self, args: dict[str, Any]) -> Any:
        from atlas.featurevis.choice import RenderSettings

        return RenderSettings(**args["render_settings"])

    def objective(self, args: dict[str, Any], rows: slice | list[int] | None = None) -> Any:
        from atlas.featurevis.icons import objective_for

        picked = np.asarray(self.rows)[slice(None) if rows is None else rows]
        return objective_for(self.directions, picked.tolist(), self.whitening, self.settings(args))

    def spectrum(self) -> np.ndarray:
        """maco's magnitude as ``run_spectrum`` estimates it: up to 256 of the run's images, in the model's frame."""
        from atlas.config import ImagesConfig
        from atlas.featurevis import estimate_spectrum
        from atlas.images import open_source
        from atlas.images.preprocess import to_pixels

        saved = self.bundle.render_spectrum()
        if saved is not None and saved.shape == (self.channels, self.size, self.size // 2 + 1):
            return saved
        images = ImagesConfig(**self.config["images"])
        source = open_source(images.source, images.root, images.max_pixels)
        pixels: list[torch.Tensor] = []
        with tempfile.TemporaryDirectory() as scratch:
            for shard in source.plan(Path(scratch), SPECTRUM_IMAGES, SPECTRUM_IMAGES):
                for record in source.read(shard):
                    if record.image is not None:
                        pixels.append(to_pixels(record.image, self.model.preprocessing))
                    if len(pixels) >= SPECTRUM_IMAGES:
                        break
                if len(pixels) >= SPECTRUM_IMAGES:
                    break
        return estimate_spectrum(torch.stack(pixels), self.size).numpy()


def save(out: Path, name: str, images: torch.Tensor | np.ndarray) -> None:
    array = images.detach().float().cpu().numpy() if isinstance(images, torch.Tensor) else images
    np.save(out / f"{name}.npy", quantise(array))


# --------------------------------------------------------------------------- ours


def side_ours(args: dict[str, Any]) -> dict[str, Any]:
    from atlas.featurevis.icon_files import first_patch, start_images
    from atlas.featurevis.icons import GridCells, IconRecipe, ParamInputs, render_cells

    atlas = Atlas(args)
    out = Path(args["out"])
    settings = atlas.settings(args)
    spectrum = atlas.spectrum()
    starts = start_images(atlas.bundle, [first_patch(cell) for cell in atlas.cells], atlas.channels, atlas.size)
    inputs = ParamInputs(spectrum, starts)

    def run(param: str, steps: int, tries: int, rows: slice = slice(None)) -> Any:
        recipe = IconRecipe(steps=steps)
        part = ParamInputs(inputs.spectrum, inputs.starts[rows])
        picked = tuple(np.asarray(atlas.rows)[rows].tolist())
        cells = GridCells(atlas.directions, picked, tuple(atlas.seeds[rows]), atlas.whitening)
        these = replace(settings, tries=tries, param=param)
        return render_cells(atlas.view, cells, recipe, these, atlas.size, part)

    guard = Guard(args["quiet_budget_s"])
    for param in args["params"]:  # warm-up outside the timings: thread pools, allocator, kernels for these shapes
        run(param, 2, 1, slice(0, 2))
        run(param, 2, 1)
    batch = len(atlas.seeds)
    runs: dict[str, Any] = {}

    def timed(name: str, param: str, steps: int, tries: int) -> float:
        seconds, result, clean = guard.time(name, lambda: run(param, steps, tries))
        runs[name] = {"side": "ours", "param": param, "steps": steps, "tries": tries, "batch": batch,
                      "seconds": seconds, "seconds_per_icon": seconds / batch, "clean": clean,
                      "final_score_mean": float(result.scores.float().mean())}  # fmt: skip
        save(out, name, result.images)
        print(f"[ours] {name}: {seconds / batch:.3f} s/icon", file=sys.stderr, flush=True)
        return seconds / batch

    reference = args["reference"]  # [param, steps, tries]: the setting equal time is measured against
    per_icon: dict[tuple[str, int, int], float] = {}
    for param in args["params"]:
        for steps, tries in args["settings"]:
            per_icon[(param, steps, tries)] = timed(f"{param}_s{steps}_t{tries}", param, steps, tries)
    ref_param, ref_steps, ref_tries = reference
    target = per_icon[(ref_param, ref_steps, ref_tries)]
    equal: dict[str, int] = {}
    for param in args["params"]:
        if param == ref_param:
            continue
        # seconds per icon ~ steps: the steps that cost what the reference costs, from this param's own timing
        steps = max(1, round(ref_steps * target / per_icon[(param, ref_steps, ref_tries)]))
        equal[param] = steps
        name = f"{param}_equal"
        timed(name, param, steps, ref_tries)
        runs[name]["equal_time_to"] = f"{ref_param}_s{ref_steps}_t{ref_tries}"
    return {
        "side": "ours",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "reference_seconds_per_icon": target,
        "equal_steps": equal,
        "runs": runs,
        "noise": guard.report(),
    }


def one_at_a_time(
    side: str,
    label: str,
    default_name: str,
    args: dict[str, Any],
    guard: Guard,
    render_one: Callable[[int, int], np.ndarray],
    count: int,
    out: Path,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """An outside library, one icon per call: its default steps, and the steps that take as long per icon as the
    reference setting (from a timed probe). Each icon is timed alone; the icons are saved for scoring.
    Returns the runs and the probe."""
    probe_steps = args["probe_steps"]
    probe_s, _, _ = guard.time(f"{side}_probe", lambda: render_one(0, probe_steps))
    equal_steps = min(MAX_EQUAL_STEPS, max(1, round(probe_steps * args["reference_seconds_per_icon"] / probe_s)))
    runs: dict[str, Any] = {}
    for name, steps in [(default_name, args["steps"]), (f"{side}_equal", equal_steps)]:
        times, cleans, icons = [], [], []
        for k in range(count):
            seconds, image, clean = guard.time(f"{name}_{k}", lambda k=k, steps=steps: render_one(k, steps))
            times.append(seconds)
            cleans.append(clean)
            icons.append(image)
        timed = [t for t, c in zip(times, cleans) if c] or times
        runs[name] = {"side": side, "param": label, "steps": steps, "tries": 1, "batch": 1,
                      "seconds": times, "seconds_per_icon": float(np.mean(timed)), "clean": all(cleans)}  # fmt: skip
        if name == f"{side}_equal":
            runs[name]["equal_time_to"] = "reference"
        save(out, name, np.stack(icons))
        print(f"[{side}] {name}: {np.mean(timed):.3f} s/icon at {steps} steps", file=sys.stderr, flush=True)
    return runs, {"steps": probe_steps, "seconds": probe_s}


# --------------------------------------------------------------------------- lucent


def side_lucent(args: dict[str, Any]) -> dict[str, Any]:
    lib = import_lucent(args["site"])
    objectives, param, render, transform = lib["objectives"], lib["param"], lib["render"], lib["transform"]
    warnings.filterwarnings("ignore")
    atlas = Atlas(args)
    out = Path(args["out"])
    hook_name = atlas.layer_name.replace(".", "_")
    if atlas.model_config.spec == "efficientnet-lite0" and atlas.layer_name == "blocks.4":
        model: nn.Module = Truncated(atlas.model.module).eval()  # lucent computes nothing after the layer either
    else:
        model = atlas.model.module
    mean_t = torch.tensor(atlas.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(atlas.std, dtype=torch.float32).view(1, -1, 1, 1)
    transforms = list(transform.standard_transforms) + [lambda x: (x - mean_t) / std_t]
    size, channels = atlas.size, atlas.channels

    def make_objective(k: int) -> Any:
        ours = atlas.objective(args, [k])
        return objectives.Objective(lambda hook: -ours(hook(hook_name), None).sum(), name="atlas.Direction")

    def render_one(k: int, steps: int) -> np.ndarray:
        torch.manual_seed(atlas.seeds[k])
        np.random.seed(atlas.seeds[k] % (2**32))
        images = render.render_vis(
            model, make_objective(k),
            param_f=lambda: param.image(size, fft=True, decorrelate=channels == 3, channels=None if channels == 3 else channels),
            transforms=transforms, preprocess=False, thresholds=(steps,), show_image=False, progress=False,
            fixed_image_size=size,
        )  # fmt: skip
        _drop_hooks(model)
        return images[-1][0].transpose(2, 0, 1)  # [C, H, W] in [0, 1]

    guard = Guard(args["quiet_budget_s"])
    render_one(0, 4)  # warm-up
    runs, probe = one_at_a_time("lucent", "lucent fft", "lucent_default", args, guard, render_one, len(atlas.seeds), out)
    return {"side": "lucent", "threads": torch.get_num_threads(), "lucent_file": lib["lucent"].__file__,
            "kornia": lib["kornia"].__version__, "probe": probe,
            "runs": runs, "noise": guard.report()}  # fmt: skip


# --------------------------------------------------------------------------- horama


def side_horama(args: dict[str, Any]) -> dict[str, Any]:
    from atlas.models import run_to_layer

    warnings.filterwarnings("ignore")
    atlas = Atlas(args)
    out = Path(args["out"]).resolve()
    work = out / "horama-cwd"  # horama reads (or downloads) its spectrum template from the working folder
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)
    sys.path.insert(0, args["site"])
    import horama
    import horama.maco_fv as maco_fv

    template = Path(maco_fv.MACO_SPECTRUM_FILENAME)
    spectrum_from = "horama's ImageNet template (downloaded)"
    if not template.is_file():
        try:
            maco_fv.download_url(maco_fv.MACO_SPECTRUM_URL, root=".", filename=maco_fv.MACO_SPECTRUM_FILENAME)
        except Exception as err:  # no network: any failure means use the run's own spectrum
            spectrum = atlas.spectrum()
            if spectrum.shape[0] == 1:
                spectrum = np.repeat(spectrum, 3, axis=0)
            np.save(template, spectrum.astype(np.float32))
            spectrum_from = f"the run's own spectrum (template download failed: {type(err).__name__})"
    lo = [(0.0 - m) / s for m, s in zip(atlas.mean, atlas.std)]
    hi = [(1.0 - m) / s for m, s in zip(atlas.mean, atlas.std)]
    value_range = (float(np.mean(lo)), float(np.mean(hi)))  # horama takes one range for all channels
    module, layer, size = atlas.model.module, atlas.layer, atlas.size

    def render_one(k: int, steps: int) -> np.ndarray:
        objective = atlas.objective(args, [k])

        def objective_function(crops: torch.Tensor) -> torch.Tensor:
            if atlas.channels == 1:
                crops = crops.mean(dim=1, keepdim=True)
            return objective(run_to_layer(module, layer, crops.contiguous(memory_format=torch.channels_last)), None).mean()

        torch.manual_seed(atlas.seeds[k])
        image, _alpha = horama.maco(
            objective_function, total_steps=steps, learning_rate=1.0, image_size=size, model_input_size=size,
            values_range=value_range, box_size=(0.8, 0.9), device="cpu",
        )  # fmt: skip
        pixels = ((image.detach() - value_range[0]) / (value_range[1] - value_range[0])).clamp(0, 1)
        return (pixels.mean(dim=0, keepdim=True) if atlas.channels == 1 else pixels).numpy()

    import tqdm as tqdm_module  # horama wraps its loop in tqdm; keep the benchmark's log readable

    original = tqdm_module.tqdm
    maco_fv.tqdm = lambda iterable, *a, **k: original(iterable, *a, **{**k, "disable": True})
    guard = Guard(args["quiet_budget_s"])
    render_one(0, 2)  # warm-up
    runs, probe = one_at_a_time("horama", "horama maco", "horama_maco", args, guard, render_one, len(atlas.seeds), out)
    return {"side": "horama", "threads": torch.get_num_threads(), "horama": horama.__version__, "horama_file": horama.__file__,
            "spectrum": spectrum_from, "value_range": value_range, "probe": probe,
            "runs": runs, "noise": guard.report()}  # fmt: skip


SIDES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {"ours": side_ours, "lucent": side_lucent, "horama": side_horama}

if __name__ == "__main__":
    mode, raw_args = sys.argv[1], json.loads(sys.argv[2])
    Path(raw_args["out"]).mkdir(parents=True, exist_ok=True)
    result = SIDES[mode](raw_args)
    print(json.dumps(result))
