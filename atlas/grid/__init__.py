"""Grids: the layout binned at several resolutions, one summary per kept cell."""

from atlas.grid.grid import GridLevel, build_grid, cell_index

__all__ = ["GridLevel", "build_grid", "cell_index"]
