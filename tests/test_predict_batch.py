"""Batched inference: the preprocessing seam and ``predict_batch`` against one image at a time."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from PIL import Image

from altp.models import build_model
from altp.models.base import GCGModel, ImageInputs


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    sizes = [(200, 300), (240, 180), (160, 160)]
    return [Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)) for h, w in sizes]


@pytest.mark.parametrize("name", ["glamm_tiny", "omg_llava_tiny"])
def test_preprocess_is_the_vision_image_and_pickles(name: str, images: list[Image.Image]) -> None:
    model = build_model(name, seed=0, num_layers=2, max_new_tokens=4) if name == "glamm_tiny" else \
        build_model(name, seed=0, max_new_tokens=4)
    assert isinstance(model, GCGModel)
    for image in images:
        x = model.preprocess(image.convert("L"))  # any mode: converted to RGB like vision_image
        assert isinstance(x, ImageInputs) and x.size == (image.height, image.width)
        assert np.array_equal(x.vision_image, model.vision_image(image.convert("L")))
        assert all(t.device.type == "cpu" for t in x.tensors.values())
        y = pickle.loads(pickle.dumps(x))
        assert np.array_equal(y.vision_image, x.vision_image)
        assert all(np.array_equal(y.tensors[k].numpy(), v.numpy()) for k, v in x.tensors.items())
