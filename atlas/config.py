"""Run configuration: YAML validated once at the edge, then trusted inside.

Every section is a pydantic model with unknown keys forbidden, so a typo in a
config file or a ``--set`` fails with one line naming the key.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator

from atlas.errors import AtlasError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(Section):
    spec: str = "efficientnet-lite0"
    layer: str = "blocks.4"
    weights: Path | None = None
    classes: Path | None = None
    input_size: PositiveInt | None = None
    channels: Literal[1, 3] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    trust_pickle: bool = False
    pretrained: bool = True


class ImagesConfig(Section):
    source: str = "builtin:photos"
    root: Path | None = Field(default=None, description="where torchvision datasets live (default: ~/.cache/atlas/datasets)")
    max_pixels: PositiveInt = 89_478_485


class CollectConfig(Section):
    n_images: PositiveInt | None = None
    positions_per_image: PositiveInt | Literal["all"] = 1
    batch_size: PositiveInt = 32
    shard_size: PositiveInt = 128
    attribution: bool = True
    nonfinite: Literal["drop", "stop"] = Field(
        default="drop", description="rows whose activation or attribution holds NaN or inf: drop and count them, or stop at the first"
    )


class LayoutConfig(Section):
    fit_sample: PositiveInt = 20_000
    chunk_size: PositiveInt = 10_000
    pca_components: PositiveInt | None = 50
    n_neighbors: int = Field(default=30, ge=2)
    min_dist: float = Field(default=0.05, ge=0.0)
    metric: str = "cosine"
    clip_percentile: float = Field(default=1.0, ge=0.0, lt=50.0)
    margin: float = Field(default=0.05, ge=0.0, lt=0.5)
    whitening_eps: float = Field(default=1e-2, gt=0.0)
    coords: Path | None = Field(default=None, description="precomputed [N, 2] coordinates in [0, 1], one per row, instead of UMAP")


class GridConfig(Section):
    sizes: tuple[PositiveInt, ...] = (10, 20, 40)
    min_count: PositiveInt = 3
    top_classes: PositiveInt = 5
    examples: int = Field(default=8, ge=0)

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
    steps: PositiveInt = 128
    icon_size: PositiveInt = 80
    tries: PositiveInt = 1
    batch_size: PositiveInt | Literal["auto"] = Field(default="auto", description="cells per render task; auto: 64 on CPU, 256 on a GPU")
    learning_rate: float = Field(default=0.05, gt=0.0)
    cossim_power: float = Field(default=4.0, ge=0.0)
    whiten: bool = True
    precision: Literal["fp32", "bf16"] = Field(default="fp32", description="bf16: the model's forward under torch.autocast")

    def batch_size_on(self, device_type: str) -> int:
        """Cells per task: the setting, or for 'auto' what keeps the device busy (a GPU wants far larger batches)."""
        return self.batch_size if self.batch_size != "auto" else RENDER_BATCH.get(device_type, RENDER_BATCH["cpu"])


class TilesConfig(Section):
    format: Literal["jpg", "webp"] = "jpg"
    quality: int = Field(default=90, ge=1, le=100)
    scale: PositiveInt | None = Field(default=None, description="integer icon upscale on the canvas (default: cells >= 64 px)")
    examples_per_cell: int = Field(default=6, ge=0)


class OutputConfig(Section):
    dir: str = Field(
        default="outputs", description="a folder, or an fsspec URL every worker can reach (s3://bucket/prefix, gs://, abfs://)"
    )
    name: str | None = None

    @field_validator("dir", mode="before")
    @classmethod
    def _path_as_text(cls, value: Any) -> Any:
        """A str, not a Path: Path("s3://b/x") would fold the URL's // into one slash."""
        return os.fspath(value) if isinstance(value, os.PathLike) else value


class SchedulerConfig(Section):
    address: str = Field(default="local", description="'local' (a LocalCluster), 'tcp://HOST:PORT', or 'sync'")
    workers: PositiveInt | None = Field(default=None, description="local cluster worker processes (default cores / threads)")
    threads_per_worker: PositiveInt | None = Field(default=None, description="PyTorch threads per worker (default 1)")
    upload: tuple[Path, ...] = Field(
        default=(), description="Python files (.py, .zip, .egg) Dask copies to every worker: a model module the workers lack"
    )


ClassName = str | int  # a class label, or its index among the model's outputs


