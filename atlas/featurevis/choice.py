"""Render settings chosen from the data: render a few cells each way and keep what is most faithful.

Whether whitening helps depends on the model. It helps EfficientNet-Lite0's atlas reach the right cell, but the
same objective costs a 64-channel Fashion-MNIST CNN a fifth of its fidelity. No fixed default suits every model,
so a probe decides. It renders a small, fixed sample of cells under a few candidate settings, feeds the results
back and scores them as icon fidelity scores the real icons (top-1 rate plus mean cosine), plus, where the caller
measures it, the path check: the cosine, at earlier layers, of each icon with its cell's example patches other
than the first (accentuation starts from the first, so no candidate scores by copying it). The search goes one
setting at a time: the whitening mode first, then whether to add the retrieval term (each icon pushed away from
its neighbouring cells), then the cosine power, then the learning rate, then the parameterisation, and last four tries per icon instead of
one. Each step keeps the best so far, and a candidate replaces it only where it beats it by more than the probe's
own noise: one cell's worth of score (1 / cells, one icon reaching or missing its own cell), which is what the
last bits of another machine's floating point can flip in a chaotic optimisation. A smaller difference (dot 0.87
against off 0.88 mean cosine over 16 cells, 0.01) keeps the earlier candidate, so the defaults win unless
something clearly beats them, and the choice holds across machines.

The last two steps cost the most and help only where icons fall short, so they run only there: other
parameterisations (MaCo's phase-only spectrum, accentuation from each cell's best example) only where the best so
far misses the fidelity bar (probe top-1 below 0.9 or mean cosine below 0.8) or its icons are processed unlike
their examples (path-check cosine below PATH_BAR), and four tries only where its top-1
is below 0.9. A CNN whose fourier icons already reach their cells pays nothing for either.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from atlas.featurevis.fidelity import Fidelity

WHITEN_MODES = ("dot", "off", "full")  # probe order: the usual winner first, so a tie keeps it
DEFAULT_POWER, OTHER_POWERS = 4.0, (2.0,)
DEFAULT_RATE, OTHER_RATES = 0.05, (0.1,)
MORE_TRIES = 4
TRIES_ONLY_BELOW = 0.9  # probe top-1: four tries cost four times the render, worth it only where icons miss their cell
PARAMS = ("fourier", "maco", "accentuate")  # probe order: the default first, so a tie keeps it
PARAMS_ONLY_BELOW = (0.9, 0.8)  # probe top-1, mean cosine: the fidelity bar; another parameterisation only below it
PATH_BAR = 0.3  # probe path-check cosine: below it, the icons are processed unlike their examples; try another param


@dataclass(frozen=True)
class RenderSettings:
    """The settings a probe may choose; ``whiten`` is ``full``, ``dot`` or ``off``; ``contrast``: add the retrieval term;
    ``param``: the image parameterisation (one of :data:`PARAMS`)."""

    whiten: str
    cossim_power: float
    learning_rate: float
    contrast: bool = False
    tries: int = 1
    param: str = "fourier"


@dataclass(frozen=True)
class Trial:
    """One candidate's probe result; ``cells``: each probe cell's score (1 where its icon reaches its own cell, plus
    its cosine), in the same cell order for every candidate (empty in records read back: the choice is made)."""

    settings: RenderSettings
    top1: float
    mean_cosine: float
    path: float | None = None  # mean path-check cosine against held-out examples (None: not measured)
    cells: tuple[float, ...] = field(default=(), compare=False)

    @property
    def score(self) -> float:
        return self.top1 + self.mean_cosine + (self.path or 0.0)

    @classmethod
    def of(cls, settings: RenderSettings, scores: ProbeScores) -> Trial:
        fidelity = scores.fidelity
        per_cell = (fidelity.rank == 0).astype(float) + fidelity.cosine.astype(float)
        path = None
        if scores.path is not None and np.isfinite(scores.path).any():
            path = float(np.nanmean(scores.path))
            per_cell = per_cell + np.nan_to_num(scores.path.astype(float), nan=0.0)
        return cls(settings, fidelity.top1, fidelity.mean_cosine, path, tuple(float(v) for v in per_cell))

    def beats(self, other: Trial) -> bool:
        """Whether this trial's score exceeds ``other``'s by more than one probe cell's worth (1 / cells: one icon
        reaching or missing its own cell), the least a re-run on another machine can change; without per-cell
        scores, any higher score."""
        margin = self.score - other.score
        if len(self.cells) != len(other.cells) or not self.cells:
            return margin > 0
        return margin > 1.0 / len(self.cells)

    def to_json(self) -> dict[str, Any]:
        record = {**asdict(self.settings), "top1": round(self.top1, 4), "mean_cosine": round(self.mean_cosine, 4)}
        if self.path is not None:
            record["path_check"] = round(self.path, 4)
        if self.cells:  # each probe cell's score, so anyone can redo the noise test
            record["cell_scores"] = [round(v, 4) for v in self.cells]
        return record

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> Trial:
        settings = RenderSettings(
            record["whiten"],
            float(record["cossim_power"]),
            float(record["learning_rate"]),
            bool(record.get("contrast", False)),
            int(record.get("tries", 1)),
            str(record.get("param", "fourier")),  # records from before the probe chose it: fourier was the only one probed
        )
        path = record.get("path_check")
        cells = tuple(float(v) for v in record.get("cell_scores", ()))
        return cls(settings, float(record["top1"]), float(record["mean_cosine"]), None if path is None else float(path), cells)

    def meets(self, bar: tuple[float, float]) -> bool:
        """Whether this trial's top-1 and mean cosine both reach ``bar``."""
        return self.top1 >= bar[0] and self.mean_cosine >= bar[1]


