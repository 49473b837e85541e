"""Layout stage: fit PCA + UMAP on a sample in a worker, place the other rows in parallel chunks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from atlas.bundle import COORDS, WHITENING
from atlas.config import LayoutConfig
from atlas.errors import AtlasError
from atlas.layout import AtlasLayout, Whitening
from pipelines.context import RunInputs
from pipelines.executor import Executor
from pipelines.stage import Report, Stage, StageCall, file_fingerprint
from pipelines.worker_state import use_threads


def fit_layout_task(sample: np.ndarray, config: LayoutConfig, seed: int, threads: int) -> AtlasLayout:
    use_threads(threads)
    return AtlasLayout.from_config(config, seed).fit(sample)


def place_chunk_task(layout: AtlasLayout, chunk: np.ndarray, threads: int) -> np.ndarray:
    use_threads(threads)
    return layout.transform(chunk)


def compute_layout(executor: Callable[[], Executor], activation: np.ndarray, config: LayoutConfig, seed: int) -> np.ndarray:
    """Coordinates in [0, 1] for every row; rows outside the fit sample are placed by ``transform``."""
    n = len(activation)
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, size=min(n, config.fit_sample), replace=False))
    ex = executor()
    fitted: AtlasLayout = ex.submit(fit_layout_task, activation[sample], config, seed, ex.threads_per_task).result()
    coords = np.empty((n, 2), dtype=np.float32)
    coords[sample] = fitted.fitted_coords_
    rest = np.setdiff1d(np.arange(n), sample, assume_unique=True)
    if len(rest):
        fitted_ref = ex.scatter(fitted)
        pieces = [rest[i : i + config.chunk_size] for i in range(0, len(rest), config.chunk_size)]
        futures = {ex.submit(place_chunk_task, fitted_ref, activation[p], ex.threads_per_task): p for p in pieces}
        for future in tqdm(ex.as_completed(list(futures)), total=len(futures), desc="layout", unit="chunk"):
            coords[futures[future]] = future.result()
    return coords


# --- the stage ------------------------------------------------------------------------------------


def layout_settings(run: RunInputs) -> Any:
    given = run.config.layout.coords
    if given is not None and not Path(given).is_file():
        raise AtlasError(f"layout.coords '{given}': no such file; give a .npy of [N, 2] coordinates or remove the key")
    return [run.config.layout.model_dump(mode="json"), run.config.seed, file_fingerprint(given) if given else None]


def layout(call: StageCall) -> Report:
    """Coordinates for every row (UMAP, or ``layout.coords`` made elsewhere) and the renderer's whitening."""
    run = call.run
    config = run.config.layout
    activation = run.bundle.rows().activation
    if config.coords is not None:
        coords = given_coords(config.coords, len(activation))
    else:
        coords = compute_layout(run.executor, activation, config, run.config.seed)
    run.bundle.write_coords(coords)
    run.bundle.write_whitening(Whitening.from_config(config).fit(activation).matrix_)
    return {"coords": COORDS, "whitening": WHITENING}


def given_coords(path: Path, n_rows: int) -> np.ndarray:
    """``layout.coords``: a layout made elsewhere (``atlas compare`` aligns several), checked against the rows."""
    try:
        coords = np.load(path)
    except (OSError, ValueError) as err:
        raise AtlasError(f"layout.coords '{path}': cannot read it as .npy ({err})") from None
    if coords.shape != (n_rows, 2) or not np.isfinite(coords).all() or coords.min() < 0 or coords.max() > 1:
        raise AtlasError(f"layout.coords '{path}': expected finite [{n_rows}, 2] values in [0, 1] (one per row), got shape {coords.shape}")
    return coords.astype(np.float32)


LAYOUT = Stage("layout", reads=("collect",), settings=layout_settings, work=layout)
