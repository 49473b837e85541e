"""Run configuration: YAML validated once at the edge, then trusted inside.

Every section is a pydantic model with unknown keys forbidden, so a typo in a
config file or a ``--set`` fails with one line naming the key.
"""

from __future__ import annotations

import os
import re
import reprlib
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from atlas.errors import AtlasError


class Section(BaseModel):
    # allow_inf_nan=False: every float key is finite; NaN or infinity in a learning rate or a distance is never meant.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """pydantic would read true as 1; YAML reads an unquoted yes, no, on or off as true/false, so refuse both."""
        annotation = cls.model_fields[info.field_name].annotation if info.field_name else None
        if _holds_bool(value) and not _takes_bool(annotation):
            raise ValueError("expected a number or text, not true/false (YAML reads unquoted yes, no, on and off as true/false)")
        return value


def _holds_bool(value: Any, depth: int = 3) -> bool:
    """True/false in the value or its lists (no key nests deeper than pairs; a list that holds itself stops too)."""
    if isinstance(value, bool):
        return True
    return depth > 0 and isinstance(value, (list, tuple)) and any(_holds_bool(v, depth - 1) for v in value)


def _takes_bool(annotation: Any) -> bool:
    """Whether a key's type takes true/false itself (a section answers for its own keys)."""
    if annotation is bool or (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
        return True
    return any(_takes_bool(arg) for arg in get_args(annotation))


# Upper bounds on sizes and counts. Each is far above any real use and far below what would exhaust a machine's
# memory or disk, so a slip of the keyboard (a few zeros too many) fails at once with one line instead of an
# out-of-memory crash halfway through a run. The description of each key says what the bound protects.
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


# An int in [least, most]; the description says what the bound protects and goes into the key's error message.
Count = Annotated[int, Field(ge=1, le=MAX_COUNT, description=f"at most {MAX_COUNT:,}")]
Batch = Annotated[int, Field(ge=1, le=MAX_BATCH, description=f"at most {MAX_BATCH:,} per batch: more would not fit in memory")]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED, description=f"0 to {MAX_SEED} (numpy's and scikit-learn's seed range)")]
InputSize = Annotated[
    int,
    Field(ge=1, le=MAX_INPUT_SIZE, description=f"px per side, at most {MAX_INPUT_SIZE}: one larger RGB image exceeds 200 MB in float32"),
]
GridSide = Annotated[int, Field(ge=1, le=MAX_GRID, description=f"cells per side, at most {MAX_GRID} (a million cells, each rendered)")]
Positions = Annotated[int, Field(ge=1, le=16_384, description="at most 16,384 per image ('all' takes every position of the map)")]


def check_metric(value: str) -> str:
    if value not in UMAP_METRICS:
        raise ValueError(f"expected one of {', '.join(UMAP_METRICS)}")
    return value


class ModelConfig(Section):
    spec: str = "efficientnet-lite0"
    layer: str = "blocks.4"
    weights: Path | None = None
    classes: Path | None = None
    input_size: InputSize | None = None
    channels: Literal[1, 3] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    trust_pickle: bool = False
    pretrained: bool = True


class ImagesConfig(Section):
    source: str = "builtin:photos"
    root: Path | None = Field(default=None, description="where torchvision datasets live (default: ~/.cache/atlas/datasets)")
    max_pixels: int = Field(
        default=89_478_485,
        ge=1,
        le=2**32,
        description="decompression-bomb limit in pixels, at most 2^32 (a larger image would not fit in memory decoded)",
    )


class CollectConfig(Section):
    n_images: Count | None = None
    positions_per_image: Positions | Literal["all"] = 1
    batch_size: Batch = 32
    shard_size: int = Field(default=128, ge=1, le=1_000_000, description="images per collect task, at most 1,000,000")
    attribution: bool = True
    nonfinite: Literal["drop", "stop"] = Field(
        default="drop", description="rows whose activation or attribution holds NaN or inf: drop and count them, or stop at the first"
    )


