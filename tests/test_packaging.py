"""What a wheel puts in site-packages, and what importing the library pulls in."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Files a package needs besides its modules (pyproject's package-data); a glob there that misses one fails below.
DATA_FOLDERS = ("atlas/viewer/assets", "atlas/compare/assets", "atlas/configs")


def _wheel_files(wheel: Path) -> set[str]:
    """The files the wheel installs, as its RECORD lists them (what pip writes into site-packages)."""
    with zipfile.ZipFile(wheel) as archive:
        (record,) = [name for name in archive.namelist() if name.endswith(".dist-info/RECORD")]
        rows = csv.reader(io.StringIO(archive.read(record).decode()))
        return {row[0] for row in rows if row}


def _installed_name(source: Path) -> str:
    """Where a repository file lands in site-packages: pipelines/ installs as atlas_pipelines/."""
    relative = source.relative_to(REPO).as_posix()
    return "atlas_pipelines/" + relative.removeprefix("pipelines/") if relative.startswith("pipelines/") else relative


def _project_sources() -> list[Path]:
    modules = [path for folder in ("atlas", "pipelines") for path in (REPO / folder).rglob("*.py") if "__pycache__" not in path.parts]
    data = [path for folder in DATA_FOLDERS for path in (REPO / folder).rglob("*") if path.is_file()]
    return [*modules, *data, REPO / "atlas" / "py.typed"]


def test_a_wheel_installs_only_this_projects_names(built_wheel: Path) -> None:
    # A top-level "pipelines" in site-packages would clash with other distributions that use the name.
    top_level = {name.split("/")[0] for name in _wheel_files(built_wheel)}
    dist_info = {name for name in top_level if name.endswith(".dist-info")}
    assert [name.removesuffix(".dist-info") for name in dist_info] == [built_wheel.name.split("-py")[0]], dist_info
    assert top_level - dist_info == {"atlas", "atlas_pipelines"}, top_level


def test_a_wheel_holds_every_module_and_asset_of_the_repository(built_wheel: Path) -> None:
    # pyproject lists every package by hand (package-dir renames pipelines/); a package left off that list is missing here.
    files = _wheel_files(built_wheel)
    missing = sorted(name for name in map(_installed_name, _project_sources()) if name not in files)
    assert not missing, f"in the repository but not in the wheel (add the package to pyproject's packages or package-data): {missing}"


def test_importing_featurevis_and_bundle_pulls_in_no_configuration() -> None:
    # The icon and bundle code take plain arguments, so a notebook or another tool can use them without the config schema.
    check = "import atlas.featurevis, atlas.bundle, sys; print(sorted(m for m in ('pydantic','yaml') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout


def test_the_config_at_the_edge_contract_covers_every_library_module() -> None:
    """lint-imports checks only the modules a contract names: a new library module must be named there too."""
    import tomllib

    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    (edge,) = [c for c in contracts if c["id"] == "config-at-the-edge"]
    library = {
        f"atlas.{path.stem if path.is_file() else path.name}"
        for path in (REPO / "atlas").iterdir()
        if (path.suffix == ".py" and path.stem != "__init__") or (path / "__init__.py").is_file()
    }
    assert library - {"atlas.config"} == set(edge["source_modules"])
