"""The command line as a new user meets it: flag values, the packaged default, a wheel outside the repository."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from atlas.config import load_config, packaged_default_config
from atlas.dependency_warnings import silence_dependency_warnings
from atlas_pipelines.commands.cli import main

REPO = Path(__file__).resolve().parents[1]
QUICK = [
    "--until",
    "collect",
    "--scheduler",
    "sync",
    "--set",
    "collect.n_images=6",
    "--set",
    "collect.shard_size=3",
    "--set",
    "model.input_size=64",
]


def test_flag_values_go_into_the_config_as_the_strings_they_are(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # `--layer 3` once went through YAML, became the number 3 and failed config validation.
    assert main(["run", "--layer", "3", "--name", "2024", "--out", str(tmp_path), "--scheduler", "sync"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "layer '3' is not a layer" in err and "blocks" in err, err  # a name, valid ones listed
    assert (tmp_path / "2024").is_dir(), "--name 2024 names the bundle folder 2024"
    assert main(["run", "--images", "yes", "--name", "yes", "--out", str(tmp_path), "--scheduler", "sync"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'yes'" in err, err  # a source string, not the boolean true


def test_the_default_config_ships_inside_the_package() -> None:
    shipped = packaged_default_config()
    assert shipped.is_file() and shipped.parent.parent == REPO / "atlas"
    assert (REPO / "configs" / "default.yaml").resolve() == shipped.resolve(), "configs/default.yaml is that same file"
    config = load_config(shipped)
    assert config.name == "default" and config.grid.sizes == (10, 20, 40) and config.collect.positions_per_image == 4


def test_only_the_dependency_warnings_a_user_cannot_act_on_are_silenced() -> None:
    deprecated = "`torch.jit.script` is deprecated. Please switch to `torch.compile` or `torch.export`."
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        silence_dependency_warnings()  # what the command and each worker do at start-up
        warnings.warn_explicit(deprecated, FutureWarning, "_script.py", 1, module="torch.jit._script")
        warnings.warn_explicit(deprecated, FutureWarning, "mine.py", 1, module="mine")  # the same words from elsewhere
        warnings.warn_explicit("image is 200 MP: decompression bomb?", UserWarning, "decode.py", 1, module="atlas.images.decode")
        before = len(warnings.filters)
        silence_dependency_warnings()
        assert len(warnings.filters) == before, "called by every task: the filters do not pile up"
    assert [str(w.message) for w in shown] == [deprecated, "image is 200 MP: decompression bomb?"]


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def test_a_wheel_in_a_fresh_venv_runs_the_documented_default_in_an_empty_folder(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(REPO)],
        check=True, capture_output=True, env=_clean_env(),
    )  # fmt: skip
    (wheel,) = wheels.glob("activation_atlas-*.whl")
    venv = tmp_path / "venv"
    # The dependencies (torch alone is gigabytes) come from this interpreter's site-packages; atlas itself only from the wheel.
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed", str(wheel)],
        check=True, capture_output=True, env=_clean_env(),
    )  # fmt: skip

    empty = tmp_path / "empty"
    empty.mkdir()
    where = subprocess.run(
        [str(python), "-c", "import atlas, atlas_pipelines, atlas.config as c; print(atlas.__file__, atlas_pipelines.__file__, c.packaged_default_config())"],
        cwd=empty, check=True, capture_output=True, text=True, env=_clean_env(),
    ).stdout.split()  # fmt: skip
    assert all(path.startswith(str(venv)) for path in where), f"the wheel's code, not the repository's: {where}"

    done = subprocess.run([str(venv / "bin" / "atlas"), "run", *QUICK], cwd=empty, capture_output=True, text=True, env=_clean_env())
    assert done.returncode == 0, done.stderr[-2000:]
    from_wheel = json.loads((empty / "outputs" / "default" / "manifest.json").read_text())

    editable_dir = tmp_path / "editable"
    editable_dir.mkdir()
    env = {**_clean_env(), "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "atlas_pipelines.commands.cli", "run", *QUICK], cwd=editable_dir, capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    from_editable = json.loads((editable_dir / "outputs" / "default" / "manifest.json").read_text())

    documented = load_config(REPO / "configs" / "default.yaml", [*QUICK[5::2], "scheduler.address=sync"]).model_dump(mode="json")
    assert from_wheel["config"] == from_editable["config"] == documented
    assert from_wheel["n_activations"] == from_editable["n_activations"] == 6 * 4
    assert from_wheel["versions"]["activation-atlas"] == from_editable["versions"]["activation-atlas"]
