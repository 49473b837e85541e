"""`atlas dictionary RUN_DIR`: add the layer's sparse dictionary to a finished bundle.

The bundle's own config with a ``dictionary`` section (and ``--set`` on top) runs through the ordinary stage loop:
every earlier stage is reused from its marker, the dictionary stage runs, and assemble rewrites the manifest.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from atlas.bundle import Bundle
from atlas.config import AtlasConfig, apply_assignment, check_files, validate_tree
from atlas.storage import Location


def dictionary_config(bundle: Bundle, assignments: list[tuple[str, Any]]) -> AtlasConfig:
    """The config the bundle ran with, written to this same folder, with a dictionary section and ``--set`` applied."""
    tree = json.loads(json.dumps(bundle.manifest.config))
    if not isinstance(tree.get("dictionary"), dict):
        tree["dictionary"] = {}  # present, so the stage runs; its keys take their defaults
    tree.setdefault("output", {}).update({"dir": str(bundle.root.parent), "name": bundle.root.name})
    for key, value in assignments:
        apply_assignment(tree, key, value)
    config: AtlasConfig = validate_tree(tree, AtlasConfig)
    return config


def add_dictionary(run_dir: str, assignments: list[tuple[str, Any]], log: Callable[[str], None] = print) -> Location:
    from atlas_pipelines.commands.run import run_atlas

    config = dictionary_config(Bundle(run_dir), assignments)
    check_files(config)
    return run_atlas(config, log=log)
