"""Render settings chosen by a probe: the search, the objective it picks from, and what a run records."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from atlas.bundle import patch_file
from atlas.featurevis import Direction, Log, Objective, Retrieval
from atlas.featurevis.choice import (
    PARAMS_ONLY_BELOW,
    PATH_BAR,
    ProbeScores,
    RenderSettings,
    Trial,
    candidate_steps,
    choose_settings,
    first_candidates,
    probe_cells,
)
from atlas.featurevis.fidelity import Fidelity
from atlas_pipelines.commands.cli import main


def scored(top1: float, cosine: float, cells: int = 1000) -> ProbeScores:
    """A probe result of many cells: the first ``top1`` share reach their own cell, every cosine is ``cosine`` (so
    any difference between two such results is far above the probe's noise)."""
    hits = round(top1 * cells)
    return ProbeScores(Fidelity(np.full(cells, cosine, np.float32), np.array([0] * hits + [1] * (cells - hits))))


def test_nothing_auto_means_no_probe() -> None:
    def evaluate(candidates: list[RenderSettings]) -> list[ProbeScores]:
        raise AssertionError("probed although every setting was given")

    settings, trials = choose_settings("full", 3.0, 0.02, evaluate)
    assert settings == RenderSettings("full", 3.0, 0.02) and trials == []


def test_search_keeps_the_best_of_each_setting_and_ties_keep_the_default() -> None:
    table = {("dot", 4.0, 0.05, False): (0.9, 0.80), ("off", 4.0, 0.05, False): (0.9, 0.85), ("full", 4.0, 0.05, False): (1.0, 0.60),
             ("off", 4.0, 0.05, True): (0.95, 0.84), ("off", 2.0, 0.05, True): (0.95, 0.84),
             ("off", 4.0, 0.1, True): (0.95, 0.86)}  # fmt: skip
    seen: list[tuple[str, float, float, bool]] = []
    batches: list[int] = []

    def evaluate(candidates: list[RenderSettings]) -> list[ProbeScores]:
        batches.append(len(candidates))
        seen.extend((s.whiten, s.cossim_power, s.learning_rate, s.contrast) for s in candidates)
        return [scored(*table[seen[k]]) for k in range(len(seen) - len(candidates), len(seen))]

    settings, trials = choose_settings("auto", "auto", "auto", evaluate, contrast="auto")
    # off beats dot and full (1.75 > 1.70 > 1.60); the retrieval term wins (1.79); power 2 only ties 4, so 4 stays;
    # lr 0.1 wins (1.81)
    assert settings == RenderSettings("off", 4.0, 0.1, True)
    assert seen == [("dot", 4.0, 0.05, False), ("off", 4.0, 0.05, False), ("full", 4.0, 0.05, False),
                    ("off", 4.0, 0.05, True), ("off", 2.0, 0.05, True), ("off", 4.0, 0.1, True)]  # fmt: skip
    assert [t.settings for t in trials] == [RenderSettings(*k) for k in seen]  # each tried once, in order
    assert batches == [3, 1, 1, 1]  # each step's new candidates scored together (the best so far is not re-run)


def test_four_tries_are_probed_only_where_the_best_icons_miss_their_cell() -> None:
    def search(top1: float) -> tuple[RenderSettings, list[int]]:
        seen: list[int] = []

        def evaluate(candidates: list[RenderSettings]) -> list[ProbeScores]:
            seen.extend(s.tries for s in candidates)
            return [scored(top1 + (0.05 if s.tries == 4 else 0.0), 0.9) for s in candidates]

        settings, _ = choose_settings("off", "auto", 0.05, evaluate, contrast=False, tries="auto")
        return settings, seen

    assert search(0.95) == (RenderSettings("off", 4.0, 0.05, False, 1), [1, 1])  # good enough: never four times the cost
    assert search(0.6) == (RenderSettings("off", 4.0, 0.05, False, 4), [1, 1, 4])


def test_other_parameterisations_are_probed_only_where_the_best_icons_miss_the_fidelity_bar() -> None:
    def search(top1: float, cosine: float, better: str = "maco") -> tuple[RenderSettings, list[str]]:
        seen: list[str] = []

        def evaluate(candidates: list[RenderSettings]) -> list[ProbeScores]:
            seen.extend(s.param for s in candidates)
            return [scored(top1, cosine + (0.1 if s.param == better else 0.0)) for s in candidates]

        settings, _ = choose_settings("off", "auto", 0.05, evaluate, contrast=False, param="auto")
        return settings, seen

    assert search(1.0, 0.85) == (RenderSettings("off", 4.0, 0.05), ["fourier", "fourier"])  # at the bar: fourier, no more renders
    assert search(1.0, 0.7) == (RenderSettings("off", 4.0, 0.05, param="maco"), ["fourier", "fourier", "maco", "accentuate"])
    assert search(0.8, 0.9, better="accentuate")[0].param == "accentuate"  # top-1 below 0.9 misses the bar too
    assert search(0.8, 0.9, better="none")[0].param == "fourier"  # a tie keeps fourier


def test_a_candidate_must_beat_the_best_so_far_by_more_than_one_probe_cells_worth() -> None:
    """The default atlas's own case: dot 0.87 against off 0.88 mean cosine over 16 cells, top-1 1.00 both: 0.01 is
    less than one cell's worth (1/16), so dot stays. One more icon reaching its cell, or 0.08 more cosine on every
    cell, is more, and switches."""
    rng = np.random.default_rng(0)
    dot = rng.uniform(0.80, 0.94, size=16).astype(np.float32)
    near = dot + np.float32(0.01)
    clear = dot + np.float32(0.08)
    misses = np.zeros(16, np.int64)
    misses[:3] = 1  # dot's icons miss 3 cells of 16
    for off, off_misses, expected in ((near, misses, "dot"), (clear, misses, "off"), (near, misses[::-1] * 0 + (np.arange(16) < 1), "off")):

        def evaluate(candidates: list[RenderSettings], off: np.ndarray = off, om: np.ndarray = off_misses) -> list[ProbeScores]:
            return [ProbeScores(Fidelity(off, om.astype(np.int64)) if s.whiten == "off" else Fidelity(dot, misses)) for s in candidates]

        settings, trials = choose_settings("auto", 4.0, 0.05, evaluate)
        assert settings.whiten == expected, (expected, [t.to_json() for t in trials])
    record = trials[1].to_json()
    assert len(record["cell_scores"]) == 16 and Trial.from_json(record).to_json() == record


def test_the_path_check_counts_and_sends_the_probe_to_other_parameterisations_below_its_bar() -> None:
    """Equal fidelity everywhere: the path term decides, and a path cosine under PATH_BAR opens the param step."""
    cells = 16
    fidelity = Fidelity(np.full(cells, 0.85, np.float32), np.zeros(cells, np.int64))
    path = {"fourier": 0.15, "maco": 0.22, "accentuate": 0.6}
    seen: list[str] = []

    def evaluate(candidates: list[RenderSettings]) -> list[ProbeScores]:
        seen.extend(s.param for s in candidates)
        noise = np.random.default_rng(len(seen)).normal(0.0, 0.02, cells)
        return [ProbeScores(fidelity, path[s.param] + noise) for s in candidates]

    settings, trials = choose_settings("off", "auto", 0.05, evaluate, contrast=False, param="auto")
    assert settings.param == "accentuate" and seen == ["fourier", "fourier", "maco", "accentuate"]
    assert trials[-1].path == pytest.approx(0.6, abs=0.02) and trials[-1].to_json()["path_check"] == round(trials[-1].path, 4)
    assert Trial.from_json(trials[-1].to_json()).to_json() == trials[-1].to_json()
    path["fourier"] = 0.35  # processed like the examples already: the costly step is skipped
    seen.clear()
    assert choose_settings("off", "auto", 0.05, evaluate, contrast=False, param="auto")[0].param == "fourier"
    assert seen == ["fourier", "fourier"]


def test_a_trial_record_carries_its_parameterisation_and_older_records_read_as_fourier() -> None:
    trial = Trial(RenderSettings("dot", 2.0, 0.1, True, 4, "accentuate"), 0.75, 0.8125)
    record = trial.to_json()
    assert record["param"] == "accentuate" and Trial.from_json(record) == trial
    del record["param"]
    assert Trial.from_json(record).settings.param == "fourier"
    every_step_auto = candidate_steps("auto", "auto", "auto", "auto", "auto", "auto")
    assert first_candidates(every_step_auto) == RenderSettings("dot", 4.0, 0.05, False, 1, "fourier")


def test_only_the_auto_settings_are_searched() -> None:
    seen: list[RenderSettings] = []

    def evaluate(candidates: list[RenderSettings]) -> list[ProbeScores]:
        seen.extend(candidates)
        return [scored(1.0, 0.5 + s.cossim_power / 100) for s in candidates]

    settings, _ = choose_settings("off", "auto", 0.2, evaluate)
    assert settings == RenderSettings("off", 4.0, 0.2) and {s.whiten for s in seen} == {"off"} and len(seen) == 2


def test_probe_cells_span_the_coarsest_and_the_finest_grid() -> None:
    chosen = probe_cells([58, 171, 463], 8, seed=3)
    assert [level for level, _ in chosen] == [0, 2]
    for level, rows in chosen:
        count = [58, 171, 463][level]
        assert len(rows) == 8 and len(set(rows)) == 8 and min(rows) >= 0 and max(rows) < count
        assert max(rows) - min(rows) > count // 2  # spread over the grid, not bunched
    assert probe_cells([5], 8, seed=0) == [(0, [0, 1, 2, 3, 4])]
    assert probe_cells([0, 0], 8, seed=0) == []
    assert probe_cells([40, 90], 8, seed=1) == probe_cells([40, 90], 8, seed=1)


def test_dot_mode_grows_along_the_whitened_vector_and_points_along_the_cells_own() -> None:
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(3, 6)).astype(np.float32)
    matrix = np.diag(rng.uniform(0.2, 3.0, size=6)).astype(np.float32)
    acts = torch.from_numpy(raw.copy())[:, :, None, None]  # activations that point exactly along the raw vectors
    dot = Direction.whitened(raw, matrix, cosine="raw", cossim_power=4.0)
    full = Direction.whitened(raw, matrix, cossim_power=4.0)
    whitened = raw @ matrix.T
    expected_dot = (raw * whitened).sum(axis=1)
    # cosine with the raw vector is 1, so the score is the whitened dot product itself
    assert torch.allclose(dot(acts, acts), torch.from_numpy(expected_dot), rtol=1e-5)
    assert (full(acts, acts) < dot(acts, acts)).all()  # the whitened cosine of these activations is below 1
    with pytest.raises(ValueError, match="cosine"):
        Direction.whitened(raw, matrix, cosine="sideways")


