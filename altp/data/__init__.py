"""Data layer: GranD-f GCG splits (:mod:`altp.data.grandf`)."""

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
