"""Small classifiers for 28 px images (Fashion-MNIST): two CNNs and a tiny ViT; ``atlas.models.zoo:fashion_cnn`` loads one.

The activation is a constructor argument so the same architecture can be trained
with different nonlinearities and their atlases compared (in the ViT, the activation
of every MLP). Activations are never in-place: atlas hooks capture layer outputs,
and an in-place op after a hooked layer would overwrite what was captured.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from functools import lru_cache
from typing import cast

import torch
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


VIT_PATCH_SIZE = 4  # px per side of the tiny ViT's patches: 7 x 7 of them on 28 px Fashion-MNIST


def patch_grid(input_size: int, patch_size: int) -> tuple[int, int]:
    """Rows and columns of patches; one line when the patches do not tile the image."""
    if input_size % patch_size:
        raise AtlasError(
            f"train.input_size {input_size} is not a multiple of the vit's {patch_size} px patches; set a multiple of {patch_size}"
        )
    return input_size // patch_size, input_size // patch_size


class PatchEmbedding(nn.Module):
    """Cuts the image into non-overlapping square patches and projects each to one token.

    ``grid_size`` (rows, columns of patches) is named as in timm, so layer-layout code reads both alike.
    """

    def __init__(self, in_channels: int, dim: int, patch_size: int, input_size: int) -> None:
        super().__init__()
        self.grid_size = patch_grid(input_size, patch_size)
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # [B, rows * columns, dim], row-major


class SelfAttention(nn.Module):
    """Multi-head self-attention over all tokens (no mask, no dropout: training stays deterministic)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        q, k, v = self.qkv(x).reshape(batch, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        mixed = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(mixed.transpose(1, 2).reshape(batch, tokens, dim))


class TransformerBlock(nn.Module):
    """Pre-norm block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``; its output is the residual stream, [B, N, dim]."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int, activation: str) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            OrderedDict(
                [("fc1", nn.Linear(dim, mlp_ratio * dim)), ("act", make_activation(activation)), ("fc2", nn.Linear(mlp_ratio * dim, dim))]
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """A tiny vision transformer: 4 x 4 px patches, a class token, learned position embeddings, ``depth`` pre-norm blocks.

    Tokens have ``4 * width`` channels, as many as the CNNs' last block, so ``train.width`` means the same
    atlas width for every architecture (64 at the default 16). The classifier reads the class token after
    a final norm. Position embeddings fix the input size, so ``input_size`` is part of the model.
    ``num_prefix_tokens`` and ``patch_embed.grid_size`` are named as in timm's ViT: block outputs are
    ``[B, 1 + rows * columns, 4 * width]``, the class token first, then the patches row-major.
    """

    num_prefix_tokens = 1

    def __init__(
        self,
        activation: str = "gelu",
        num_classes: int = 10,
        in_channels: int = 1,
        width: int = 16,
        batch_norm: bool = False,
        input_size: int = 28,
        patch_size: int = VIT_PATCH_SIZE,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: int = 4,
    ) -> None:
        super().__init__()
        if batch_norm:
            raise AtlasError("train.batch_norm: the vit normalises with LayerNorm and has no batch norm; set train.batch_norm: false")
        self.activation = activation
        dim = 4 * width
        self.patch_embed = PatchEmbedding(in_channels, dim, patch_size, input_size)
        rows, columns = self.patch_embed.grid_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_prefix_tokens + rows * columns, dim))
        self.blocks = nn.Sequential(*(TransformerBlock(dim, heads, mlp_ratio, activation) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embed(x)
        tokens = torch.cat([self.cls_token.expand(len(patches), -1, -1), patches], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(tokens))[:, 0])


ARCHITECTURES: dict[str, type[nn.Module]] = {"vgg": FashionCNN, "resnet": SmallResNet, "vit": TinyViT}
# The layer an atlas of each architecture looks at by default: the CNNs' last block, 4w x 7 x 7 at 28 px;
# the ViT's third block (of four), 1 + 7 x 7 tokens of 4w channels.
DEFAULT_LAYERS = {"vgg": "features.act5", "resnet": "layer3.act2", "vit": "blocks.2"}
# Which dimension of an activation's input holds its units (channels): the ViT's MLPs act on [B, N, C] tokens.
ACTIVATION_CHANNEL_DIM = {"vgg": 1, "resnet": 1, "vit": -1}
# Architectures built for one input size (the ViT's position embeddings): a model card records it.
FIXED_INPUT_SIZE = frozenset({"vit"})


def check_input_size(architecture: str, input_size: int) -> None:
    """Fails with one line when ``architecture`` cannot take ``input_size`` px images: the ViT's patches must tile them."""
    if architecture == "vit":
        patch_grid(input_size, VIT_PATCH_SIZE)


def init_weights(module: nn.Module) -> None:
    """One initialisation scheme for every activation, so a comparison differs only in the nonlinearity.

    Kaiming-normal (fan-in, ReLU gain) for convolutions and linear layers, zero biases, BN at identity. The ViT's
    class token and position embeddings start at zero. On the tiny ViT this trains faster than timm's truncated
    normal (std 0.02): 0.67 against 0.38 test accuracy after 250 steps on 4,000 Fashion-MNIST images.
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
    input_size: int = 28,
) -> nn.Module:
    """One of the comparison architectures with ``activation`` everywhere, initialised by :func:`init_weights`.

    ``input_size`` matters to the ViT alone (its position embeddings fix it). Seed torch before calling for a
    reproducible initialisation.
    """
    cls = ARCHITECTURES.get(architecture)
    if cls is None:
        raise AtlasError(f"train.architecture {architecture!r} is unknown; valid: {', '.join(ARCHITECTURES)}")
    make_activation(activation)  # an unknown name fails first, listing the valid ones, whatever else is wrong
    sized = {"input_size": input_size} if architecture in FIXED_INPUT_SIZE else {}
    model = cls(activation=activation, num_classes=num_classes, in_channels=in_channels, width=width, batch_norm=batch_norm, **sized)
    init_weights(model)
    return model


def fashion_cnn(activation: str = "relu", num_classes: int = 10) -> nn.Module:
    """The Fashion-MNIST CNN; ``features.act5`` (128 x 7 x 7 at 28 px) is the natural atlas layer."""
    return FashionCNN(activation=activation, num_classes=num_classes)
