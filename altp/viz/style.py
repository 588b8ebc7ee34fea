"""Shared look of every figure: one colour per pruner, the synthetic-data label, saving.

Figures are built on :class:`matplotlib.figure.Figure` directly (no pyplot state,
no display needed), rendered by the Agg backend.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib import colormaps
from matplotlib.figure import Figure

from altp.pruner_order import PRUNER_ORDER

__all__ = ["SYNTHETIC_LABEL", "is_synthetic", "pruner_colour", "save"]

SYNTHETIC_LABEL = "SYNTHETIC benchmark / small model (not GranD-f)"
_SYNTHETIC_WORDS = ("synthetic", "shapes", "tiny")  # the rule eval.tables labels its tables by
# Each pruner of the display order (unpruned first) has a fixed tab10 colour so every figure agrees.
_TAB10 = colormaps["tab10"]
_COLOURS = {"none": (0.2, 0.2, 0.2, 1.0), **{name: _TAB10(i) for i, name in enumerate(PRUNER_ORDER[1:])},
            # ALTP / DDC at the LLM input: the dark variants of tab20, apart from the nine above
            "ddc@input": colormaps["tab20b"](2), "altp@input": colormaps["tab20b"](14)}


def is_synthetic(*names: str) -> bool:
    """True when a model or data name marks a synthetic benchmark or a small stand-in model."""
    return any(w in " ".join(names).lower() for w in _SYNTHETIC_WORDS)


def pruner_colour(name: str) -> tuple[float, float, float, float]:
    """The pruner's RGBA colour (unknown names get a stable colour from tab10's remaining slots)."""
    if name in _COLOURS:
        return _COLOURS[name]
    return _TAB10(6 + sum(map(ord, name)) % 4)


def save(fig: Figure, out: Path, *, formats: tuple[str, ...] = ("png",), dpi: int = 120) -> list[Path]:
    """Write ``fig`` as ``out`` with each suffix in ``formats``; returns the paths written."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = out.with_suffix(f".{fmt}")
        # A fixed date keeps the PDF bytes the same from one build to the next.
        meta = {"CreationDate": None} if fmt == "pdf" else {"Software": None} if fmt == "png" else {}
        fig.savefig(path, dpi=dpi, metadata=meta)
        paths.append(path)
    return paths
