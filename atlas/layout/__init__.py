"""Layout: activations -> 2-D coordinates in [0, 1], plus the whitening for rendering."""

from atlas.layout.umap_layout import AtlasLayout
from atlas.layout.whitening import Whitening

__all__ = ["AtlasLayout", "Whitening"]
