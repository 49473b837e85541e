"""The command line as a new user meets it: flag values, the packaged default, a wheel outside the repository."""

from __future__ import annotations

import json
import site
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


def _warnings(stderr: str) -> list[str]:
    return [line for line in stderr.replace("\r", "\n").splitlines() if "Warning" in line or "warnings.warn" in line]


def test_python_m_atlas_pipelines_exits_with_the_command_s_status() -> None:
    """``python -m atlas_pipelines`` is the ``atlas`` command: a user error is one line and a non-zero exit, as from the script."""
    done = subprocess.run([sys.executable, "-m", "atlas_pipelines", "layers", "no-such-model"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr and done.stderr.strip().count("\n") == 0, done.stderr


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


def _site_packages_of_this_interpreter() -> list[str]:
    """Where this interpreter's dependencies live: its venv's site-packages inside a venv, the system's outside one.

    A nested ``venv --system-site-packages`` would see the base interpreter's packages instead, which inside a venv
    lack torch and every other dependency.
    """
    folders = [*site.getsitepackages(), *([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])]
    return [folder for folder in folders if Path(folder).is_dir()]


def _where_atlas_imports_from(python: Path | str, cwd: Path, env: dict[str, str]) -> list[str]:
    check = "import atlas, atlas_pipelines, atlas.config as c; print(atlas.__file__, atlas_pipelines.__file__, c.packaged_default_config())"
    return subprocess.run([str(python), "-c", check], cwd=cwd, check=True, capture_output=True, text=True, env=env).stdout.split()


def test_a_wheel_in_a_fresh_venv_runs_the_documented_default_in_an_empty_folder(
    tmp_path: Path, built_wheel: Path, outside_env: dict[str, str]
) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed", str(built_wheel)],
        check=True, capture_output=True, env=outside_env,
    )  # fmt: skip
    # The dependencies (torch alone is gigabytes) come from this interpreter's site-packages, after the venv's own, so
    # atlas itself comes only from the wheel. A .pth file adds folders to the path without running their own .pth files,
    # so an editable install of atlas in this interpreter stays out of the venv.
    (venv_site,) = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], check=True, capture_output=True, text=True
    ).stdout.split()
    (Path(venv_site) / "dependencies-of-the-test-interpreter.pth").write_text("\n".join(_site_packages_of_this_interpreter()) + "\n")

    empty = tmp_path / "empty"
    empty.mkdir()
    where = _where_atlas_imports_from(python, empty, outside_env)
    assert all(path.startswith(str(venv)) for path in where), f"the wheel's code, not the repository's: {where}"

    done = subprocess.run([str(venv / "bin" / "atlas"), "run", *QUICK], cwd=empty, capture_output=True, text=True, env=outside_env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not _warnings(done.stderr), "a run prints no warning the user cannot act on"
    from_wheel = json.loads((empty / "outputs" / "default" / "manifest.json").read_text())

    # The repository's code as it stands, whatever (if anything) is installed: pipelines/ imports as atlas_pipelines.
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / "atlas").symlink_to(REPO / "atlas")
    (checkout / "atlas_pipelines").symlink_to(REPO / "pipelines")
    env = {**outside_env, "PYTHONPATH": str(checkout)}
    editable_dir = tmp_path / "editable"
    editable_dir.mkdir()
    where = _where_atlas_imports_from(sys.executable, editable_dir, env)
    assert all(path.startswith(str(checkout)) for path in where), f"the repository's code, not an installed one: {where}"
    done = subprocess.run(
        [sys.executable, "-m", "atlas_pipelines.commands.cli", "run", *QUICK], cwd=editable_dir, capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert not _warnings(done.stderr)
    from_editable = json.loads((editable_dir / "outputs" / "default" / "manifest.json").read_text())

    documented = load_config(REPO / "configs" / "default.yaml", [*QUICK[5::2], "scheduler.address=sync"]).model_dump(mode="json")
    assert from_wheel["config"] == from_editable["config"] == documented
    assert from_wheel["n_activations"] == from_editable["n_activations"] == 6 * 4
    assert from_wheel["versions"]["activation-atlas"] == from_editable["versions"]["activation-atlas"]
