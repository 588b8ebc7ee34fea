"""Where a model's visual tokens sit on its input image: the one dispatch per model family.

Token ``i`` of a ``rows x cols`` grid covers row ``i // cols``, column
``i % cols`` of the square input the vision tower sees (row-major, the order of
the visual tokens and of ``kept_tokens`` in the run records).

* GLaMM (``altp.models.glamm*``): CLIP resize of the shortest side to 336 +
  centre crop, 24 x 24 tokens of 14 px.
* OMG-LLaVA (``altp.models.omg_llava*``): padded to a square with the mean
  colour, resized to 1024, 16 x 16 pixel tokens of 64 px.

A new model family is one entry in ``_FAMILIES`` and one in ``_TARGETS``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from altp.models.pixels import OMG_IMAGE_SIZE, clip_resize_crop, omg_square_pixels

__all__ = ["TokenGeometry", "geometry_for"]


@dataclass(frozen=True)
class TokenGeometry:
    """A model family's visual-token layout.

    Attributes:
        family: ``"glamm"`` or ``"omg_llava"``.
        grid: (rows, cols) of the token grid.
        input_size: side in pixels of the square input the tokens tile.
        pixels: original PIL image -> (input_size, input_size, 3) uint8, exactly the model's.
        input_note: how the input is made, for figure captions.
    """

    family: str
    grid: tuple[int, int]
    input_size: int
    pixels: Callable[[Image.Image], np.ndarray]
    input_note: str

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def cell(self) -> int:
        """Side of one token's cell in input pixels."""
        return self.input_size // self.grid[0]


_FAMILIES: dict[str, TokenGeometry] = {
    "glamm": TokenGeometry(
        family="glamm", grid=(24, 24), input_size=336, pixels=lambda im: clip_resize_crop(im, 336),
        input_note="CLIP input: shortest side 336 px, centre crop; 24x24 tokens of 14 px",
    ),
    "omg_llava": TokenGeometry(
        family="omg_llava", grid=(16, 16), input_size=OMG_IMAGE_SIZE, pixels=omg_square_pixels,
        input_note="OMG-LLaVA input: mean-colour square padding, 1024 px; 16x16 pixel tokens of 64 px",
    ),
}  # fmt: skip
# Model builder module prefix (the config's ``_target_``) -> family.
_TARGETS = (("altp.models.glamm", "glamm"), ("altp.models.omg_llava", "omg_llava"))


def geometry_for(model_cfg: Mapping[str, Any]) -> TokenGeometry:
    """The token geometry of the model a run's config names (by its ``_target_``).

    Raises:
        ValueError: the builder belongs to no known family (says where to add one).
    """
    target = str(model_cfg.get("_target_", ""))
    for prefix, family in _TARGETS:
        if target.startswith(prefix):
            return _FAMILIES[family]
    raise ValueError(
        f"no token geometry for model _target_ {target!r}; known families: {', '.join(_FAMILIES)} "
        "(add the model's input pixels and grid in altp/viz/geometry.py)"
    )
