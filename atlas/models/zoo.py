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
from typing import cast

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
            p
            for p in inspect.signature(cls).parameters.values()
            if p.default is inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
        if not required:
            found[_squash(name)] = cls
    return found


def activation_names() -> list[str]:
    """Valid names for :func:`make_activation`: the short aliases, then the torch.nn class names."""
    aliased = set(ACTIVATION_ALIASES.values())
    others = sorted(cls.__name__ for cls in _torch_activations().values() if cls not in aliased)
    return [*ACTIVATION_ALIASES, *others]


def make_activation(name: str) -> nn.Module:
    """A fresh, non-in-place activation module from a name such as ``relu``, ``leaky_relu`` or ``Hardswish``."""
    key = name.strip().lower().replace("-", "_")
    cls = ACTIVATION_ALIASES.get(key) or _torch_activations().get(_squash(key))
    if cls is None:
        raise AtlasError(f"activation {name!r} is unknown; valid names: {', '.join(activation_names())}")
    return cls()


def _conv_block(cin: int, cout: int, activation: str, batch_norm: bool) -> list[tuple[str, nn.Module]]:
    """conv (+ BN) + activation; the conv keeps its bias only when no BN follows to absorb it."""
    block: list[tuple[str, nn.Module]] = [("conv", nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=not batch_norm))]
    if batch_norm:
        block.append(("bn", nn.BatchNorm2d(cout)))
    block.append(("act", make_activation(activation)))
    return block


class FashionCNN(nn.Module):
    """Compact VGG-style classifier: conv-conv-pool-conv-conv-pool-conv-GAP-linear (~140k params at width 32).

    A class at module level (not a closure) so ``torch.save(model)`` files can be unpickled.
    BatchNorm after every convolution lets saturating activations (sigmoid, tanh) train easily;
    without it (``batch_norm=False``) each activation's own behaviour shows, which is what a
    comparison of activations wants.
    """

    def __init__(
        self, activation: str = "relu", num_classes: int = 10, in_channels: int = 1, width: int = 32, batch_norm: bool = True
    ) -> None:
        super().__init__()
        self.activation = activation
        plan = [(in_channels, width), (width, width), "pool", (width, 2 * width), (2 * width, 2 * width), "pool", (2 * width, 4 * width)]
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        conv = pool = 0
        for step in plan:
            if step == "pool":
                pool += 1
                layers[f"pool{pool}"] = nn.MaxPool2d(2)
                continue
            conv += 1
            cin, cout = cast(tuple[int, int], step)
            for part, module in _conv_block(cin, cout, activation, batch_norm):
                layers[f"{part}{conv}"] = module
        self.features = nn.Sequential(layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(4 * width, num_classes)

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.classifier(self.flatten(self.pool(self.features(x))))


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs); the sum passes through its own activation module ``act2``."""

    def __init__(self, cin: int, cout: int, stride: int, activation: str, batch_norm: bool) -> None:
        super().__init__()
        norm = nn.BatchNorm2d if batch_norm else (lambda _c: nn.Identity())
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=not batch_norm)
        self.bn1 = norm(cout)
        self.act1 = make_activation(activation)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=not batch_norm)
        self.bn2 = norm(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=not batch_norm), norm(cout))
        self.act2 = make_activation(activation)

    def forward(self, x):  # type: ignore[no-untyped-def]
        out = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        return self.act2(out + self.shortcut(x))


class SmallResNet(nn.Module):
    """A small ResNet for 28-32 px images: stem, then three stages of one basic block (widths w, 2w, 4w)."""

    def __init__(
        self, activation: str = "relu", num_classes: int = 10, in_channels: int = 1, width: int = 32, batch_norm: bool = True
    ) -> None:
        super().__init__()
        self.activation = activation
        stem: list[tuple[str, nn.Module]] = _conv_block(in_channels, width, activation, batch_norm)
        self.stem = nn.Sequential(OrderedDict(stem))
        self.layer1 = BasicBlock(width, width, 1, activation, batch_norm)
        self.layer2 = BasicBlock(width, 2 * width, 2, activation, batch_norm)
        self.layer3 = BasicBlock(2 * width, 4 * width, 2, activation, batch_norm)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(4 * width, num_classes)

    def forward(self, x):  # type: ignore[no-untyped-def]
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.classifier(self.flatten(self.pool(x)))


ARCHITECTURES: dict[str, type[nn.Module]] = {"vgg": FashionCNN, "resnet": SmallResNet}
# The layer an atlas of each architecture looks at by default: the last block, 4w x 7 x 7 at 28 px.
DEFAULT_LAYERS = {"vgg": "features.act5", "resnet": "layer3.act2"}


def init_weights(module: nn.Module) -> None:
    """One initialisation scheme for every activation, so a comparison differs only in the nonlinearity.

    Kaiming-normal (fan-in, ReLU gain) for convolutions and the classifier, zero biases, BN at identity.
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def build_classifier(
    architecture: str = "vgg",
    activation: str = "relu",
    num_classes: int = 10,
    in_channels: int = 1,
    width: int = 32,
    batch_norm: bool = True,
) -> nn.Module:
    """One of the comparison architectures with ``activation`` everywhere, initialised by :func:`init_weights`.

    Seed torch before calling for a reproducible initialisation.
    """
    cls = ARCHITECTURES.get(architecture)
    if cls is None:
        raise AtlasError(f"train.architecture {architecture!r} is unknown; valid: {', '.join(ARCHITECTURES)}")
    model = cls(activation=activation, num_classes=num_classes, in_channels=in_channels, width=width, batch_norm=batch_norm)
    init_weights(model)
    return model


def fashion_cnn(activation: str = "relu", num_classes: int = 10) -> nn.Module:
    """The Fashion-MNIST CNN; ``features.act5`` (128 x 7 x 7 at 28 px) is the natural atlas layer."""
    return FashionCNN(activation=activation, num_classes=num_classes)
