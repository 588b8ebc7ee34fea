"""The pixels each model family's vision tower sees, with numpy and PIL only.

Kept free of torch and transformers so that tools which draw on these pixels
(token maps, superpixel overlays) need not import a model. The model adapters
use the same functions, so a drawing can never drift from what the model saw.

* GLaMM: CLIP's resize of the shortest side to 336 + centre crop
  (:func:`clip_resize_crop`); its 24 x 24 grid of 14 px patches tiles the crop.
* OMG-LLaVA: pad to a square with the mean colour, bicubic resize to 1024
  (:func:`omg_square_pixels`); its 16 x 16 pixel tokens tile that square.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = ["MAX_RESIZED_PIXELS", "OMG_IMAGE_SIZE", "OMG_PAD_COLOUR", "UnprocessableImageError", "check_resizes",
           "clip_geometry", "clip_resize_crop", "expand_to_square", "omg_square_pixels"]

OMG_IMAGE_SIZE = 1024
# int(m * 255) of OMG-LLaVA's truncated CLIP mean (0.4814, 0.4578, 0.4082), as upstream truncates.
OMG_PAD_COLOUR = (122, 116, 104)
# The largest intermediate image a preprocessing step may make (537 M px, 1.6 GB of uint8 RGB):
# a 20000 x 20 image padded to OMG-LLaVA's square (400 M px) still passes, a 100000 x 1 one
# (10^10 px) is refused before it exhausts the memory.
MAX_RESIZED_PIXELS = 2**29


class UnprocessableImageError(ValueError):
    """An image a model cannot take (a side that resizes to zero pixels, an intermediate image too
    large to hold): the runner records it as a failed image with this message, never a crash."""


def check_resizes(width: int, height: int, resizes: dict[str, tuple[int, int]]) -> None:
    """Raise :class:`UnprocessableImageError` if a resize of a ``width x height`` image is degenerate.

    Args:
        width, height: the image's size.
        resizes: step name -> the ``(w, h)`` it resizes the image to (e.g. ``{"SAM's resize": (1024, 1)}``).
    """
    for step, (w, h) in resizes.items():
        if w < 1 or h < 1:
            raise UnprocessableImageError(
                f"a {width}x{height} image: {step} makes it {w}x{h} px; the model cannot take an aspect "
                f"ratio this extreme (crop or pad the image)")
        if w * h > MAX_RESIZED_PIXELS:
            raise UnprocessableImageError(
                f"a {width}x{height} image: {step} makes it {w}x{h} px, more than {MAX_RESIZED_PIXELS:,} px; "
                f"the model cannot take an aspect ratio this extreme (crop or pad the image)")


def clip_resize_crop(image: Image.Image, size: int) -> np.ndarray:
    """CLIPImageProcessor's resize + centre crop, without normalisation.

    Shortest side -> ``size`` (long side ``int(size * long / short)``, PIL
    bicubic), then a centre crop of ``size x size`` with the top-left corner at
    ``((h - size) // 2, (w - size) // 2)``.

    Returns:
        (size, size, 3) uint8 RGB.
    """
    image = image.convert("RGB")
    new_w, new_h, top, left = clip_geometry(image.width, image.height, size)
    arr = np.asarray(image.resize((new_w, new_h), Image.Resampling.BICUBIC))
    return arr[top : top + size, left : left + size].copy()  # writable, contiguous


def clip_geometry(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """``(new_w, new_h, top, left)`` of :func:`clip_resize_crop` on a ``width x height`` image.

    The resized image is ``new_w x new_h``; the crop's top-left corner is ``(top, left)`` in it.
    """
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    return new_w, new_h, (new_h - size) // 2, (new_w - size) // 2


def expand_to_square(image: Image.Image, colour: tuple[int, ...] = OMG_PAD_COLOUR) -> Image.Image:
    """Pad the shorter side with ``colour``, original centred (offset ``(side - size) // 2``)."""
    w, h = image.size
    if w == h:
        return image
    side = max(w, h)
    out = Image.new(image.mode, (side, side), colour)
    out.paste(image, ((side - w) // 2, (side - h) // 2))
    return out


def omg_square_pixels(image: Image.Image, size: int = OMG_IMAGE_SIZE) -> np.ndarray:
    """(size, size, 3) uint8: the mean-colour square padding, bicubic-resized, as OMG-Seg sees it."""
    square = expand_to_square(image.convert("RGB"))
    return np.asarray(square.resize((size, size), resample=Image.Resampling.BICUBIC)).copy()
