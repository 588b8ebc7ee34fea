"""Checks that a COCO RLE mask decodes, without decoding it to pixels.

pycocotools accepts a corrupt compressed ``counts`` string in ``area`` and
``iou`` (it computes numbers from whatever runs it parses) and only its
``decode`` notices, so a prediction or GT mask that does not decode would be
scored as something. :func:`rle_problem` parses the counts exactly as
pycocotools' ``rleFrString`` does (vectorised) and checks what ``decode``
needs: every run is non-negative and the runs cover ``H * W`` pixels.

Compressed counts: each run is a signed LEB128-like number in 5-bit groups,
written as ASCII characters ``48 + group`` (``'0'`` to ``'o'``), bit 0x20
meaning "more groups follow"; from the fourth run on, a run is stored as the
difference to the run two before it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["compressed_runs", "rle_problem"]


def compressed_runs(counts: str | bytes) -> np.ndarray:
    """The run lengths a compressed counts string encodes (int64, may be negative if corrupt).

    Raises:
        ValueError: a character outside ``'0'..'o'`` or a number cut off at the end.
    """
    raw = np.frombuffer(counts.encode("ascii") if isinstance(counts, str) else bytes(counts), np.uint8)
    if raw.size == 0:
        return np.zeros(0, np.int64)
    c = raw.astype(np.int64) - 48
    if (c < 0).any() or (c > 63).any():
        raise ValueError("counts has characters outside '0'..'o'")
    more = (c & 0x20) != 0
    if more[-1]:
        raise ValueError("counts ends in the middle of a number")
    ends = np.flatnonzero(~more)
    starts = np.concatenate([[0], ends[:-1] + 1])
    pos = np.arange(c.size) - np.repeat(starts, ends - starts + 1)  # group index within its number
    if pos.max() >= 12:
        raise ValueError("counts has a number longer than 60 bits")
    values = np.add.reduceat((c & 0x1F) << (5 * pos), starts)
    last_pos = pos[ends]
    negative = (c[ends] & 0x10) != 0
    values = np.where(negative, values - (np.int64(1) << (5 * (last_pos + 1))), values)
    runs = values.copy()
    # rleFrString's cnts[m] = x + cnts[m-2] for m > 2: a running sum from index 3 (odd runs)
    # and from index 4 (even runs), each continuing from the run two before it
    for start in (3, 4):
        if runs.size > start:
            runs[start::2] = np.cumsum(values[start::2]) + runs[start - 2]
    return runs


def rle_problem(rle: Any) -> str | None:
    """Why ``rle`` (``{"size": [H, W], "counts": str | bytes | list}``) would not decode, or None."""
    if not isinstance(rle, dict):
        if isinstance(rle, list):
            return "a polygon (a list of coordinates), not an RLE dict {size, counts}"
        return f"not an RLE dict {{size, counts}} but {type(rle).__name__}"
    size, counts = rle.get("size"), rle.get("counts")
    if (not isinstance(size, list | tuple) or len(size) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in size)):
        return f"size must be [height, width] of non-negative integers, got {size!r}"
    if isinstance(counts, list):
        if not all(isinstance(n, int) and not isinstance(n, bool) for n in counts):
            return "uncompressed counts must be integers"
        runs = np.asarray(counts, np.int64)
    elif isinstance(counts, str | bytes):
        try:
            runs = compressed_runs(counts)
        except (ValueError, UnicodeEncodeError) as err:
            return f"counts does not decode ({err})"
    else:
        return f"counts must be a string or a list, got {type(counts).__name__}"
    if (runs < 0).any():
        return "counts does not decode (a negative run length)"
    if int(runs.sum()) != size[0] * size[1]:
        return f"counts does not decode (runs cover {int(runs.sum())} pixels, size {size[0]}x{size[1]} has {size[0] * size[1]})"
    return None
