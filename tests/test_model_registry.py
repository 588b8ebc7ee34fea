"""Model registry: config file name = registry name = the builder its ``_target_`` names."""

from __future__ import annotations

import pytest
import torch
import yaml
from hydra.utils import get_method

from altp.configs import conf_dir, config_options
from altp.models import build_model, model_builders

MODELS = config_options("model")


@pytest.mark.parametrize("name", MODELS)
def test_each_model_config_targets_the_builder_registered_under_its_file_name(name: str) -> None:
    target = yaml.safe_load((conf_dir() / "model" / f"{name}.yaml").read_text())["_target_"]
    assert model_builders()[name] is get_method(target)


def test_every_config_is_registered_and_every_builder_has_a_config() -> None:
    # glamm_full_random has conf/model/glamm_full_random.yaml since scripts/gpu_check.sh runs it by name.
    assert sorted(model_builders()) == sorted(MODELS)


def test_unknown_model_is_a_one_line_error_listing_the_valid_names() -> None:
    with pytest.raises(ValueError) as err:
        build_model("glam_tiny")
    msg = str(err.value)
    assert len(msg.splitlines()) == 1 and "'glam_tiny'" in msg
    assert all(name in msg for name in ("glamm", "glamm_shapes", "glamm_tiny", "omg_llava", "omg_llava_tiny"))


def test_build_model_passes_the_builder_arguments() -> None:
    model = build_model("glamm_tiny", seed=0, num_layers=2, max_new_tokens=5)
    assert (model.name, model.max_new_tokens, model.llm_shape.num_layers, model.grid) == ("glamm_tiny", 5, 2, (24, 24))


def test_full_random_builds_the_released_sizes_in_place() -> None:
    """On the meta device (no memory): Vicuna-7B / CLIP-L / SAM ViT-H shapes, built in the requested dtype."""
    model = build_model("glamm_full_random", device="meta", dtype="bfloat16")
    shape = model.llm_shape
    assert (model.name, shape.hidden_size, shape.intermediate_size, shape.num_layers) == (
        "glamm_full_random", 4096, 11008, 32)
    assert model.dtype == torch.bfloat16 and model.device.type == "meta"
    assert model.grounding_encoder.config.hidden_size == 1280 and model.num_visual == 576
