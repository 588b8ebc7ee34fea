"""Run-directory fingerprints: weights and data contents, cheap hashes, one-line refusals."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from altp.data.resolve import resolve_split
from altp.models.glamm_build import SHAPES_DIR
from altp.run.cli import UserError
from altp.run.fingerprint import (
    FINGERPRINT_FILE,
    file_identity,
    fingerprint,
    guard_resume,
    path_identity,
)

ROOT = Path(__file__).resolve().parents[1]


def _cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def test_small_file_is_hashed_whole(tmp_path: Path) -> None:
    path = tmp_path / "w.bin"
    data = bytes(range(256)) * 1000
    path.write_bytes(data)
    assert file_identity(path) == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_large_safetensors_is_hashed_by_header_and_samples(tmp_path: Path) -> None:
    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    path = tmp_path / "big.safetensors"
    size = 80 * 2**20  # above the whole-file limit; a sparse file, nothing is really written
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(header)) + header)
        fh.truncate(size)
    ident = file_identity(path)
    assert ident["size"] == size and ident["hashed"] == "sampled"

    def flipped(offset: int) -> str:
        with open(path, "r+b") as fh:
            fh.seek(offset)
            old = fh.read(1)
            fh.seek(offset)
            fh.write(bytes([old[0] ^ 1]))
        try:
            return file_identity(path)["sha256"]
        finally:
            with open(path, "r+b") as fh:
                fh.seek(offset)
                fh.write(old)

    assert flipped(10) != ident["sha256"]  # inside the header: a renamed or reshaped tensor
    assert flipped(size // 2) != ident["sha256"]  # a sample in the middle of the tensor data
    assert flipped(size - 5) != ident["sha256"]  # the tail (a torch zip's CRC directory lives there)
    assert file_identity(path) == ident


def test_folder_identity_skips_hidden_files_and_docs(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.json").write_text("{}")
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "lock").write_text("x")
    (tmp_path / "README.md").write_text("docs")
    assert list(path_identity(tmp_path)) == ["sub/a.json"]


@pytest.fixture(scope="module")
def tiny_split(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    cfg = _cfg("model=glamm_tiny", "data=synthetic", f"data.root={root}", "data.generate.n_images=2")
    return cfg, resolve_split(cfg.data)


def test_fingerprint_names_weights_data_contents_and_not_locations(tiny_split, tmp_path: Path) -> None:
    cfg, split = tiny_split
    fp = fingerprint(cfg, split)
    assert fp["fingerprint_version"] == 2 and fp["keep"] == 0.1 and fp["seed"] == 0
    assert fp["weights"] == {}  # glamm_tiny's weights are its config's seed
    assert fp["data"]["generate"] == {"n_images": 2, "seed": 0} and fp["data"]["generator_version"] >= 3
    assert set(fp["data"]["gt_sha256"]) == {"val_gcg_coco_caption_gt.json", "val_gcg_coco_mask_gt.json"}
    gt = split.gt_dir / "val_gcg_coco_mask_gt.json"
    assert fp["data"]["gt_sha256"][gt.name] == hashlib.sha256(gt.read_bytes()).hexdigest()
    assert "gt_dir" not in json.dumps(fp) and "image_dir" not in json.dumps(fp)
    # The shapes model's shipped weights are hashed although its config says weights: null.
    shapes = fingerprint(_cfg("model=glamm_shapes", "data=synthetic", f"data.root={split.gt_dir.parent}"), split)
    assert "weights" not in shapes["model"]
    files = shapes["weights"]["weights"]
    assert files["model.safetensors"]["sha256"] == hashlib.sha256(
        (SHAPES_DIR / "model.safetensors").read_bytes()).hexdigest()
    assert "tokenizer/tokenizer.json" in files and "TRAINING.md" not in files


def test_guard_names_what_differs_in_one_line(tiny_split, tmp_path: Path) -> None:
    cfg, split = tiny_split
    fp = fingerprint(cfg, split)
    guard_resume(tmp_path, fp)
    assert json.loads((tmp_path / FINGERPRINT_FILE).read_text()) == fp
    guard_resume(tmp_path, fp)  # the same: resumes
    other = json.loads(json.dumps(fp))
    other["pruner"]["alpha"] = 3.0
    other["data"]["gt_sha256"]["val_gcg_coco_mask_gt.json"] = "0" * 64
    with pytest.raises(UserError) as err:
        guard_resume(tmp_path, other)
    msg = str(err.value)
    assert "\n" not in msg and "pruner.alpha 1.5 -> 3.0" in msg
    assert "data.gt_sha256.val_gcg_coco_mask_gt.json" in msg and "out_dir=" in msg


def test_old_or_corrupt_fingerprints_are_clear_refusals(tiny_split, tmp_path: Path) -> None:
    cfg, split = tiny_split
    fp = fingerprint(cfg, split)
    # What the first harness wrote (unversioned; the committed study's are today's version since
    # scripts/refresh_fingerprints.py rewrote them).
    old = {k: fp[k] for k in ("model", "pruner", "keep", "seed")} | {"data": {k: fp["data"][k] for k in ("name", "split")}}
    (tmp_path / FINGERPRINT_FILE).write_text(json.dumps(old))
    with pytest.raises(UserError, match=r"older harness \(fingerprint version 1"):
        guard_resume(tmp_path, fp)
    (tmp_path / FINGERPRINT_FILE).write_text('{"model": ')
    with pytest.raises(UserError, match="is corrupt"):
        guard_resume(tmp_path, fp)
    (tmp_path / FINGERPRINT_FILE).unlink()
    (tmp_path / "predictions").mkdir()
    (tmp_path / "predictions" / "sa_1.json").write_text("{}")
    with pytest.raises(UserError, match="no fingerprint.json"):
        guard_resume(tmp_path, fp)
