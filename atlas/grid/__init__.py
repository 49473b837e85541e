"""Grids: the layout binned at several resolutions, one summary per kept cell."""

from atlas.grid.cells import cell_index
from atlas.grid.grid import GridLevel, build_grid
from atlas.grid.means import cell_means, segment_means
from atlas.grid.streaming import build_grids

__all__ = ["GridLevel", "build_grid", "build_grids", "cell_index", "cell_means", "segment_means"]
