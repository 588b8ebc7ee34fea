"""A run directory's fingerprint: everything that determines its predictions.

``fingerprint.json`` is written when a run directory is first used (after the
model has loaded); a later run into the same directory must produce the same
fingerprint, or it is refused with one line naming what differs
(:func:`guard_resume`). It holds:

* ``model``: the model config, minus the entries that name files or folders;
* ``weights``: for each of those (and the files a builder loads by default,
  see :func:`weight_paths`), every file's name, size and content hash. Files up
  to 64 MiB are hashed whole; larger ones by their safetensors header (tensor
  names, dtypes, shapes, offsets) and 17 evenly spaced 64 KiB samples plus the
  last MiB (where a torch zip checkpoint keeps each tensor's CRC-32), so a
  multi-GB shard costs about 2 MiB of reading, never a full pass;
* ``pruner``, ``keep`` (1.0 for a pruner that ignores it), ``seed``;
* ``data``: name, split, generation parameters and generator version of a
  generated split, the SHA-256 of both GT files and of the image list (ids and
  file names in split order).

Left out on purpose: scoring options (text encoder, ``evaluate``) and
``max_images`` change what is scored, not what is predicted; ``batch_size``,
``batching``, ``num_workers`` and the number of ranks change how fast images are predicted,
not what (run.json records them), so a run resumes with any of them; file locations
(``gt_dir``, ``image_dir``, checkpoint folders) are replaced by their content,
so a moved checkpoint or a fixed ``image_dir`` resumes. Image bytes are not
part of the fingerprint: a changed image file re-runs that image
(:mod:`altp.run.image_identity`), it does not refuse the directory.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

from omegaconf import DictConfig, OmegaConf

from altp.data.grandf import GrandfSplit, caption_gt_path, mask_gt_path
from altp.provenance import write_json_atomic
from altp.run_dir import effective_keep

__all__ = ["FINGERPRINT_FILE", "FINGERPRINT_VERSION", "file_identity", "fingerprint", "guard_resume",
           "path_identity", "weight_paths"]

FINGERPRINT_FILE = "fingerprint.json"
# 2: weights and data contents (1, unversioned: model, pruner, keep, seed, data name and split).
FINGERPRINT_VERSION = 2
_WHOLE_FILE_LIMIT = 64 * 2**20
_SAMPLES, _SAMPLE_BYTES, _TAIL_BYTES = 17, 64 * 2**10, 2**20
_NOT_PATHS = ("_target_", "device", "dtype")
_SHOWN_DIFFS = 4


def file_identity(path: Path) -> dict[str, Any]:
    """``{"size", "sha256"}`` of a file: the whole file up to 64 MiB, else header + samples.

    A large file's hash covers its size, a safetensors header when the file has one,
    17 evenly spaced 64 KiB samples and its last MiB (``"hashed": "sampled"``).
    """
    size = path.stat().st_size
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        if size <= _WHOLE_FILE_LIMIT:
            for block in iter(lambda: fh.read(2**20), b""):
                h.update(block)
            return {"size": size, "sha256": h.hexdigest()}
        h.update(str(size).encode())
        head = fh.read(8)
        (n,) = struct.unpack("<Q", head)
        if path.suffix == ".safetensors" and 0 < n < min(size, 2**28):
            h.update(head + fh.read(n))  # tensor names, dtypes, shapes and offsets
        for k in range(_SAMPLES):
            fh.seek(k * (size - _SAMPLE_BYTES) // (_SAMPLES - 1))
            h.update(fh.read(_SAMPLE_BYTES))
        fh.seek(size - _TAIL_BYTES)
        h.update(fh.read(_TAIL_BYTES))
    return {"size": size, "sha256": h.hexdigest(), "hashed": "sampled"}


def _files(folder: Path) -> Iterator[Path]:
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if p.is_file() and not any(part.startswith(".") for part in rel.parts) and p.suffix != ".md":
            yield p


def path_identity(path: Path) -> dict[str, Any]:
    """Identity of a weights file, or of every file under a folder (hidden files and ``*.md`` skipped)."""
    if path.is_file():
        return {path.name: file_identity(path)}
    return {str(p.relative_to(path)): file_identity(p) for p in _files(path)}


def weight_paths(model_cfg: dict[str, Any]) -> dict[str, Path]:
    """The files a model config loads, by config key.

    Every string entry that names an existing file or folder, plus what the builder
    loads without naming it: a builder's module may list, in ``WEIGHT_PATHS``, a
    ``fn(model_cfg) -> {key: Path}`` under the builder's name (the shapes model's
    shipped weights).
    """
    found = {key: Path(v) for key, v in _strings(model_cfg) if key not in _NOT_PATHS and Path(v).exists()}
    module_name, _, builder = str(model_cfg.get("_target_", "")).rpartition(".")
    if module_name:
        hook = getattr(importlib.import_module(module_name), "WEIGHT_PATHS", {}).get(builder)
        if hook is not None:
            found.update(hook(model_cfg))
    return found


def _strings(node: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _strings(v, f"{prefix}{k}" if not prefix else f"{prefix}.{k}")
    elif isinstance(node, str) and node:
        yield prefix, node


def _sha256_file(path: Path) -> str:
    return file_identity(path)["sha256"]


def _data_identity(data_cfg: DictConfig, split: GrandfSplit) -> dict[str, Any]:
    data = {"name": data_cfg.name, "split": data_cfg.split}
    if data_cfg.get("generate") is not None:
        from altp.data.synthetic import GENERATOR_VERSION

        data["generate"] = OmegaConf.to_container(data_cfg.generate, resolve=True)
        data["generator_version"] = GENERATOR_VERSION
    gt = (caption_gt_path(split.gt_dir, split.split), mask_gt_path(split.gt_dir, split.split))
    data["gt_sha256"] = {path.name: _sha256_file(path) for path in gt}
    images = json.dumps([[s.image_id, s.file_name] for s in split]).encode()
    data["image_list_sha256"] = hashlib.sha256(images).hexdigest()
    return data


def fingerprint(cfg: DictConfig, split: GrandfSplit) -> dict[str, Any]:
    """The fingerprint of a run of ``cfg`` over ``split`` (see the module docstring)."""
    model = cast("dict[str, Any]", OmegaConf.to_container(cfg.model, resolve=True))  # a DictConfig's is a dict
    paths = weight_paths(model)
    fp = {
        "fingerprint_version": FINGERPRINT_VERSION,
        "model": {k: v for k, v in model.items() if k not in paths},
        "weights": {key: path_identity(p) for key, p in sorted(paths.items())},
        "pruner": OmegaConf.to_container(cfg.pruner, resolve=True),
        "keep": effective_keep(cfg.pruner, cfg.keep),  # pruner=none at any keep is one run
        "seed": cfg.seed,
        "data": _data_identity(cfg.data, split),
    }
    return json.loads(json.dumps(fp))  # as it reads back from disk


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict) and node:
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: node}


def _differences(previous: dict[str, Any], current: dict[str, Any]) -> list[str]:
    old, new = _flat(previous), _flat(current)
    out = []
    for key in sorted(set(old) | set(new), key=lambda k: (k.startswith("weights"), k)):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if a != b:
            short = all(not isinstance(v, str) or len(v) <= 24 for v in (a, b))
            out.append(f"{key} {a!r} -> {b!r}" if short else key)
    return out


def guard_resume(out_dir: Path, current: dict[str, Any]) -> None:
    """Refuse to resume into ``out_dir`` unless its fingerprint equals ``current``; write it if new.

    Without this, a changed hyper-parameter, retrained weights or a regenerated split
    with the same out_dir would skip every finished image and report the old
    predictions under the new settings.

    Raises:
        UserError: one line naming what differs (or why the old fingerprint cannot be read).
    """
    from altp.errors import UserError

    path = out_dir / FINGERPRINT_FILE
    fix = "pass another out_dir=... or delete that folder"
    if not path.exists():
        made = [d for d in ("predictions", "records") if any((out_dir / d).glob("*.json"))]
        if made:
            raise UserError(f"{out_dir} holds {' and '.join(made)} but no {FINGERPRINT_FILE}, so nothing says "
                            f"which config made them; {fix}")
        write_json_atomic(path, current)
        return
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path} is corrupt ({err}); it cannot say which config made this run; {fix}") from None
    if not isinstance(previous, dict):
        raise UserError(f"{path} is not a fingerprint (a JSON object expected); {fix}")
    if previous.get("fingerprint_version") != FINGERPRINT_VERSION:
        raise UserError(
            f"{path} was written by an older harness (fingerprint version "
            f"{previous.get('fingerprint_version', 1)}, without weights and data contents), so resuming "
            f"cannot be checked; {fix}"
        )
    diff = _differences(previous, current)
    if diff:
        more = f" (+{len(diff) - _SHOWN_DIFFS} more)" if len(diff) > _SHOWN_DIFFS else ""
        raise UserError(f"{out_dir} holds a run made with a different config: {'; '.join(diff[:_SHOWN_DIFFS])}"
                        f"{more}; {fix}")
