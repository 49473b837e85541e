"""Run configuration: YAML validated once at the edge, then trusted inside.

One module per job: the sections of the schema (``inputs``, ``layout``, ``render``, ``output``, ``classes``,
``training``, and ``schema`` for the whole), ``limits`` (bounds and name lists, plain Python), ``loading``
(YAML, the packaged default, ``--set``), ``messages`` (a validation error as one line) and ``files`` (disk checks).
Names load on first use, so reading ``atlas.config.limits`` costs no pydantic or YAML.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from atlas.config.classes import ClassesConfig as ClassesConfig
    from atlas.config.classes import PatchConfig as PatchConfig
    from atlas.config.dictionary import DictionaryConfig as DictionaryConfig
    from atlas.config.files import check_files as check_files
    from atlas.config.files import check_model_files as check_model_files
    from atlas.config.inputs import CollectConfig as CollectConfig
    from atlas.config.inputs import ImagesConfig as ImagesConfig
    from atlas.config.inputs import ModelConfig as ModelConfig
    from atlas.config.layout import GridConfig as GridConfig
    from atlas.config.layout import LayoutConfig as LayoutConfig
    from atlas.config.limits import ALL_ACTIVATIONS as ALL_ACTIVATIONS
    from atlas.config.limits import AUTO_STEPS as AUTO_STEPS
    from atlas.config.limits import MAX_BATCH as MAX_BATCH
    from atlas.config.limits import MAX_CANVAS as MAX_CANVAS
    from atlas.config.limits import MAX_COUNT as MAX_COUNT
    from atlas.config.limits import MAX_GRID as MAX_GRID
    from atlas.config.limits import MAX_ICON as MAX_ICON
    from atlas.config.limits import MAX_INPUT_SIZE as MAX_INPUT_SIZE
    from atlas.config.limits import MAX_SEED as MAX_SEED
    from atlas.config.limits import MAX_SHARD_ROWS as MAX_SHARD_ROWS
    from atlas.config.limits import RENDER_BATCH as RENDER_BATCH
    from atlas.config.limits import UMAP_METRICS as UMAP_METRICS
    from atlas.config.loading import apply_assignment as apply_assignment
    from atlas.config.loading import load_config as load_config
    from atlas.config.loading import packaged_default_config as packaged_default_config
    from atlas.config.loading import parse_assignment as parse_assignment
    from atlas.config.loading import read_yaml as read_yaml
    from atlas.config.loading import validate_tree as validate_tree
    from atlas.config.messages import short_repr as short_repr
    from atlas.config.output import OutputConfig as OutputConfig
    from atlas.config.output import SchedulerConfig as SchedulerConfig
    from atlas.config.render import PathCheckConfig as PathCheckConfig
    from atlas.config.render import RenderConfig as RenderConfig
    from atlas.config.render import TilesConfig as TilesConfig
    from atlas.config.schema import AtlasConfig as AtlasConfig
    from atlas.config.schema import ExperimentConfig as ExperimentConfig
    from atlas.config.section import Section as Section
    from atlas.config.training import CompareConfig as CompareConfig
    from atlas.config.training import TrainConfig as TrainConfig

# Each public name and the module it lives in.
_HOMES = {
    "ClassesConfig": "classes",
    "PatchConfig": "classes",
    "DictionaryConfig": "dictionary",
    "check_files": "files",
    "check_model_files": "files",
    "CollectConfig": "inputs",
    "ImagesConfig": "inputs",
    "ModelConfig": "inputs",
    "GridConfig": "layout",
    "LayoutConfig": "layout",
    "ALL_ACTIVATIONS": "limits",
    "AUTO_STEPS": "limits",
    "MAX_BATCH": "limits",
    "MAX_CANVAS": "limits",
    "MAX_COUNT": "limits",
    "MAX_GRID": "limits",
    "MAX_ICON": "limits",
    "MAX_INPUT_SIZE": "limits",
    "MAX_SEED": "limits",
    "MAX_SHARD_ROWS": "limits",
    "RENDER_BATCH": "limits",
    "UMAP_METRICS": "limits",
    "apply_assignment": "loading",
    "load_config": "loading",
    "packaged_default_config": "loading",
    "parse_assignment": "loading",
    "read_yaml": "loading",
    "validate_tree": "loading",
    "short_repr": "messages",
    "OutputConfig": "output",
    "SchedulerConfig": "output",
    "PathCheckConfig": "render",
    "RenderConfig": "render",
    "TilesConfig": "render",
    "AtlasConfig": "schema",
    "ExperimentConfig": "schema",
    "Section": "section",
    "CompareConfig": "training",
    "TrainConfig": "training",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    """``from atlas.config import AtlasConfig`` loads the schema (pydantic, YAML) only when a name from it is asked for."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'atlas.config' has no attribute {name!r}")
    value = getattr(import_module(f"atlas.config.{home}"), name)
    globals()[name] = value
    return value
