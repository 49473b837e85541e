"""Bounds and name lists the schema checks against: plain Python, so any module may read them without pydantic.

Each upper bound is far above any real use and far below what would exhaust a machine's memory or disk, so a
slip of the keyboard (a few zeros too many) fails at once with one line instead of an out-of-memory crash
halfway through a run. The description of each key says what its bound protects.
"""

from __future__ import annotations

MAX_INPUT_SIZE = 4096  # px per side of a model input: one 4096 px RGB image is 200 MB in float32 before any layer
MAX_GRID = 1024  # cells per side of a grid: 1M cells, each with its icon, directions and attribution rows
MAX_ICON = 1024  # px per side of a rendered icon
MAX_CANVAS = 65_536  # px per side of a grid's canvas (grid x icon x scale): 4.3 Gpx, ~13 GB raw on disk
MAX_SHARD_ROWS = 1 << 20  # activation rows one collect task holds in memory (collect.shard_size x positions_per_image)
MAX_COUNT = 1_000_000_000  # images, rows or samples: more than any image set atlas has been asked to read
MAX_BATCH = 65_536  # items per batch or task
MAX_SEED = 2**32 - 1  # numpy's and scikit-learn's random_state range
UMAP_METRICS = (
    "euclidean", "l2", "manhattan", "l1", "taxicab", "chebyshev", "linfinity", "linf", "linfty", "minkowski",
    "canberra", "braycurtis", "cosine", "correlation",
)  # fmt: skip  # UMAP's named metrics that need no extra arguments and support transform()
ALL_ACTIVATIONS = ("relu", "leaky_relu", "elu", "gelu", "silu", "mish", "tanh", "sigmoid")  # train.activations' default
COARSE_MIN_CANVAS = 64  # render.coarse_steps 'auto': a smaller canvas at half size could lose the layer's centre position
AUTO_STEPS = {"coarse": 64, "full": 128}  # render.steps 'auto': with half of them coarse (canvas >= COARSE_MIN_CANVAS), or all full
RENDER_BATCH = {"cpu": 64, "cuda": 256}  # render.batch_size 'auto': cells per render task on each device type
