"""build_glamm_shapes: loading, loud failures, and the shipped weights (when present)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from altp.models.glamm import config_to_dict
from altp.models.glamm_build import SHAPES_DIR, MissingShapesWeightsError, build_glamm_shapes
from altp.models.tokenizer import TINY_TOKENIZER_DIR
from tests.test_train_step import _toy_model


def _write(model, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(config_to_dict(model.config)))
    shutil.copytree(TINY_TOKENIZER_DIR, out / "tokenizer")


def test_missing_weights_is_one_line_with_the_fix(tmp_path):
    with pytest.raises(MissingShapesWeightsError) as err:
        build_glamm_shapes(weights=str(tmp_path / "nowhere"))
    msg = str(err.value)
    assert "\n" not in msg and "scripts/train_shapes.py" in msg and "model.safetensors" in msg


def test_round_trip_gives_the_same_weights(tmp_path):
    model = _toy_model(seed=3)
    _write(model, tmp_path)
    loaded = build_glamm_shapes(weights=str(tmp_path))
    ref = model.state_dict()
    got = loaded.state_dict()
    assert set(ref) == set(got)
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    assert loaded.num_visual == 576 and loaded.grid == (24, 24)


def test_shape_mismatch_is_refused(tmp_path):
    _write(_toy_model(seed=3), tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    key = "text_hidden_fcs.2.weight"
    state[key] = torch.zeros(state[key].shape[0] + 1, state[key].shape[1])
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="shape mismatches"):
        build_glamm_shapes(weights=str(tmp_path))


@pytest.mark.skipif(not (SHAPES_DIR / "model.safetensors").exists(), reason="shapes weights not trained yet")
def test_shipped_weights_predict_one_image():
    from altp.train.samples import render_sample

    model = build_glamm_shapes()
    s = render_sample(seed=0, index=0, split="val")
    pred = model.predict(Image.fromarray(s.image), pruner=None, prep=None)
    assert len(pred.phrases) == len(pred.masks)
    assert all(m.shape == s.image.shape[:2] and m.dtype == np.bool_ for m in pred.masks)
    assert pred.new_tokens <= model.max_new_tokens