def test_retrieval_is_the_log_probability_of_the_own_cell_and_separates_near_neighbours() -> None:
    """Two cells 3 degrees apart: the direction objective alone is as happy with either; adding the retrieval term
    (as a sum of logs) moves each activation to its own cell's side, which is what fidelity's top-1 asks."""
    rng = np.random.default_rng(1)
    base = rng.normal(size=8)
    nudge = rng.normal(size=8)
    nudge -= nudge.dot(base) / base.dot(base) * base
    nudge *= np.tan(np.radians(3)) * np.linalg.norm(base) / np.linalg.norm(nudge)
    directions = np.stack([base + nudge, base - nudge, rng.normal(size=8)]).astype(np.float32)
    own = [0, 1]
    acts = torch.from_numpy(np.stack([base, base]).astype(np.float32))[:, :, None, None]  # halfway between the two
    retrieval = Retrieval(directions, own, temperature=0.02)
    unit = directions / np.linalg.norm(directions, axis=1, keepdims=True)
    logits = (np.stack([base, base]) / np.linalg.norm(base)) @ unit.T / 0.02
    expected = logits[[0, 1], own] - np.log(np.exp(logits).sum(axis=1))
    assert np.allclose(retrieval(acts, acts).numpy(), expected, atol=1e-4)

    def ranks(objective: Objective) -> np.ndarray:
        point = acts[:, :, 0, 0].clone().requires_grad_(True)
        optimiser = torch.optim.Adam([point], lr=0.01)
        for _ in range(200):
            optimiser.zero_grad()
            (-objective(point[:, :, None, None], point[:, :, None, None]).sum()).backward()
            optimiser.step()
        cosines = (point.detach().numpy() / np.linalg.norm(point.detach().numpy(), axis=1, keepdims=True)) @ unit.T
        return (cosines > cosines[[0, 1], own][:, None]).sum(axis=1)

    plain = Direction(directions[own], cossim_power=4.0)
    assert (ranks(plain) > 0).any()  # growing along its own direction, one ends nearer the other cell
    assert (ranks(Log(plain) + retrieval) == 0).all()
    with pytest.raises(ValueError, match="own rows"):
        Retrieval(directions, [3])


