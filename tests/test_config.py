"""Config validation: unknown keys and bad values fail with one line naming the key."""

from pathlib import Path

import pytest

from atlas.config import AtlasConfig, load_config
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


def test_every_documented_key_is_settable() -> None:
    keys = {
        "model.spec": "timm:resnet18", "model.layer": "layer3", "model.weights": "w.pt", "model.classes": "c.txt",
        "model.input_size": 64, "model.channels": 1, "model.mean": "[0.5]", "model.std": "[0.5]",
        "model.trust_pickle": "true", "images.source": "builtin:photos", "collect.n_images": 10,
        "collect.positions_per_image": "all", "collect.batch_size": 8, "layout.fit_sample": 100,
        "grid.sizes": "[5]", "grid.min_count": 2, "render.steps": 8, "render.icon_size": 32, "render.tries": 2,
        "output.dir": "elsewhere", "seed": 3,
    }  # fmt: skip
    config = load_config(None, [f"{k}={v}" for k, v in keys.items()])
    assert isinstance(config, AtlasConfig)
    assert config.collect.positions_per_image == "all"
    assert config.model.trust_pickle is True


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
