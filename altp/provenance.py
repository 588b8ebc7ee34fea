"""Provenance of a run (git sha, versions, device) and atomic JSON writes."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["git_sha", "package_versions", "provenance", "write_json_atomic"]

_PACKAGES = (
    "altp-bench", "torch", "transformers", "tokenizers", "hydra-core", "numpy", "scikit-image",
    "pycocotools", "pycocoevalcap", "sentence-transformers", "pandas",
)
_REPO = Path(__file__).resolve().parents[1]


def git_sha() -> str:
    """HEAD's sha of the project checkout, suffixed ``-dirty`` when tracked files changed; ``unknown`` outside git."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=_REPO, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=_REPO,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that can change a number."""
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def provenance(*, device: str, dtype: str) -> dict[str, Any]:
    """What made a run: code version, libraries, hardware."""
    import torch

    versions = package_versions()
    dev = device
    if device.startswith("cuda") and torch.cuda.is_available():
        dev = f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return {
        "git_sha": git_sha(),
        "version": versions["altp-bench"],
        "packages": versions,
        "device": dev,
        "dtype": dtype,
        "host_cpu": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
    }


def write_json_atomic(path: Path, obj: Any, *, indent: int | None = 1) -> None:
    """Write JSON to ``path`` atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(obj, fh, indent=indent, sort_keys=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.filename is None:  # a failed write() names no file: name it
            err.filename = str(path)
        raise
