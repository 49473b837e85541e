"""How pixels are fed to a model: read from the model's library where it knows, inferred otherwise, then overridden.

Order of authority, lowest first:

1. defaults from the first ``Conv2d``'s channels: 1-channel models get 28 px and
   mean = std = 0.5 (Fashion-MNIST-sized), 3-channel models 224 px and ImageNet mean/std;
2. what the source knows: torchvision weights' transforms, timm's data config
   (:func:`timm.data.resolve_model_data_config`) for any module carrying a timm
   ``pretrained_cfg``, or a spec form's own (built-in model, model card);
3. ``model.input_size`` / ``model.channels`` / ``model.mean`` / ``model.std``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from atlas.errors import AtlasError
from atlas.models.imagenet import IMAGENET_INPUT_SIZE, IMAGENET_MEAN, IMAGENET_STD
from atlas.models.record import ModelFields, Preprocessing

FALLBACK_SMALL_SIZE = 28  # 1-channel models are assumed MNIST-sized unless told otherwise


def imagenet_preprocessing() -> Preprocessing:
    return Preprocessing(input_size=IMAGENET_INPUT_SIZE, channels=3, mean=IMAGENET_MEAN, std=IMAGENET_STD)


def default_preprocessing(channels: int) -> Preprocessing:
    """The guess when nothing says otherwise: ImageNet for RGB, Fashion-MNIST-like for grey."""
    if channels == 3:
        return imagenet_preprocessing()
    size = FALLBACK_SMALL_SIZE if channels == 1 else IMAGENET_INPUT_SIZE
    return Preprocessing(input_size=size, channels=channels, mean=(0.5,) * channels, std=(0.5,) * channels)


def first_conv_channels(module: nn.Module) -> int | None:
    """Input channels of the first ``Conv2d`` in registration order (the stem, for ordinary CNNs)."""
    for sub in module.modules():
        if isinstance(sub, nn.Conv2d):
            return int(sub.in_channels)
    return None


def from_torchvision_weights(weights: Any) -> tuple[Preprocessing, dict[str, str]]:
    """A torchvision weights enum's eval transform: crop size and normalisation, plus resize details as extras."""
    transform = weights.transforms()
    preprocessing = Preprocessing(
        input_size=int(transform.crop_size[0]),
        channels=3,
        mean=tuple(float(v) for v in transform.mean),
        std=tuple(float(v) for v in transform.std),
    )
    extra = {"interpolation": transform.interpolation.value, "resize_size": str(transform.resize_size[0])}
    return preprocessing, extra


def from_timm(module: nn.Module) -> tuple[Preprocessing, dict[str, str]] | None:
    """timm's own data config for a module it built (None for others), plus interpolation and crop as extras.

    Only a module carrying a timm ``pretrained_cfg`` qualifies: timm answers any
    module with ImageNet defaults, which would hide a 1-channel model's real needs.
    """
    cfg = getattr(module, "pretrained_cfg", None)
    if not isinstance(cfg, Mapping) or not cfg.get("input_size"):
        return None
    from timm.data import resolve_model_data_config

    data = resolve_model_data_config(module)
    size = data["input_size"]
    preprocessing = Preprocessing(
        input_size=int(size[-1]),
        channels=int(size[0]),
        mean=tuple(float(v) for v in data["mean"]),
        std=tuple(float(v) for v in data["std"]),
    )
    return preprocessing, {"interpolation": str(data["interpolation"]), "crop_pct": str(data["crop_pct"])}


def final_preprocessing(base: Preprocessing | None, config: ModelFields, module: nn.Module, spec: str) -> Preprocessing:
    """The source's preprocessing (or the inferred one) with ``model.input_size/channels/mean/std`` on top."""
    conv_channels = first_conv_channels(module)
    if base is None:
        timm = from_timm(module)
        base = timm[0] if timm is not None else None
    if base is None:
        base = default_preprocessing(config.channels or conv_channels or 3)
    channels = config.channels or base.channels
    if config.channels is not None and conv_channels is not None and conv_channels != config.channels:
        raise AtlasError(
            f"model.channels is {config.channels} but {spec}'s first convolution takes {conv_channels}; "
            "remove model.channels or use a matching model"
        )
    fallback = base if base.channels == channels else default_preprocessing(channels)
    mean = _per_channel(config.mean, channels, "model.mean") if config.mean is not None else fallback.mean
    std = _per_channel(config.std, channels, "model.std") if config.std is not None else fallback.std
    if any(s <= 0 for s in std):
        raise AtlasError(f"model.std {std} must be positive")
    input_size = config.input_size or fallback.input_size
    return Preprocessing(input_size=int(input_size), channels=int(channels), mean=mean, std=std)


def _per_channel(values: tuple[float, ...], channels: int, key: str) -> tuple[float, ...]:
    """One value for every channel, or exactly one per channel."""
    if len(values) == 1:
        return tuple(float(values[0]) for _ in range(channels))
    if len(values) != channels:
        raise AtlasError(f"{key} has {len(values)} values but the model takes {channels} channels; give 1 or {channels}")
    return tuple(float(v) for v in values)