class PatchConfig(Section):
    """The patch experiment of a two-class comparison (A, B): B-favouring icons pasted onto images classified as A."""

    run: bool = True
    n_images: PositiveInt = Field(default=500, description="at most this many held-out images classified as A")
    sizes: tuple[float, ...] = Field(default=(0.2, 0.3, 0.4), description="patch sides as fractions of the input side")
    icons: PositiveInt = Field(default=4, description="pasted icons: the cells of the comparison that favour B most")
    corner: Literal["top_left", "top_right", "bottom_left", "bottom_right"] = "top_left"
    images: str | None = Field(default=None, description="held-out image source (default: the run's, past the images it collected)")
    batch_size: PositiveInt = 64

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
    top_k: PositiveInt = 2000
    min_rows: PositiveInt = Field(default=50, description="fewer rows than this and a class atlas fails (a pair too)")
    grid: PositiveInt = 8
    pair_grid: PositiveInt = 10
    min_count: PositiveInt = 2
    n_neighbors: int = Field(default=20, ge=2)
    min_dist: float = Field(default=0.02, ge=0.0)
    metric: str = "cosine"
    pair_layout: Literal["umap", "tsne"] = Field(default="umap", description="the 1-D layout of a comparison's y axis")
    patch: PatchConfig = PatchConfig()


class AtlasConfig(Section):
    model: ModelConfig = ModelConfig()
    images: ImagesConfig = ImagesConfig()
    collect: CollectConfig = CollectConfig()
    layout: LayoutConfig = LayoutConfig()
    grid: GridConfig = GridConfig()
    render: RenderConfig = RenderConfig()
    tiles: TilesConfig = TilesConfig()
    output: OutputConfig = OutputConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    classes: ClassesConfig = ClassesConfig()
    device: str = Field(default="auto", description="auto (CUDA when torch sees a GPU, else CPU), cpu, cuda or cuda:N")
    seed: int = 0

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        return check_device_setting(value)

    @property
    def name(self) -> str:
        return self.output.name or "atlas"


ALL_ACTIVATIONS = ("relu", "leaky_relu", "elu", "gelu", "silu", "mish", "tanh", "sigmoid")


class TrainConfig(Section):
    """``atlas train``: one architecture, trained once per activation with everything else identical."""

    architecture: Literal["vgg", "resnet"] = "vgg"
    activations: tuple[str, ...] = ALL_ACTIVATIONS
    dataset: str = Field(default="torchvision:FashionMNIST", description="torchvision:NAME, or a folder of class sub-folders")
    root: Path | None = Field(default=None, description="where torchvision datasets live (default: ~/.cache/atlas/datasets)")
    epochs: PositiveInt = 3
    batch_size: PositiveInt = 128
    learning_rate: float = Field(default=2e-3, gt=0.0)
    weight_decay: float = Field(default=0.0, ge=0.0)
    width: PositiveInt = Field(default=16, description="channels of the first block; later blocks have 2x and 4x")
    batch_norm: bool = Field(default=False, description="off by default: BN hides what the activation itself does to gradients")
    input_size: PositiveInt | None = Field(default=None, description="default: the dataset's own size, at most 64 px")
    channels: Literal[1, 3] | None = Field(default=None, description="default: 1 for grey datasets, else 3")
    limit_train_images: PositiveInt | None = None
    limit_test_images: PositiveInt | None = None
    test_fraction: float = Field(default=0.1, gt=0.0, lt=1.0, description="held out from a folder without train/ and test/")
    dead_threshold: float = Field(default=1e-3, gt=0.0, description="a unit is dead when |f'(x)| stays below this on every test input")
    seed: int = 0

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
    layers: tuple[str, ...] = Field(default=(), description="also compare these layers of one variant")
    layers_of: str | None = Field(default=None, description="the variant whose layers are compared (default: the first)")
    align: Literal["aligned_umap", "none"] = "aligned_umap"
    alignment_regularisation: float = Field(default=0.01, gt=0.0)
    alignment_window: PositiveInt = 3
    measure_sample: PositiveInt = Field(default=2000, description="rows used for trustworthiness")


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
    return key.strip(), value


def apply_assignment(tree: dict[str, Any], key: str, value: Any) -> None:
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise AtlasError(f"config key {key!r}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def _describe_error(err: ValidationError, schema: type[BaseModel]) -> str:
    errors = err.errors()
    first = errors[0]
    loc = _field_path(schema, first["loc"])
    key = ".".join(loc)
    if first["type"] == "extra_forbidden":
        key = ".".join(str(p) for p in first["loc"])
        parent = _section_at(schema, first["loc"][:-1])
        valid = ", ".join(parent.model_fields) if parent else ""
        return f"config key {key!r} is unknown; valid keys here: {valid}"
    # A union (say, an integer or 'all') reports one error per variant: say them all.
    messages = dict.fromkeys(e["msg"] for e in errors if _field_path(schema, e["loc"]) == loc)
    return f"config key {key!r} = {first.get('input')!r} is invalid: {' or '.join(messages)}"


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
        text = Path(path).read_text()
    except OSError as err:
        raise AtlasError(f"config file {path}: cannot read it ({err.strerror})") from None
    try:
        tree = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise AtlasError(f"config file {path}: not valid YAML ({str(err).splitlines()[0]})") from None
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
