"""Pruner registry: names, one-line errors, keyword-only hyper-parameters."""

from __future__ import annotations

import pytest

from altp.pruners import available_pruners, build_pruner
from altp.pruning import Pruner, register_pruner
from baselines import FastVPruner, PyramidDropPruner, RandomPruner, UniformPruner

ALL = ["altp", "ddc", "fastv", "none", "pdrop", "random", "uniform"]


def test_every_pruner_of_the_study_is_registered():
    assert set(ALL) <= set(available_pruners())
    assert available_pruners() == sorted(available_pruners())
    built = {n: type(build_pruner(n, keep=0.5)) for n in ["fastv", "pdrop", "random", "uniform"]}
    assert built == {
        "fastv": FastVPruner,
        "pdrop": PyramidDropPruner,
        "random": RandomPruner,
        "uniform": UniformPruner,
    }
    assert build_pruner("none") is None


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown pruner 'fastvv'") as err:
        build_pruner("fastvv", keep=0.5)
    assert all(n in str(err.value) for n in ALL)


@pytest.mark.parametrize("name", [n for n in ALL if n != "none"])
@pytest.mark.parametrize("keep", [0, 0.0, -0.1, 1.5, float("nan"), "half"])
def test_keep_outside_unit_interval_is_a_one_line_error(name, keep):
    with pytest.raises(ValueError) as err:
        build_pruner(name, keep=keep)
    msg = str(err.value)
    assert "keep" in msg and "\n" not in msg


@pytest.mark.parametrize("cls", [FastVPruner, PyramidDropPruner, RandomPruner, UniformPruner])
def test_hyper_parameters_are_keyword_only(cls):
    with pytest.raises(TypeError):
        cls(0.5)


def test_a_second_pruner_under_a_taken_name_is_rejected():
    with pytest.raises(ValueError, match="already registered"):

        @register_pruner("fastv")
        class Other(Pruner):
            def select(self, ctx):
                raise NotImplementedError