class LayoutConfig(Section):
    fit_sample: int = Field(
        default=20_000,
        ge=1,
        le=10_000_000,
        description="rows UMAP is fitted on, at most 10,000,000 (UMAP's memory and time grow faster than the rows)",
    )
    chunk_size: int = Field(default=10_000, ge=1, le=10_000_000, description="rows per placing task, at most 10,000,000")
    pca_components: int | None = Field(default=50, ge=1, le=4096, description="at most 4,096")
    n_neighbors: int = Field(default=30, ge=2, le=1000, description="2 to 1,000")
    min_dist: float = Field(default=0.05, ge=0.0, le=1.0, description="0 to 1 (UMAP's spread)")
    metric: str = Field(default="cosine", description="a UMAP metric name")
    clip_percentile: float = Field(default=1.0, ge=0.0, lt=50.0)
    margin: float = Field(default=0.05, ge=0.0, lt=0.5)
    whitening_eps: float = Field(default=1e-2, gt=0.0)
    coords: Path | None = Field(default=None, description="precomputed [N, 2] coordinates in [0, 1], one per row, instead of UMAP")

    @field_validator("metric")
    @classmethod
    def _metric(cls, value: str) -> str:
        return check_metric(value)


class GridConfig(Section):
    sizes: tuple[GridSide, ...] = Field(default=(10, 20, 40), max_length=16, description="1 to 16 grids, each at most 1,024 cells per side")
    min_count: Count = 3
    top_classes: int = Field(default=5, ge=1, le=10_000, description="at most 10,000")
    examples: int = Field(default=8, ge=0, le=1000, description="0 to 1,000 per cell")

    @field_validator("sizes")
    @classmethod
    def _sorted_unique(cls, sizes: tuple[int, ...]) -> tuple[int, ...]:
        if not sizes:
            raise ValueError("give at least one grid size")
        return tuple(sorted(set(sizes)))


DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


def check_device_setting(value: str) -> str:
    """The ``device`` key's values (resolved against this torch by :func:`atlas.devices.resolve_device`)."""
    if not DEVICE_PATTERN.fullmatch(value):
        raise ValueError("expected auto, cpu, cuda or cuda:N")
    return value


RENDER_BATCH = {"cpu": 64, "cuda": 256}  # render.batch_size 'auto': cells per render task on each device type


class RenderConfig(Section):
    steps: int = Field(default=128, ge=1, le=100_000, description="at most 100,000 (the article used 1,024)")
    icon_size: int = Field(default=80, ge=1, le=MAX_ICON, description=f"px per side, at most {MAX_ICON}")
    tries: Annotated[int, Field(ge=1, le=64)] | Literal["auto"] = Field(
        default="auto",
        description="renders per icon, the best kept; 1 to 64; auto: 1, or 4 where a probe render finds icons missing their cell",
    )
    batch_size: Batch | Literal["auto"] = Field(default="auto", description="cells per render task; auto: 64 on CPU, 256 on a GPU")
    learning_rate: Annotated[float, Field(gt=0.0, le=10.0)] | Literal["auto"] = Field(
        default="auto", description="Adam's step, above 0 and at most 10; auto: chosen by a probe render (see whiten)"
    )
    cossim_power: Annotated[float, Field(ge=0.0, le=100.0)] | Literal["auto"] = Field(
        default="auto", description="the objective's cosine exponent, 0 to 100; auto: chosen by a probe render"
    )
    whiten: Literal["auto", "full", "dot", "off"] = Field(
        default="auto",
        description="full: whitened direction; dot: grow along it but point along the cell's own; off: the cell's own;"
        " true/false mean full/off; auto: whichever a probe render of a few cells finds most faithful",
    )
    contrast: Literal["auto"] | bool = Field(
        default="auto",
        description="also push each icon away from its neighbouring cells (a retrieval term, for grids whose neighbours"
        " point almost the same way); auto: whichever a probe render finds more faithful",
    )
    probe_cells: int = Field(
        default=16,
        ge=0,
        le=4096,
        description="cells a probe renders per candidate setting (0 to 4,096; half of the coarsest grid, half of the finest);"
        " 0, or an atlas with fewer than 4 times as many cells: no probe, 'auto' takes the usual defaults",
    )
    param: Literal["fourier", "maco", "accentuate"] = Field(
        default="fourier",
        description="fourier: 1/f spectrum; maco: phase only, magnitude from the run's images; accentuate: from the cell's best example",
    )
    proximity: float = Field(
        default=10.0, ge=0.0, le=1e6, description="accentuate: how near the example the icon stays, relative to its objective (0 to 1e6)"
    )
    alpha: bool = Field(default=False, description="also save each icon's transparency from its attribution (MaCo's), in alpha/")
    crop_to_field: bool = Field(
        default=True, description="show the part of the icon the centre position sees (its receptive field), the whole in views/"
    )
    precision: Literal["fp32", "bf16"] = Field(default="fp32", description="bf16: the model's forward under torch.autocast")

    @field_validator("whiten", mode="before")
    @classmethod
    def _whiten_flag(cls, value: Any) -> Any:
        """true/false (the key's old form, and YAML's on/off) mean full/off."""
        return {True: "full", False: "off"}.get(value, value) if isinstance(value, bool) else value

    def probed(self) -> list[str]:
        """The settings a probe render chooses: those left to 'auto'."""
        names = ("whiten", "contrast", "cossim_power", "learning_rate", "tries")
        return [name for name in names if getattr(self, name) == "auto"]

    def probes(self) -> bool:
        """Whether a probe render chooses any setting."""
        return bool(self.probed())

    def batch_size_on(self, device_type: str) -> int:
        """Cells per task: the setting, or for 'auto' what keeps the device busy (a GPU wants far larger batches)."""
        return self.batch_size if self.batch_size != "auto" else RENDER_BATCH.get(device_type, RENDER_BATCH["cpu"])


