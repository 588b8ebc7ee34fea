"""Reading checkpoint files and folders as the Hugging Face Hub lays them out, failing in one line.

Shared by every family's official-weights builder. A missing file is a
:class:`~altp.models.base.MissingCheckpointError` whose one-line message names the
path and the download command; tensors are read without unpickling code
(safetensors, or ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from altp.models.base import MissingCheckpointError

__all__ = [
    "CheckpointMismatchError", "download_command", "read_json", "read_state_dict", "require", "weight_files",
]


class CheckpointMismatchError(ValueError):
    """The checkpoint's keys or shapes do not match the model."""


def download_command(repo: str, folder: str | Path, *files: str) -> str:
    """The shell command that downloads ``files`` of Hub ``repo`` (all of it without ``files``) into ``folder``."""
    what = " ".join((repo, *files))
    return f"hf download {what} --local-dir {folder}"


def require(path: Path, repo: str, file: str = "") -> Path:
    """``path`` if it exists, else a one-line MissingCheckpointError with the download command.

    Args:
        path: the file or folder the model needs.
        repo: the Hub repository it comes from.
        file: the file's name in ``repo`` (empty for a whole-repository folder).
    """
    if not path.exists():
        files = [file] if file else []
        raise MissingCheckpointError(missing=str(path), how_to_get=download_command(repo, path.parent, *files))
    return path


def read_json(path: Path, repo: str) -> dict[str, Any]:
    """A ``config.json``-like file of a download of ``repo``; MissingCheckpointError if absent."""
    if not path.exists():
        raise MissingCheckpointError(missing=str(path), how_to_get=download_command(repo, path.parent))
    return json.loads(path.read_text())


def weight_files(folder: Path, repo: str) -> list[Path]:
    """Every weights file of a HF folder, safetensors first; MissingCheckpointError if none.

    An index (``*.index.json``) names the shards, each of which must exist; else a
    single ``model.safetensors`` / ``pytorch_model.bin``; else ``pytorch_model-*-of-*.bin``.
    """
    get = download_command(repo, folder)
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.exists():
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            for n in names:
                if not (folder / n).exists():
                    raise MissingCheckpointError(missing=str(folder / n), how_to_get=get)
            return [folder / n for n in names]
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (folder / single).exists():
            return [folder / single]
    shards = sorted(folder.glob("pytorch_model-*-of-*.bin"))
    if shards:
        return shards
    raise MissingCheckpointError(missing=str(folder / "pytorch_model.bin.index.json"), how_to_get=get)


def read_state_dict(folder: str | Path, *, repo: str = "REPO_ID") -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint folder, without unpickling code (safetensors or ``weights_only``).

    Args:
        folder: a download of a Hub repository.
        repo: that repository, for the download command of a missing-file error.

    Raises:
        MissingCheckpointError: no weights file, or a shard the index names is absent
            (every shard is checked before one is read).
        CheckpointMismatchError: two shards hold the same key.
    """
    out: dict[str, torch.Tensor] = {}
    for f in weight_files(Path(folder), repo):
        if f.suffix == ".safetensors":
            part = load_file(str(f))
        else:
            part = torch.load(str(f), map_location="cpu", weights_only=True, mmap=True)
        dup = out.keys() & part.keys()
        if dup:
            raise CheckpointMismatchError(f"{f} repeats keys of an earlier shard: {sorted(dup)[:5]}")
        out.update(part)
    return out