# --- in a run -----------------------------------------------------------------------------------------------------

SMALL = [
    "--scheduler", "sync",
    "--set", "model.input_size=96",
    "--set", "collect.positions_per_image=3",
    "--set", "grid.sizes=[2,4]",
    "--set", "grid.min_count=2",
    "--set", "layout.n_neighbors=8",
    "--set", "render.steps=16",
    "--set", "render.icon_size=48",
]  # fmt: skip
PROBE = ["--set", "render.probe_cells=2"]  # one cell of each grid: this small atlas has too few cells for the default 16
FIXED = ["--set", "render.whiten=off", "--set", "render.cossim_power=4", "--set", "render.learning_rate=0.05", "--set", "render.contrast=false",
         "--set", "render.tries=1"]  # fmt: skip


def _run(photo_folder: Path, out: Path, name: str, *extra: str) -> Path:
    assert main(["run", "--images", str(photo_folder), "--out", str(out), "--name", name, *SMALL, *extra]) == 0
    return out / name


@pytest.fixture(scope="module")
def runs(photo_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("choice")


def test_auto_settings_are_chosen_by_a_probe_recorded_and_kept_on_resume(
    photo_folder: Path, runs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _run(photo_folder, runs, "auto", *PROBE)
    render_report = json.loads((root / "manifest.json").read_text())["render"]
    trials = render_report["probe"]
    # 3 whitening modes, then with the retrieval term, 1 more power, 1 more rate, and 4 tries only below top-1 0.9
    assert render_report["chosen_by"] == "probe" and len(trials) in (6, 7)
    assert [t["whiten"] for t in trials[:3]] == ["dot", "off", "full"] and [t["contrast"] for t in trials[:4]] == [False] * 3 + [True]
    before_tries = max(trials[:6], key=lambda t: t["top1"] + t["mean_cosine"])
    assert (len(trials) == 7) == (before_tries["top1"] < 0.9) and all(t["tries"] == 1 for t in trials[:6])
    chosen = {k: render_report[k] for k in ("whiten", "cossim_power", "learning_rate", "contrast", "tries")}
    scores = {
        (t["whiten"], t["cossim_power"], t["learning_rate"], t["contrast"], t["tries"]): t["top1"]
        + t["mean_cosine"]
        + t.get("path_check", 0.0)
        for t in trials
    }
    # The search replaces its best only for a win of more than one probe cell's worth, and its best only rises, so
    # nothing it tried beats what it kept by more than that.
    margin = 1.0 / len(trials[0]["cell_scores"])
    assert max(scores.values()) <= scores[tuple(chosen.values())] + margin + 1e-3, (scores, chosen)
    saved = json.loads((root / "render" / "probe.json").read_text())
    counts = [len(json.loads((root / "levels" / str(g) / "grid.json").read_text())) for g in (2, 4)]
    assert sum(counts) >= 8  # enough cells to probe 2 (a probe takes at most a quarter of them)
    assert saved["chosen"] == chosen and saved["cells"] == 2 and min(counts) >= 1
    # A resumed render reuses the probe's choice instead of probing again.
    (root / ".stages" / "render.json").unlink()
    next((root / "levels" / "4" / "icons").glob(".batch-*.json")).unlink()
    capsys.readouterr()
    _run(photo_folder, runs, "auto", *PROBE)
    err = capsys.readouterr()
    assert "choosing render settings" not in err.out + err.err
    assert json.loads((root / "manifest.json").read_text())["render"]["probe"] == trials


def test_a_probed_parameterisation_is_recorded_and_the_recorded_settings_render_the_same_icons(photo_folder: Path, runs: Path) -> None:
    until = ["--until", "render", "--set", "render.param=auto"]
    root = _run(photo_folder, runs, "param", *PROBE, *until)
    report = json.loads((root / "manifest.json").read_text())["render"]
    trials = report["probe"]
    assert report["param"] in ("fourier", "maco", "accentuate") and all(t["param"] in ("fourier", "maco", "accentuate") for t in trials)
    fourier = [t for t in trials if t["param"] == "fourier"]
    # The param step comes after whitening, contrast, power and rate: it looks at the fourier settings kept by then.
    kept = tuple(report[k] for k in ("whiten", "cossim_power", "learning_rate", "contrast"))
    (incumbent,) = [
        t for t in fourier if t["tries"] == 1 and tuple(t[k] for k in ("whiten", "cossim_power", "learning_rate", "contrast")) == kept
    ]
    path = incumbent.get("path_check")
    misses_the_bar = (
        incumbent["top1"] < PARAMS_ONLY_BELOW[0]
        or incumbent["mean_cosine"] < PARAMS_ONLY_BELOW[1]
        or (path is not None and path < PATH_BAR)
    )
    assert {t["param"] for t in trials} == ({"fourier", "maco", "accentuate"} if misses_the_bar else {"fourier"})
    assert (root / "render" / "spectrum.npy").exists() == misses_the_bar, "maco's spectrum only where maco was tried"
    assert json.loads((root / "render" / "probe.json").read_text())["param"] == report["param"]
    icons = _icons(root, 4)
    # The recorded settings, given in the config, render the very same icons without a probe.
    recorded = [f"render.{k}={str(report[k]).lower()}" for k in ("whiten", "cossim_power", "learning_rate", "contrast", "tries", "param")]
    again = _run(photo_folder, runs, "param", *until, *(x for setting in recorded for x in ("--set", setting)))
    assert json.loads((again / "manifest.json").read_text())["render"]["chosen_by"] == "config"
    rendered = _icons(again, 4)
    assert rendered.keys() == icons.keys() and icons and all(np.array_equal(rendered[k], v) for k, v in icons.items())


def test_given_settings_skip_the_probe(photo_folder: Path, runs: Path) -> None:
    root = _run(photo_folder, runs, "fixed", *FIXED)
    report = json.loads((root / "manifest.json").read_text())["render"]
    assert report["chosen_by"] == "config" and report["probe"] == [] and not (root / "render" / "probe.json").exists()
    assert (report["whiten"], report["cossim_power"], report["learning_rate"]) == ("off", 4.0, 0.05)
    field = report["receptive_field"]
    assert field["image_size"] == 48 and not field["crops"]  # EfficientNet's blocks.4 sees nearly all of a 48 px icon
    assert not (root / "levels" / "2" / "views").exists()


def _icons(root: Path, grid: int, folder: str = "icons") -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p), np.float32) / 255 for p in sorted((root / "levels" / str(grid) / folder).glob("*.png"))}


