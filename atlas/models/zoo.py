"""Small CNNs for 1-channel 28 px images (Fashion-MNIST), loadable as ``atlas.models.zoo:fashion_cnn``.

The activation is a constructor argument so the same architecture can be trained
with different nonlinearities and their atlases compared. Activations are never
in-place: atlas hooks capture layer outputs, and an in-place op after a hooked
layer would overwrite what was captured.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from functools import lru_cache

from torch import nn

from atlas.errors import AtlasError

# Short names people type; any other torch.nn activation class name also works.
ACTIVATION_ALIASES: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "mish": nn.Mish,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}
# Activations that mix channels, change shape or need arguments are not pointwise nonlinearities.
_NOT_POINTWISE = {"MultiheadAttention", "Softmax", "Softmin", "LogSoftmax", "Softmax2d", "GLU", "Threshold"}


def _squash(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "")


@lru_cache(maxsize=1)
def _torch_activations() -> dict[str, type[nn.Module]]:
    """Every pointwise activation class in ``torch.nn`` that builds with no arguments, keyed by squashed name."""
    from torch.nn.modules import activation

    found: dict[str, type[nn.Module]] = {}
    for name in activation.__all__:
        cls = getattr(nn, name, None)
        if cls is None or name in _NOT_POINTWISE:
            continue
        required = [
            p for p in inspect.signature(cls).parameters.values()
            if p.default is inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
        if not required:
            found[_squash(name)] = cls
    return found


def activation_names() -> list[str]:
    """Valid names for :func:`make_activation`: the short aliases, then the torch.nn class names."""
    aliased = {cls for cls in ACTIVATION_ALIASES.values()}
    others = sorted(cls.__name__ for cls in _torch_activations().values() if cls not in aliased)
    return [*ACTIVATION_ALIASES, *others]


def make_activation(name: str) -> nn.Module:
    """A fresh, non-in-place activation module from a name such as ``relu``, ``leaky_relu`` or ``Hardswish``."""
    key = name.strip().lower().replace("-", "_")
    cls = ACTIVATION_ALIASES.get(key) or _torch_activations().get(_squash(key))
    if cls is None:
        raise AtlasError(f"activation {name!r} is unknown; valid names: {', '.join(activation_names())}")
    return cls()


class FashionCNN(nn.Module):
    """Compact VGG-style classifier: conv32-conv32-pool-conv64-conv64-pool-conv128-GAP-linear (~140k params).

    A class at module level (not a closure) so ``torch.save(model)`` files can be unpickled.
    BatchNorm after every convolution lets saturating activations (sigmoid, tanh) train too.
    """

    def __init__(self, activation: str = "relu", num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.activation = activation
        widths = [(in_channels, 32), (32, 32), "pool", (32, 64), (64, 64), "pool", (64, 128)]
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        conv = pool = 0
        for width in widths:
            if width == "pool":
                pool += 1
                layers[f"pool{pool}"] = nn.MaxPool2d(2)
                continue
            conv += 1
            cin, cout = width
            layers[f"conv{conv}"] = nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=False)
            layers[f"bn{conv}"] = nn.BatchNorm2d(cout)
            layers[f"act{conv}"] = make_activation(activation)
        self.features = nn.Sequential(layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(128, num_classes)

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.classifier(self.flatten(self.pool(self.features(x))))


def fashion_cnn(activation: str = "relu", num_classes: int = 10) -> nn.Module:
    """The Fashion-MNIST CNN; ``features.act5`` (128 x 7 x 7 at 28 px) is the natural atlas layer."""
    return FashionCNN(activation=activation, num_classes=num_classes)
