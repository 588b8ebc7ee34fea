"""Runs on the official weights (skipped with a reason where they are not on disk).

The paths follow conf/model/*.yaml and their environment variables. The 7B models
need a CUDA device as well, and are slow.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from altp.pruning import kept_count
from altp.run.runner import run

ROOT = Path(__file__).resolve().parents[1]
GLAMM = os.environ.get("GLAMM_CKPT", "checkpoints/GLaMM-GCG")
CLIP = os.environ.get("GLAMM_CLIP", "checkpoints/clip-vit-large-patch14-336")
OMG = os.path.join(os.environ.get("ALTP_CKPT_DIR", "checkpoints"), "omg_llava")


def _run(tmp_path: Path, *overrides: str) -> dict:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "data=synthetic", f"data.root={tmp_path / 'data'}", "data.generate.n_images=2",
            "evaluate=false", f"out_dir={tmp_path / 'run'}", *overrides,
        ])  # fmt: skip
    return run(cfg, choices={"model": "official", "data": "synthetic", "pruner": cfg.pruner.name})


@pytest.mark.slow
@pytest.mark.gpu
@pytest.mark.weights(GLAMM, CLIP)
def test_official_glamm_runs_fastv_at_57_tokens(tmp_path: Path) -> None:
    m = _run(tmp_path, "model=glamm", "pruner=fastv", "keep=0.1")
    assert m["n_failed"] == 0 and m["mean_kept_tokens"] == kept_count(0.1, 576) == 57
    for p in (tmp_path / "run" / "predictions").glob("*.json"):
        assert json.loads(p.read_text())["caption"]  # the real model describes every image


@pytest.mark.slow
@pytest.mark.gpu
@pytest.mark.weights(OMG)
def test_official_omg_llava_runs_altp_at_64_tokens(tmp_path: Path) -> None:
    m = _run(tmp_path, "model=omg_llava", "pruner=altp", "keep=0.25")
    assert m["n_failed"] == 0 and m["mean_kept_tokens"] == kept_count(0.25, 256) == 64


@pytest.mark.weights("hf:bert-base-uncased")
def test_official_recall_encoder_embeds_with_cls_and_sep() -> None:
    from eval.text_encoders import TextEncoder, cosine_matrix

    enc = TextEncoder(name="bert-base-uncased")
    emb = enc.embed(["a red circle", "a red circle", "the blue sky"])
    assert set(emb) == {"a red circle", "the blue sky"} and emb["a red circle"].shape == (768,)
    sims = cosine_matrix(np.stack([emb["a red circle"]]), np.stack([emb["a red circle"], emb["the blue sky"]]))
    assert sims[0, 0] == pytest.approx(1.0, abs=1e-6) and sims[0, 1] < 1.0