class TilesConfig(Section):
    format: Literal["jpg", "webp"] = "jpg"
    quality: int = Field(default=90, ge=1, le=100)
    scale: int | None = Field(
        default=None, ge=1, le=64, description="integer icon upscale on the canvas, 1 to 64 (default: cells >= 64 px)"
    )
    examples_per_cell: int = Field(default=6, ge=0, le=1000, description="0 to 1,000")


class PathCheckConfig(Section):
    """Each icon against its cell's real example patches at earlier layers (atlas.featurevis.pathcheck)."""

    layers: tuple[str, ...] | Literal["auto"] = Field(
        default="auto",
        min_length=1,
        max_length=8,
        description="auto: two layers at about 1/3 and 2/3 of the way to model.layer; or 1 to 8 layer names",
    )


class OutputConfig(Section):
    dir: str = Field(
        default="outputs", description="a folder, or an fsspec URL every worker can reach (s3://bucket/prefix, gs://, abfs://)"
    )
    name: str | None = Field(default=None, description="the bundle's folder name under output.dir")

    @field_validator("name")
    @classmethod
    def _folder_name(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if value in ("", ".", "..") or any(c in value for c in "/\\\0\n\r"):
            raise ValueError("give one folder name: not empty, '.' or '..', without slashes or line breaks")
        if len(os.fsencode(value)) > 255:
            raise ValueError("give a folder name of at most 255 bytes")
        return value

    @field_validator("dir")
    @classmethod
    def _dir_text(cls, value: str) -> str:
        if not value.strip() or any(c in value for c in "\0\n\r"):
            raise ValueError("give a folder or an fsspec URL: not empty, without NUL or line breaks")
        return value

    @field_validator("dir", mode="before")
    @classmethod
    def _path_as_text(cls, value: Any) -> Any:
        """A str, not a Path: Path("s3://b/x") would fold the URL's // into one slash."""
        return os.fspath(value) if isinstance(value, os.PathLike) else value


SCHEDULER_ADDRESS = re.compile(r"(tcp|tls|ucx)://[^\s/]+")


class SchedulerConfig(Section):
    address: str = Field(default="local", description="'local' (a LocalCluster), 'tcp://HOST:PORT', or 'sync'")
    workers: int | None = Field(
        default=None, ge=1, le=1024, description="local cluster worker processes, 1 to 1,024 (default cores / threads)"
    )
    threads_per_worker: int | None = Field(default=None, ge=1, le=1024, description="PyTorch threads per worker, 1 to 1,024 (default 1)")
    upload: tuple[Path, ...] = Field(
        default=(),
        max_length=1000,
        description="Python files (.py, .zip, .egg) Dask copies to every worker: a model module the workers lack",
    )

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        if value not in ("local", "sync") and not SCHEDULER_ADDRESS.fullmatch(value):
            raise ValueError("expected 'local', 'sync' or an address like tcp://HOST:8786")
        return value


ClassName = str | int  # a class label, or its index among the model's outputs


class PatchConfig(Section):
    """The patch experiment of a two-class comparison (A, B): B-favouring icons pasted onto images classified as A."""

    run: bool = True
    n_images: int = Field(default=500, ge=1, le=MAX_COUNT, description="at most this many held-out images classified as A")
    sizes: tuple[float, ...] = Field(default=(0.2, 0.3, 0.4), max_length=64, description="patch sides as fractions of the input side")
    icons: int = Field(default=4, ge=1, le=MAX_GRID, description="pasted icons: the cells of the comparison that favour B most")
    corner: Literal["top_left", "top_right", "bottom_left", "bottom_right"] = "top_left"
    images: str | None = Field(default=None, description="held-out image source (default: the run's, past the images it collected)")
    batch_size: Batch = 64

    @field_validator("sizes")
    @classmethod
    def _fractions(cls, sizes: tuple[float, ...]) -> tuple[float, ...]:
        if not sizes or any(not 0 < size <= 1 for size in sizes):
            raise ValueError("give fractions of the input side in (0, 1]")
        return tuple(sorted(set(sizes)))


class ClassesConfig(Section):
    """Class atlases and two-class comparisons built on a finished atlas (``atlas classes``, or ``atlas run``)."""

    classes: tuple[ClassName, ...] | Literal["all"] = Field(
        default=(), description="class names or indices; 'all': every class with enough rows"
    )
    pairs: tuple[tuple[ClassName, ClassName], ...] = Field(default=(), description="two-class comparisons, [[A, B], ...]")
    select: Literal["top", "top_k"] = Field(default="top", description="top: rows whose top attribution is the class; top_k: its k best")
    top_k: Count = 2000
    min_rows: int = Field(default=50, ge=1, le=MAX_COUNT, description="fewer rows than this and a class atlas fails (a pair too)")
    grid: GridSide = 8
    pair_grid: GridSide = 10
    min_count: Count = 2
    n_neighbors: int = Field(default=20, ge=2, le=1000, description="2 to 1,000")
    min_dist: float = Field(default=0.02, ge=0.0, le=1.0, description="0 to 1 (UMAP's spread)")
    metric: str = Field(default="cosine", description="a UMAP metric name")
    pair_layout: Literal["umap", "tsne"] = Field(default="umap", description="the 1-D layout of a comparison's y axis")
    patch: PatchConfig = PatchConfig()

    @field_validator("metric")
    @classmethod
    def _metric(cls, value: str) -> str:
        return check_metric(value)


class AtlasConfig(Section):
    model: ModelConfig = ModelConfig()
    images: ImagesConfig = ImagesConfig()
    collect: CollectConfig = CollectConfig()
    layout: LayoutConfig = LayoutConfig()
    grid: GridConfig = GridConfig()
    render: RenderConfig = RenderConfig()
    tiles: TilesConfig = TilesConfig()
    path_check: PathCheckConfig = PathCheckConfig()
    output: OutputConfig = OutputConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    classes: ClassesConfig = ClassesConfig()
    device: str = Field(default="auto", description="auto (CUDA when torch sees a GPU, else CPU), cpu, cuda or cuda:N")
    seed: Seed = 0

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        return check_device_setting(value)

    @model_validator(mode="after")
    def _fits_a_machine(self) -> AtlasConfig:
        """Sizes that are each in range but together would exhaust memory or disk."""
        positions = self.collect.positions_per_image
        if positions != "all" and self.collect.shard_size * positions > MAX_SHARD_ROWS:
            raise ValueError(
                f"collect.shard_size x collect.positions_per_image = {self.collect.shard_size * positions:,} rows per collect task, "
                f"over {MAX_SHARD_ROWS:,} (one task holds them in memory); lower either"
            )
        scale = self.tiles.scale or max(1, -(-64 // self.render.icon_size))  # atlas.tiles.default_scale
        side = max(self.grid.sizes) * self.render.icon_size * scale
        if side > MAX_CANVAS:
            raise ValueError(
                f"grid.sizes x render.icon_size x tiles.scale = {side:,} px per canvas side, over {MAX_CANVAS:,} "
                "(the canvas would not fit on disk); lower the largest grid, the icon size or the scale"
            )
        return self

    @property
    def name(self) -> str:
        return self.output.name or "atlas"


ALL_ACTIVATIONS = ("relu", "leaky_relu", "elu", "gelu", "silu", "mish", "tanh", "sigmoid")


class TrainConfig(Section):
    """``atlas train``: one architecture, trained once per activation with everything else identical."""

    architecture: Literal["vgg", "resnet"] = "vgg"
    dataset: str = Field(default="torchvision:FashionMNIST", description="torchvision:NAME, or a folder of class sub-folders")
    root: Path | None = Field(default=None, description="where torchvision datasets live (default: ~/.cache/atlas/datasets)")
    activations: tuple[str, ...] = Field(default=ALL_ACTIVATIONS, max_length=64, description="1 to 64 activation names")
    epochs: int = Field(default=3, ge=1, le=10_000, description="at most 10,000")
    batch_size: Batch = 128
    learning_rate: float = Field(default=2e-3, gt=0.0)
    weight_decay: float = Field(default=0.0, ge=0.0)
    width: int = Field(default=16, ge=1, le=1024, description="channels of the first block, at most 1,024; later blocks have 2x and 4x")
    batch_norm: bool = Field(default=False, description="off by default: BN hides what the activation itself does to gradients")
    input_size: InputSize | None = Field(default=None, description="default: the dataset's own size, at most 64 px")
    channels: Literal[1, 3] | None = Field(default=None, description="default: 1 for grey datasets, else 3")
    limit_train_images: Count | None = None
    limit_test_images: Count | None = None
    test_fraction: float = Field(default=0.1, gt=0.0, lt=1.0, description="held out from a folder without train/ and test/")
    dead_threshold: float = Field(default=1e-3, gt=0.0, description="a unit is dead when |f'(x)| stays below this on every test input")
    seed: Seed = 0

    @field_validator("activations")
    @classmethod
    def _some(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        if not names:
            raise ValueError("give at least one activation name")
        if len(set(names)) != len(names):
            raise ValueError("activation names repeat")
        return names


class CompareConfig(Section):
    """``atlas compare``: one atlas per trained variant, laid out so the same region holds the same images."""

    layer: str | None = Field(default=None, description="default: the architecture's last block")
    layers: tuple[str, ...] = Field(default=(), max_length=64, description="also compare these layers of one variant (at most 64)")
    layers_of: str | None = Field(default=None, description="the variant whose layers are compared (default: the first)")
    align: Literal["aligned_umap", "none"] = "aligned_umap"
    alignment_regularisation: float = Field(default=0.01, gt=0.0)
    alignment_window: int = Field(default=3, ge=1, le=64, description="1 to 64")
    measure_sample: int = Field(default=2000, ge=1, le=1_000_000, description="rows used for trustworthiness, at most 1,000,000")


class ExperimentConfig(AtlasConfig):
    """A comparison experiment: the atlas settings every variant shares, plus training and comparison."""

    train: TrainConfig = TrainConfig()
    compare: CompareConfig = CompareConfig()


def parse_assignment(text: str) -> tuple[str, Any]:
    """``'collect.batch_size=16'`` -> ``('collect.batch_size', 16)``; the value is read as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise AtlasError(f"--set {text!r}: expected KEY=VALUE, for example --set collect.n_images=200")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    except RecursionError:
        raise AtlasError(f"--set {key.strip()!r}: the value nests too deeply; give a plain value or a flat list") from None
    return key.strip(), value


def apply_assignment(tree: dict[str, Any], key: str, value: Any) -> None:
    node = tree
    parts = key.split(".")
    for depth, part in enumerate(parts[:-1], start=1):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            holder = ".".join(parts[:depth])
            raise AtlasError(f"config key {key!r}: {part!r} is a value, not a section; use {holder}=VALUE, not keys under it")
        node = child
    node[parts[-1]] = value


_SHORT = reprlib.Repr()
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlist, _SHORT.maxtuple, _SHORT.maxdict, _SHORT.maxlevel = 80, 80, 6, 6, 4, 3


def short_repr(value: Any) -> str:
    """``repr`` cut to one readable line: a value pasted by mistake (a megabyte list, a long text) stays short."""
    return _SHORT.repr(value)


def _describe_error(err: ValidationError, schema: type[BaseModel]) -> str:
    errors = err.errors()
    first = errors[0]
    if not first["loc"]:  # a check across sections (AtlasConfig._fits_a_machine): its message names the keys
        return f"config: {first['msg'].removeprefix('Value error, ')}"
    loc = _field_path(schema, first["loc"])
    key = ".".join(loc)
    if first["type"] == "extra_forbidden":
        key = ".".join(str(p) for p in first["loc"])
        parent = _section_at(schema, first["loc"][:-1])
        valid = ", ".join(parent.model_fields) if parent else ""
        return f"config key {short_repr(key)} is unknown; valid keys here: {valid}"
    # A union (say, an integer or 'all') reports one error per variant: say them all.
    messages = dict.fromkeys(_message(e) for e in errors if _field_path(schema, e["loc"]) == loc)
    why = _description(schema, loc)
    return f"config key {key!r} = {short_repr(first.get('input'))} is invalid: {' or '.join(messages)}" + (f"; {why}" if why else "")


# pydantic's wording where it does not say what to give instead.
_MESSAGES = {
    "path_type": "Input should be a path (text)",
    "recursion_loop": "Input should not contain itself",
}


def _message(error: Any) -> str:
    if error["type"] == "missing" and error["loc"] and isinstance(error["loc"][-1], int):  # a pair of one
        return f"Input should have an item at position {error['loc'][-1] + 1}"
    return str(_MESSAGES.get(error["type"], error["msg"])).removeprefix("Value error, ")


def _description(schema: type[BaseModel], loc: tuple[str, ...]) -> str | None:
    """The key's description, which says what its bounds protect (None for a section or a key without one)."""
    section = _section_at(schema, loc[:-1]) if loc else None
    field = section.model_fields.get(loc[-1]) if section is not None else None
    if field is None:
        return None
    if field.description:
        return field.description
    for inner in getattr(field.annotation, "__args__", ()):  # tuple[GridSide, ...] or Count | None: the item's own
        described = [m.description for m in getattr(inner, "__metadata__", ()) if getattr(m, "description", None)]
        if described:
            return described[0]
    return None


def _field_path(schema: type[BaseModel], loc: tuple[Any, ...]) -> tuple[str, ...]:
    """The config-key part of a pydantic error location (drops union variant tags and list indices)."""
    path: list[str] = []
    current: type[BaseModel] | None = schema
    for part in loc:
        if current is None or str(part) not in current.model_fields:
            break
        path.append(str(part))
        annotation = current.model_fields[str(part)].annotation
        current = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    if not path and loc:
        path.append(str(loc[0]))
    return tuple(path)


def _section_at(schema: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    current: type[BaseModel] = schema
    for part in loc:
        field = current.model_fields.get(str(part))
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return None
        current = field.annotation
    return current


def validate_tree(tree: dict[str, Any], schema: type[BaseModel]) -> Any:
    try:
        return schema.model_validate(tree)
    except ValidationError as err:
        raise AtlasError(_describe_error(err, schema)) from None


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise AtlasError(f"config file {path}: cannot read it ({err.strerror})") from None
    except UnicodeDecodeError as err:
        raise AtlasError(f"config file {path}: not UTF-8 text (byte {err.start}); save it as UTF-8 YAML") from None
    try:
        tree = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise AtlasError(f"config file {path}: not valid YAML ({str(err).splitlines()[0]})") from None
    except RecursionError:
        raise AtlasError(f"config file {path}: nests too deeply; a config is a mapping of sections of plain values") from None
    if not isinstance(tree, dict):
        raise AtlasError(f"config file {path}: expected a mapping of sections at the top level")
    return tree


def packaged_default_config() -> Path:
    """The default config that ships inside the package (``configs/default.yaml`` in the repository links to it)."""
    return Path(str(resources.files("atlas").joinpath("configs", "default.yaml")))


def load_config(
    path: Path | None,
    assignments: Sequence[str] = (),
    schema: type[BaseModel] = AtlasConfig,
    values: Sequence[tuple[str, Any]] = (),
) -> Any:
    """Read a YAML file (or start from defaults), apply ``--set`` overrides, then ``values`` as given; validate once.

    ``--set KEY=VALUE`` is read as YAML (``grid.sizes=[10,20]``); ``values`` are already typed, like command-line
    flags whose value is a string whatever it looks like.
    """
    tree = read_yaml(path) if path is not None else {}
    for text in assignments:
        key, value = parse_assignment(text)
        apply_assignment(tree, key, value)
    for key, value in values:
        apply_assignment(tree, key, value)
    config = validate_tree(tree, schema)
    if path is not None and isinstance(config, AtlasConfig) and config.output.name is None:
        config = config.model_copy(update={"output": config.output.model_copy(update={"name": Path(path).stem})})
    return config


# --- files and folders a config names: checked before any work ----------------------------------------------------
# Validation above is about values; these look at this machine's disk, once, at the command line's edge, so a path that
# does not exist, cannot be read or cannot be written fails with one line before a model loads or a bundle is touched.
# (Remote URLs are left to the store: only the workers' view of them counts.)


def check_model_files(model: ModelConfig) -> None:
    """``model.weights`` and ``model.classes`` exist and can be read (the classes file as UTF-8 text)."""
    _readable_file(model.weights, "model.weights", "give a state dict saved with torch.save, or remove the key")
    _readable_file(model.classes, "model.classes", "give a UTF-8 text file with one class name per line, or remove the key", text=True)


def check_files(config: AtlasConfig) -> None:
    """Every local path of an atlas (or experiment) config: inputs readable, ``output.dir`` writable (created if missing)."""
    check_model_files(config.model)
    _readable_file(config.layout.coords, "layout.coords", "give a .npy of [N, 2] coordinates or remove the key")
    for path in config.scheduler.upload:
        _readable_file(path, "scheduler.upload", "list .py, .zip or .egg files the workers should import")
    _readable_folder(config.images.source)
    _writable_folder(config.output.dir)


def _local(text: str) -> Path | None:
    """The local path a path-or-URL string names, or None for a URL of another store."""
    protocol = text.split("://", 1)[0].lower() if "://" in text else ""
    if protocol not in ("", "file", "local"):
        return None
    return Path(text.split("://", 1)[1] if protocol else text).expanduser()


def _readable_file(path: Path | None, key: str, fix: str, text: bool = False) -> None:
    if path is None:
        return
    path = Path(path).expanduser()
    try:
        if not path.exists():
            raise AtlasError(f"{key} '{path}': no such file; {fix}")
        if not path.is_file():
            raise AtlasError(f"{key} '{path}': not a file (a folder or a device); {fix}")
        with path.open("rb") as handle:
            head = handle.read() if text else handle.read(1)
        if text:
            head.decode("utf-8")
    except OSError as err:
        raise AtlasError(f"{key} '{path}': cannot read it ({err.strerror}); {fix}") from None
    except UnicodeDecodeError as err:
        raise AtlasError(f"{key} '{path}': not UTF-8 text (byte {err.start}); {fix}") from None


def _readable_folder(source: str) -> None:
    """``images.source`` when it is a local folder (not builtin:, torchvision: or a URL): it exists and can be listed."""
    text = source.strip()
    folder = None if text.startswith(("builtin:", "torchvision:")) else _local(text)
    if folder is None:
        return
    fix = "give a folder of images, 'builtin:photos' or 'torchvision:FashionMNIST'"
    try:
        if not folder.is_dir():
            raise AtlasError(f"images.source '{text}': no such folder; {fix}")
        with os.scandir(folder) as entries:
            next(entries, None)
    except (OSError, ValueError) as err:
        raise AtlasError(f"images.source '{text}': cannot list it ({getattr(err, 'strerror', None) or err}); {fix}") from None


def _writable_folder(text: str) -> None:
    """``output.dir`` when local: created if missing (as the run would), and writable."""
    folder = _local(text)
    if folder is None:
        return
    fix = "give a writable folder with --out or output.dir"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (OSError, ValueError) as err:
        raise AtlasError(f"output.dir '{text}': cannot create it ({getattr(err, 'strerror', None) or err}); {fix}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise AtlasError(f"output.dir '{text}': not writable; {fix}")
