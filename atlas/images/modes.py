"""Bring any Pillow image to the two modes the rest of atlas handles: 8-bit "RGB" or "L".

Models see either three channels or one, so every source funnels its images
through :func:`to_8bit` and nothing downstream checks modes again. Grayscale
stays grayscale (a 1-channel model should not see an RGB copy of it), and
transparency is flattened onto white, the way the image looks in a viewer.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

_GRAY_HIGH_DEPTH = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
_GRAY_WITH_ALPHA = frozenset({"LA", "La"})
_COLOUR_WITH_ALPHA = frozenset({"RGBA", "RGBa", "PA"})


def to_8bit(image: Image.Image) -> Image.Image:
    """Return ``image`` as 8-bit "RGB" or "L" (a new image unless it already is one)."""
    mode = image.mode
    has_transparency = "transparency" in image.info
    if mode in ("RGB", "L") and not has_transparency:
        return image
    if mode == "1":
        return image.convert("L")
    if mode in _GRAY_HIGH_DEPTH:
        return _scale_to_8bit(image)
    if mode in _GRAY_WITH_ALPHA or (mode == "L" and has_transparency):
        return _on_white(image.convert("LA"), "L")
    if mode in _COLOUR_WITH_ALPHA or (mode in ("P", "RGB") and has_transparency):
        return _on_white(image.convert("RGBA"), "RGB")
    return image.convert("RGB")  # P, CMYK, YCbCr, LAB, HSV, ...


def _on_white(image: Image.Image, mode: str) -> Image.Image:
    """Composite an image with an alpha channel onto a white background."""
    background = Image.new(mode, image.size, 255 if mode == "L" else (255, 255, 255))
    background.paste(image.convert(mode), mask=image.getchannel("A"))
    return background


def _scale_to_8bit(image: Image.Image) -> Image.Image:
    """Map 16/32-bit integer or float grayscale to 0..255.

    Integers inside 0..65535 are read as 16-bit samples (divide by 257, so a
    dark 16-bit photo stays dark); floats inside 0..1 or 0..255 keep that
    scale; anything else (negative, wider range) is stretched over its own
    finite min..max.
    """
    values = np.asarray(image).astype(np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return Image.new("L", image.size, 0)
    low, high = float(values[finite].min()), float(values[finite].max())
    if image.mode == "F" and low >= 0.0 and high <= 1.0:
        lo, scale = 0.0, 255.0
    elif image.mode == "F" and low >= 0.0 and high <= 255.0:
        lo, scale = 0.0, 1.0
    elif image.mode != "F" and low >= 0.0 and high <= 65535.0:
        lo, scale = 0.0, 1.0 / 257.0
    else:
        lo, scale = low, (255.0 / (high - low) if high > low else 0.0)
    scaled = np.where(finite, (values - lo) * scale, 0.0)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))
