"""Models from torchvision and timm by name: their builders, their weights' preprocessing, ImageNet labels.

torchvision and timm are imported inside the builders, so a run that never
names a library model does not pay for importing them.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from atlas.errors import AtlasError
from atlas.models.imagenet import IMAGENET_NUM_CLASSES, imagenet_labels
from atlas.models.messages import closest
from atlas.models.preprocessing import from_timm, from_torchvision_weights, imagenet_preprocessing
from atlas.models.record import Source


def load_torchvision(spec: str, name: str, pretrained: bool) -> Source:
    """``torchvision:NAME``: a classification builder, with its default weights when pretrained."""
    import torchvision.models as tvm

    classifiers = tvm.list_models(module=tvm)
    if name not in classifiers:
        if name in tvm.list_models():
            raise AtlasError(
                f"model.spec {spec!r} is not an image classifier; use one of torchvision.models.list_models(module=torchvision.models)"
            )
        raise AtlasError(f"model.spec {spec!r}: torchvision has no model {name!r}{closest(name, classifiers)}")
    weights = tvm.get_model_weights(name).DEFAULT if pretrained else None
    module = download_guard(spec, lambda: tvm.get_model(name, weights=weights))
    extra = {"source": "torchvision"}
    if weights is None:
        # Every torchvision classification builder defaults to num_classes=1000 (ImageNet).
        return Source(module, imagenet_preprocessing(), list(imagenet_labels()), extra)
    preprocessing, details = from_torchvision_weights(weights)
    extra.update(details)
    categories = weights.meta.get("categories")
    return Source(module, preprocessing, list(categories) if categories else None, extra)


def load_timm(spec: str, name: str, pretrained: bool) -> Source:
    """``timm:NAME``: ``timm.create_model``, preprocessing from timm's data config for that model."""
    import timm

    if not timm.is_model(name):
        raise AtlasError(f"model.spec {spec!r}: timm has no model {name!r}{closest(name, timm.list_models())}")
    module = download_guard(spec, lambda: timm.create_model(name, pretrained=pretrained))
    num_classes = getattr(module, "num_classes", None)
    labels = list(imagenet_labels()) if num_classes == IMAGENET_NUM_CLASSES else None
    extra = {"source": "timm"}
    known = from_timm(module)
    if known is None:
        return Source(module, None, labels, extra)
    preprocessing, details = known
    extra.update(details)
    return Source(module, preprocessing, labels, extra)


def download_guard(spec: str, build: Callable[[], nn.Module]) -> nn.Module:
    """Turn a failed weight download (offline, proxy) into one line that says how to get past it."""
    try:
        return build()
    except OSError as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise AtlasError(
            f"model.spec {spec!r}: could not fetch pretrained weights ({reason}); go online once or set model.pretrained: false"
        ) from None