def test_maco_with_alpha_and_accentuate_render_in_a_run(photo_folder: Path, runs: Path) -> None:
    if not (runs / "fixed" / "manifest.json").exists():  # run alone: make the fourier bundle it compares with
        _run(photo_folder, runs, "fixed", *FIXED)
    fourier_icons = _icons(runs / "fixed", 2)
    until = ["--until", "render", "--set", "grid.sizes=[2]"]
    maco_root = _run(photo_folder, runs, "maco", *FIXED, *until, "--set", "render.param=maco", "--set", "render.alpha=true")
    spectrum = np.load(maco_root / "render" / "spectrum.npy")
    assert spectrum.shape == (3, 48, 25) and np.isfinite(spectrum).all() and (spectrum[:, 0, 1] > spectrum[:, 20, 20]).all()  # 1/f-like
    icons, alphas = _icons(maco_root, 2), _icons(maco_root, 2, "alpha")
    assert icons.keys() == alphas.keys() == fourier_icons.keys() and icons
    for name, alpha in alphas.items():
        assert alpha.shape == (48, 48) and alpha.max() == 1.0 and alpha.std() > 0.05  # a map, not a constant
        assert np.abs(icons[name] - fourier_icons[name]).mean() > 0.02  # another parameterisation, other pixels
    report = json.loads((maco_root / "manifest.json").read_text())["render"]
    assert report["param"] == "maco" and report["alpha"] is True

    accent_root = _run(photo_folder, runs, "accent", *FIXED, *until, "--set", "render.param=accentuate")
    cells = json.loads((accent_root / "levels" / "2" / "grid.json").read_text())
    starts = []
    for cell in cells:
        first = cell["examples"][0]
        patch = Image.open(accent_root / patch_file(first["image_id"], first["y"], first["x"])).convert("RGB")
        starts.append(np.asarray(patch.resize((48, 48), Image.Resampling.BICUBIC), np.float32) / 255)
    accented = _icons(accent_root, 2)
    for n, cell in enumerate(cells):
        icon = accented[Path(cell["icon"]).name]
        own = np.abs(icon - starts[n]).mean()
        assert own < 0.1 and all(own < np.abs(icon - other).mean() for k, other in enumerate(starts) if k != n)


