"""Every option of the model, pruner and data groups composes, and every model is known downstream.

The lists come from the config groups themselves (``altp.configs.config_options``), so a
new ``conf/model/<name>.yaml`` is checked without editing this file: its builder resolves
to a callable and the token figures know its input geometry.
"""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import get_method

from altp.configs import conf_dir, config_options
from altp.viz.geometry import geometry_for

GROUPS = ("model", "pruner", "data")
OPTIONS = [(group, name) for group in GROUPS for name in config_options(group)]


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def test_every_group_has_options():
    assert all(config_options(group) for group in GROUPS)


@pytest.mark.parametrize("group, name", OPTIONS, ids=[f"{g}={n}" for g, n in OPTIONS])
def test_every_option_composes(group: str, name: str):
    cfg = _compose(f"{group}={name}")
    assert cfg[group] is not None
    if group == "pruner":
        assert cfg.pruner.name == name


@pytest.mark.parametrize("name", config_options("model"))
def test_every_model_has_a_builder_and_a_token_geometry(name: str):
    model = _compose(f"model={name}").model
    assert callable(get_method(model._target_))
    geometry = geometry_for(model)
    assert geometry.grid[0] * geometry.grid[1] > 0
