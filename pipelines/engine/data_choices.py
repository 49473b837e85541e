"""Settings the image set decides: positions per image (``collect.target_rows``) and grid sizes (``grid.fit_to_rows``).

Decided once on the driver, after the images are listed and before any stage, from the number of images and the
layer's map, so every stage (and its key) sees plain values: an image set that reaches the targets keeps the
configured values and the keys it always had. The rows are planned ones (images x positions per image), known before
collection; unreadable images leave fewer, and a grid left without cells then says so in its manifest note.
"""

from __future__ import annotations

from typing import Any

from atlas.collect.sampling import interior_count, positions_to_reach
from atlas.config import AtlasConfig
from atlas.config.limits import MAX_SHARD_ROWS
from atlas.grid.sizes import fitted_sizes

Choices = dict[str, dict[str, Any]]  # the manifest's "choices": per config key, the value chosen and why


def choose_from_data(config: AtlasConfig, n_images: int, layer_hw: tuple[int, int]) -> tuple[AtlasConfig, Choices]:
    """The config with the data's choices in place, and what was chosen and why."""
    collect, grid = config.collect, config.grid
    height, width = layer_hw
    interior = interior_count(height, width)
    positions = collect.positions_per_image
    if positions == "all":
        chosen_positions, why_positions = positions, "config: every position of the map"
    elif collect.target_rows is None:
        chosen_positions, why_positions = positions, "config (collect.target_rows is off)"
    else:
        most = max(1, MAX_SHARD_ROWS // collect.shard_size)
        chosen_positions, why_positions = positions_to_reach(collect.target_rows, n_images, positions, interior, most)
    per_image = (height * width if chosen_positions == "all" else chosen_positions) + int(collect.class_token)
    rows = n_images * per_image
    if grid.fit_to_rows:
        sizes, why_sizes = fitted_sizes(grid.sizes, rows, grid.min_count)
    else:
        sizes, why_sizes = tuple(grid.sizes), "config (grid.fit_to_rows is off)"
    chosen = config.model_copy(
        update={
            "collect": collect.model_copy(update={"positions_per_image": chosen_positions}),
            "grid": grid.model_copy(update={"sizes": sizes}),
        }
    )
    choices: Choices = {
        "collect.positions_per_image": {
            "value": chosen_positions, "rule": why_positions, "images": n_images, "interior": interior,
            "target_rows": collect.target_rows,
        },
        "grid.sizes": {"value": list(sizes), "rule": why_sizes, "rows": rows, "min_count": grid.min_count},
    }  # fmt: skip
    return chosen, choices


def describe_choices(choices: Choices) -> list[str]:
    """One line per choice, as ``atlas run`` prints them."""
    return [f"[choices] {key} = {entry['value']}: {entry['rule']}" for key, entry in choices.items()]
