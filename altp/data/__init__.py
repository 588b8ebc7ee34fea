"""Data layer: GranD-f GCG splits (:mod:`altp.data.grandf`) and the formats beside them: prediction files
(:mod:`altp.data.predictions`), RLE checks (:mod:`altp.data.rle`), generated splits."""

from altp.data.grandf import (
    SPLITS,
    GrandfAnnotations,
    GrandfFormatError,
    GrandfSplit,
    ImageLoadError,
    Sample,
)

__all__ = [
    "SPLITS",
    "GrandfAnnotations",
    "GrandfFormatError",
    "GrandfSplit",
    "ImageLoadError",
    "Sample",
]
