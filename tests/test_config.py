"""Config validation: unknown keys and bad values fail with one line naming the key."""

from pathlib import Path
from typing import Any

import pytest

from atlas.config import AtlasConfig, ExperimentConfig, load_config
from atlas.errors import AtlasError

REPO = Path(__file__).resolve().parents[1]


def test_defaults_and_overrides_are_typed() -> None:
    config = load_config(None, ["collect.n_images=50", "grid.sizes=[40, 10]", "model.mean=[0.5]", "seed=7"])
    assert config.collect.n_images == 50
    assert config.grid.sizes == (10, 40)
    assert config.model.mean == (0.5,)
    assert config.seed == 7


@pytest.mark.parametrize(
    ("assignment", "fragment"),
    [
        ("collect.batchsize=8", "'collect.batchsize' is unknown; valid keys here: n_images, positions_per_image, batch_size"),
        ("collect.batch_size=many", "'collect.batch_size' = 'many' is invalid"),
        ("model.channels=2", "'model.channels' = 2 is invalid"),
        ("collect.positions_per_image=some", "'collect.positions_per_image'"),
        ("nosuch.key=1", "'nosuch' is unknown"),
        ("grid.sizes=[]", "'grid.sizes'"),
    ],
)
def test_bad_keys_and_values_name_the_key(assignment: str, fragment: str) -> None:
    with pytest.raises(AtlasError) as info:
        load_config(None, [assignment])
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


# Every documented key: the text given to --set, and what the validated config must then hold at that dotted path.
DOCUMENTED_KEYS: dict[str, tuple[str, Any]] = {
    "model.spec": ("timm:resnet18", "timm:resnet18"),
    "model.layer": ("layer3", "layer3"),
    "model.weights": ("w.pt", Path("w.pt")),
    "model.classes": ("c.txt", Path("c.txt")),
    "model.input_size": ("64", 64),
    "model.channels": ("1", 1),
    "model.mean": ("[0.5]", (0.5,)),
    "model.std": ("[0.5]", (0.5,)),
    "model.trust_pickle": ("true", True),
    "images.source": ("builtin:photos", "builtin:photos"),
    "collect.n_images": ("10", 10),
    "collect.positions_per_image": ("all", "all"),
    "collect.batch_size": ("8", 8),
    "layout.fit_sample": ("100", 100),
    "grid.sizes": ("[5]", (5,)),
    "grid.min_count": ("2", 2),
    "render.steps": ("8", 8),
    "render.icon_size": ("32", 32),
    "render.tries": ("2", 2),
    "render.batch_size": ("128", 128),
    "render.precision": ("bf16", "bf16"),
    "device": ("cuda:1", "cuda:1"),
    "output.dir": ("s3://bucket/atlases", "s3://bucket/atlases"),
    "scheduler.upload": ("[factory.py]", (Path("factory.py"),)),
    "seed": ("3", 3),
}
# The training and comparison keys of `atlas train` / `atlas compare` (ExperimentConfig only).
EXPERIMENT_KEYS: dict[str, tuple[str, Any]] = {
    "train.architecture": ("resnet", "resnet"),
    "train.activations": ("[gelu, tanh, Hardswish]", ("gelu", "tanh", "Hardswish")),
    "train.epochs": ("2", 2),
    "train.limit_train_images": ("500", 500),
    "train.dataset": ("torchvision:MNIST", "torchvision:MNIST"),
    "train.test_fraction": ("0.2", 0.2),
    "train.dead_threshold": ("0.01", 0.01),
    "compare.layer": ("layer3.act2", "layer3.act2"),
    "compare.layers": ("[layer1.act2, layer3.act2]", ("layer1.act2", "layer3.act2")),
    "compare.layers_of": ("gelu", "gelu"),
}


def assert_holds(config: Any, dotted: str, expected: Any) -> None:
    """``config`` has ``expected`` at ``dotted``, of the same type (tuples item by item): 1 is not True, "5" not 5."""
    actual = config
    for part in dotted.split("."):
        actual = getattr(actual, part)
    assert actual == expected, (dotted, actual, expected)
    assert type(actual) is type(expected), (dotted, type(actual), type(expected))
    if isinstance(expected, tuple):
        assert [type(a) for a in actual] == [type(e) for e in expected], (dotted, actual)


def test_every_documented_key_is_settable() -> None:
    config = load_config(None, [f"{k}={text}" for k, (text, _) in DOCUMENTED_KEYS.items()])
    assert isinstance(config, AtlasConfig)
    for dotted, (_, expected) in DOCUMENTED_KEYS.items():
        assert_holds(config, dotted, expected)
    assert config.collect.positions_per_image == "all"
    assert config.model.trust_pickle is True


def test_every_training_and_comparison_key_is_settable() -> None:
    keys = {**DOCUMENTED_KEYS, **EXPERIMENT_KEYS}  # an experiment takes every atlas key too
    config = load_config(None, [f"{k}={text}" for k, (text, _) in keys.items()], ExperimentConfig)
    assert isinstance(config, ExperimentConfig)
    for dotted, (_, expected) in keys.items():
        assert_holds(config, dotted, expected)
    with pytest.raises(AtlasError, match="'train' is unknown"):
        load_config(None, ["train.epochs=2"])  # the plain atlas config has no training section


def test_shipped_configs_validate() -> None:
    for path in sorted((REPO / "configs").glob("*.yaml")):
        if path.name.startswith(("compare", "train")):
            continue
        config = load_config(path)
        assert config.output.name == path.stem


def test_unreadable_yaml_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(AtlasError, match="not valid YAML"):
        load_config(bad)
