"""Dataset examples: the patch of a real image around the position an activation was sampled at.

A layer of spatial size H x W on a model input of S x S pixels (the image
after the model's own resize and centre crop, ``fit_square``) has a stride of
S/H rows and S/W columns. Position (y, x) of the layer is centred at
``((y + 0.5) * S / H, (x + 0.5) * S / W)`` in that input frame. The patch is a
square of ``PATCH_STRIDES`` strides around that centre: about the region whose
pixels dominate the activation (the effective receptive field is much smaller
than the theoretical one). Near the border the square is shifted to stay
inside the frame, never shrunk, unless it is larger than the frame itself.
Patches keep the input's resolution and the model's colour mode (grayscale for
one-channel models), saved as JPEG. A class-token row (``collect.class_token``,
at y = x = -1) reads the whole image: its example is the whole input frame,
resized to the side a position's patch has, so it shows beside them at their scale.
"""

from __future__ import annotations

import io
from collections.abc import Iterable

from PIL import Image

from atlas.bundle import BundleWriter, patch_file
from atlas.images.preprocess import fit_square
from atlas.models.layouts import CLASS_TOKEN_POSITION

PATCH_STRIDES = 3.0
PATCH_QUALITY = 90


def patch_box(y: int, x: int, layer_hw: tuple[int, int], input_size: int, strides: float = PATCH_STRIDES) -> tuple[int, int, int, int]:
    """``(left, top, right, bottom)`` of the patch around layer position (y, x), in input pixels."""
    height, width = layer_hw
    stride_y, stride_x = input_size / height, input_size / width
    side = max(1, min(input_size, round(strides * max(stride_y, stride_x))))
    centre_y, centre_x = (y + 0.5) * stride_y, (x + 0.5) * stride_x
    top = min(max(round(centre_y - side / 2), 0), input_size - side)
    left = min(max(round(centre_x - side / 2), 0), input_size - side)
    return left, top, left + side, top + side


def patch_of(frame: Image.Image, y: int, x: int, layer_hw: tuple[int, int], input_size: int) -> Image.Image:
    """The example of layer position (y, x) cut from the model's input ``frame``; a class token's is the whole frame."""
    if y == CLASS_TOKEN_POSITION and x == CLASS_TOKEN_POSITION:
        left, top, right, bottom = patch_box(0, 0, layer_hw, input_size)
        return frame.resize((right - left, bottom - top), Image.Resampling.LANCZOS)
    return frame.crop(patch_box(y, x, layer_hw, input_size))


def model_view(image: Image.Image, input_size: int, channels: int) -> Image.Image:
    """The image as the model saw it: short side resized to ``input_size``, centre square, L or RGB."""
    square = fit_square(image, input_size)
    return square.convert("L") if channels == 1 else square.convert("RGB")


def save_patches(
    bundle: BundleWriter,
    image: Image.Image,
    image_id: int,
    positions: Iterable[tuple[int, int]],
    layer_hw: tuple[int, int],
    input_size: int,
    channels: int,
) -> list[str]:
    """Write the patch of every ``(y, x)`` of one image; returns their bundle paths."""
    frame = model_view(image, input_size, channels)
    written = []
    for y, x in positions:
        buffer = io.BytesIO()
        patch_of(frame, y, x, layer_hw, input_size).save(buffer, format="JPEG", quality=PATCH_QUALITY)
        name = patch_file(image_id, y, x)
        bundle.write_patch(name, buffer.getvalue())
        written.append(name)
    return written
