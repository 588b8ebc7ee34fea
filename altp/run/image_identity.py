"""Which images changed since their predictions were made: a per-file identity, cached in the run directory.

The fingerprint (:mod:`altp.run.fingerprint`) covers the image list (ids and file names), not the
image bytes: hashing a 7,500-image split at every resume would cost a full read of it. This
module closes the gap cheaply. ``image_identities.json`` in the run directory holds, per image,
its file's size, modification time and BLAKE2b hash as of the last run; at a resume a file whose
size and mtime are unchanged keeps its hash (a ``stat`` per file, as git's index does), any other
file is hashed again, and an image whose hash differs from the recorded one is stale: its record
and prediction are deleted so the run predicts it again. Kept apart from ``fingerprint.json`` on
purpose: a changed image re-runs that image, it does not refuse the whole directory.

A run directory without the file (made before it existed) records today's identities and trusts
its predictions, as before.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from altp.data.grandf import Sample
from altp.data.predictions import prediction_path
from altp.provenance import write_json_atomic

__all__ = ["IDENTITY_FILE", "file_hash", "stale_images"]

IDENTITY_FILE = "image_identities.json"

log = logging.getLogger(__name__)


def file_hash(path: Path) -> str:
    """BLAKE2b (128 bit) of a file's bytes, hex."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, lambda: hashlib.blake2b(digest_size=16)).hexdigest()


def _identity(path: Path, cached: dict[str, Any] | None) -> dict[str, Any] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None  # missing: the load records it as a failed image
    if cached and cached.get("size") == st.st_size and cached.get("mtime_ns") == st.st_mtime_ns:
        return cached
    return {"file": path.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "blake2b": file_hash(path)}


def stale_images(samples: list[Sample], out_dir: Path) -> list[str]:
    """Ids of ``samples`` whose image file changed since the run last saw it; their files are deleted.

    Updates ``out_dir / image_identities.json`` (after deleting the stale files, so a run killed
    in between finds them stale again).
    """
    path = out_dir / IDENTITY_FILE
    try:
        recorded = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (UnicodeDecodeError, json.JSONDecodeError):
        recorded = {}  # torn: rehash everything, trust nothing that cannot be compared
    if not isinstance(recorded, dict):
        recorded = {}
    current = dict(recorded)
    stale = []
    for sample in samples:
        old = recorded.get(sample.image_id)
        new = _identity(sample.image_path, old if isinstance(old, dict) else None)
        if new is None:
            continue
        current[sample.image_id] = new
        if isinstance(old, dict) and old.get("blake2b") != new["blake2b"]:
            stale.append(sample.image_id)
            (out_dir / "records" / f"{sample.image_id}.json").unlink(missing_ok=True)
            prediction_path(out_dir / "predictions", sample.image_id).unlink(missing_ok=True)
    if stale:
        log.warning("%d image file(s) changed since their predictions were made; running them again: %s",
                    len(stale), ", ".join(stale[:5]))
    if current != recorded:
        write_json_atomic(path, current)
    return stale
