"""Shared fixtures: small real data, made once per session."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image

FASHION_DEBIAN = Path("/usr/share/datasets/fashion-mnist")
REPO = Path(__file__).resolve().parents[1]


def _environment_outside_the_repository() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


@pytest.fixture
def outside_env() -> dict[str, str]:
    """This process's environment without what points Python at the repository or at this virtual environment."""
    return _environment_outside_the_repository()


@pytest.fixture(scope="session")
def built_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built once from a copy of the sources.

    A copy, because an in-tree build leaves build/ in the repository and a later build would pack its stale files.
    """
    sources = tmp_path_factory.mktemp("sources")
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for folder in ("atlas", "pipelines"):
        shutil.copytree(REPO / folder, sources / folder, ignore=skip)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, sources / name)
    wheels = tmp_path_factory.mktemp("wheels")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(sources)],
        check=True, capture_output=True, env=_environment_outside_the_repository(),
    )  # fmt: skip
    (wheel,) = wheels.glob("activation_atlas-*.whl")
    return wheel


@pytest.fixture(scope="session")
def photo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder tree of real photos (scikit-image's) in several formats, plus broken files."""
    from skimage import data

    root = tmp_path_factory.mktemp("photos")
    (root / "animals" / "cats").mkdir(parents=True)
    (root / "things").mkdir()
    photos = {"chelsea": data.chelsea(), "coffee": data.coffee(), "astronaut": data.astronaut(), "rocket": data.rocket()}
    for n, (name, pixels) in enumerate(photos.items()):
        image = Image.fromarray(pixels)
        folder = root / ("animals/cats" if name == "chelsea" else "things")
        for k, box in enumerate([(0, 0, 200, 200), (50, 20, 290, 260), (100, 40, 300, 240)]):
            crop = image.crop(box)
            crop.save(folder / f"{name}_{k}.jpg", quality=90)
            crop.convert("P").save(folder / f"{name}_{k}_palette.png") if k == 0 else None
        image.convert("CMYK").save(root / f"{name}_cmyk.jpg") if n == 0 else None
    (root / "broken_truncated.jpg").write_bytes((root / "things" / "coffee_0.jpg").read_bytes()[:600])
    (root / "broken_text.jpg").write_text("this is not a JPEG")
    (root / "empty.png").write_bytes(b"")
    (root / "notes.txt").write_text("not an image at all")
    return root


@pytest.fixture(scope="session")
def fashion_available() -> bool:
    return (FASHION_DEBIAN / "t10k-images-idx3-ubyte.gz").exists()


def _train_one_epoch(model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.nn.Module:
    """One pass of Adam in batches of 64: brief, but a real classifier's features."""
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    for start in range(0, len(images), 64):
        loss = torch.nn.functional.cross_entropy(model(images[start : start + 64]), targets[start : start + 64])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model


@pytest.fixture(scope="session")
def one_epoch() -> Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.nn.Module]:
    """``one_epoch(model, images, targets)``: one pass of Adam in batches of 64, for the tests that train a small net."""
    return _train_one_epoch


@pytest.fixture(scope="session")
def fashion_weights(fashion_available: bool, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The zoo CNN briefly trained on real Fashion-MNIST images (one epoch of 4,096), its state dict saved; and the
    dataset's root. Once per session, for the tests that ask for it."""
    if not fashion_available:
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    from atlas.images import open_source
    from atlas.models.zoo import fashion_cnn

    root = tmp_path_factory.mktemp("datasets")
    dataset = open_source("torchvision:FashionMNIST", root=root).dataset()  # type: ignore[attr-defined]
    images = dataset.data[:4096].float().div(255).sub(0.5).div(0.5).unsqueeze(1)
    targets = dataset.targets[:4096]
    torch.manual_seed(0)
    model = _train_one_epoch(fashion_cnn(), images, targets)
    weights = root / "fashion_cnn.pt"
    torch.save(model.state_dict(), weights)
    return weights, root


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread (``pytestmark = pytest.mark.usefixtures("one_thread")``): deterministic sums, and no OpenMP spin-waits when other jobs share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def trained_tiny_vit(fashion_available: bool, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny ViT (GELU, 4 blocks of 64-channel tokens) trained on 6,000 real Fashion-MNIST images, as a variant folder.

    The folder is a model spec (``ModelConfig(spec=str(folder), ...)``); its ``metrics.json`` holds the test accuracy
    on 1,000 test images (about 0.7). Trained once per session, only by a test that asks for it (20 to 60 s on one core).
    """
    if not fashion_available:
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    from atlas.config import TrainConfig
    from atlas.train.trainer import train_variant
    from atlas_pipelines.commands.train import schedule_of, training_data, variant_for

    config = TrainConfig(architecture="vit", limit_train_images=6000, limit_test_images=1000, epochs=2, batch_size=32)
    data = training_data(config, log=lambda _m: None)
    folder = tmp_path_factory.mktemp("tiny-vit") / "gelu"
    train_variant(variant_for(config, "gelu", data), data, schedule_of(config), folder)
    return folder