def test_an_atlas_too_small_to_probe_takes_the_usual_defaults(photo_folder: Path, runs: Path) -> None:
    root = _run(photo_folder, runs, "tiny", "--until", "render", "--set", "grid.sizes=[2]")
    report = json.loads((root / "manifest.json").read_text())["render"]
    assert report["chosen_by"] == "default" and report["probe"] == []
    usual = {"whiten": "dot", "cossim_power": 4.0, "learning_rate": 0.05, "contrast": False, "tries": 1}
    assert {k: report[k] for k in usual} == usual


def test_with_param_auto_the_render_key_holds_proximity_which_changes_icons_wherever_accentuate_is_chosen() -> None:
    from types import SimpleNamespace

    from atlas.config import AtlasConfig, RenderConfig
    from atlas_pipelines.stages.render import render_settings

    def key(**render: object) -> dict:
        run = SimpleNamespace(config=AtlasConfig(render=RenderConfig(**render)), device=torch.device("cpu"))
        return render_settings(run)[0]  # type: ignore[arg-type]

    assert "proximity" not in key() and key(param="auto")["proximity"] == 10.0
    assert key(param="auto", proximity=3.0) != key(param="auto") and key(param="auto") != key()
    assert RenderConfig(param="auto").probed()[-2:] == ["param", "tries"] and "param" not in RenderConfig().probed()


def test_auto_steps_halve_views_only_on_a_canvas_that_can_take_it() -> None:
    """64 steps, the first 32 at half size, from a 64 px canvas up; a 28 px canvas keeps 128 full-size steps (at 64 a
    Fashion-MNIST CNN's icons missed their cells: top-1 0.50 on tests/test_fashion.py's coarse grid)."""
    from atlas.config import RenderConfig

    default = RenderConfig()
    assert (default.steps_on(80), default.coarse_steps_on(80)) == (64, 32)
    assert (default.steps_on(64), default.coarse_steps_on(64)) == (64, 32)
    assert (default.steps_on(28), default.coarse_steps_on(28)) == (128, 0)
    assert RenderConfig(steps=100).coarse_steps_on(80) == 50 and RenderConfig(steps=100).coarse_steps_on(28) == 0
    assert RenderConfig(coarse_steps=100).coarse_steps_on(80) == 64, "never more than the steps"
    assert RenderConfig(steps=10, coarse_steps=0).coarse_steps_on(80) == 0
    with pytest.raises(ValueError, match="coarse_steps = 20 is more than steps = 10"):
        RenderConfig(steps=10, coarse_steps=20)