@dataclass(frozen=True)
class ProbeScores:
    """A candidate's probe cells scored: their fidelity at the atlas layer and, where measured, each cell's path-check
    cosine against its held-out example patches (NaN for a cell without one)."""

    fidelity: Fidelity
    path: np.ndarray | None = None


def candidate_steps(
    whiten: str,
    cossim_power: float | str,
    learning_rate: float | str,
    contrast: bool | str = False,
    tries: int | str = 1,
    param: str = "fourier",
) -> list[tuple[str, list[Any]]]:
    """Per setting, the values to try (one value: fixed by the config, nothing to probe), in the order tried."""
    return [
        ("whiten", list(WHITEN_MODES) if whiten == "auto" else [whiten]),
        ("contrast", [False, True] if contrast == "auto" else [bool(contrast)]),
        ("cossim_power", [DEFAULT_POWER, *OTHER_POWERS] if cossim_power == "auto" else [float(cossim_power)]),
        ("learning_rate", [DEFAULT_RATE, *OTHER_RATES] if learning_rate == "auto" else [float(learning_rate)]),
        ("param", list(PARAMS) if param == "auto" else [param]),
        ("tries", [1, MORE_TRIES] if tries == "auto" else [int(tries)]),
    ]


def first_candidates(steps: Sequence[tuple[str, Sequence[Any]]]) -> RenderSettings:
    """The settings a probe starts from, each step's first value (the config's where given): what a caller without
    a probe uses. ``steps`` as :func:`candidate_steps` gives them."""
    return RenderSettings(**{name: values[0] for name, values in steps})


def _pays(step: str, best: Trial | None) -> bool:
    """Whether a costly step is worth its renders: only where the best so far falls short (unknown: try it)."""
    if best is None:
        return True
    if step == "tries":
        return best.top1 < TRIES_ONLY_BELOW
    if step == "param":
        return not best.meets(PARAMS_ONLY_BELOW) or (best.path is not None and best.path < PATH_BAR)
    return True


def choose_settings(
    whiten: str,
    cossim_power: float | str,
    learning_rate: float | str,
    evaluate: Callable[[list[RenderSettings]], list[ProbeScores]],
    contrast: bool | str = False,
    tries: int | str = 1,
    param: str = "fourier",
) -> tuple[RenderSettings, list[Trial]]:
    """One setting at a time, keep the best so far unless a candidate beats it by more than the probe's noise (of
    several that do, the highest score); ``evaluate`` scores a list of candidates at once (each one's probe cells
    as fidelity scores them, in the same cell order), so the candidates of one step can render side by side.

    Nothing ``auto``: the config's settings, with no probe at all.
    """
    steps = candidate_steps(whiten, cossim_power, learning_rate, contrast, tries, param)
    best = first_candidates(steps)
    if all(len(values) == 1 for _, values in steps):
        return best, []
    trials: list[Trial] = []
    tried: dict[RenderSettings, Trial] = {}
    for name, values in steps:
        if len(values) == 1 or not _pays(name, tried.get(best)):
            continue
        candidates = [replace(best, **{name: value}) for value in values]
        new = [c for c in candidates if c not in tried]
        for settings, scores in zip(new, evaluate(new) if new else [], strict=True):
            tried[settings] = Trial.of(settings, scores)
            trials.append(tried[settings])
        incumbent = tried[best]
        winners = [tried[c] for c in candidates if c != best and tried[c].beats(incumbent)]
        if winners:
            best = max(winners, key=lambda t: t.score).settings  # max keeps the first of equal scores
    return best, trials


def probe_cells(cell_counts: Sequence[int], per_grid: int, seed: int) -> list[tuple[int, list[int]]]:
    """Which cells a probe renders: up to ``per_grid`` of the coarsest and of the finest grid, spread evenly.

    Returns (grid position in ``cell_counts``, cell indices). Evenly spaced (offset by the seed) rather than random,
    so the sample spans the layout and a re-run picks the same cells.
    """
    chosen: list[tuple[int, list[int]]] = []
    levels = sorted({0, len(cell_counts) - 1}) if cell_counts else []
    for level in levels:
        count = cell_counts[level]
        if count == 0:
            continue
        take = min(per_grid, count)
        offset = seed % max(count // take, 1)
        chosen.append((level, [offset + (k * count) // take for k in range(take)]))
    return chosen


__all__ = [
    "PARAMS",
    "PARAMS_ONLY_BELOW",
    "PATH_BAR",
    "ProbeScores",
    "RenderSettings",
    "Trial",
    "candidate_steps",
    "choose_settings",
    "first_candidates",
    "probe_cells",
]
