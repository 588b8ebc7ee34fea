"""Pruner registry: names, one-line errors, keyword-only hyper-parameters.

The registry (``altp.pruners``) is the one list of pruners: the config group
``conf/pruner/``, the display order, the CI slice of the committed study and the
paper-table sweeps of ``conf/experiment/`` are checked against it here.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml

from altp.configs import conf_dir, config_options
from altp.pruner_order import PRUNER_ORDER
from altp.pruners import available_pruners, build_pruner
from altp.pruning import Pruner, register_pruner
from baselines import FastVPruner, PyramidDropPruner, RandomPruner, UniformPruner
from scripts.publish_study import DEFAULT_SLICE

ROOT = Path(__file__).resolve().parents[1]

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


@pytest.mark.parametrize("name", [n for n in available_pruners() if n != "none"])
@pytest.mark.parametrize("keep", [0, 0.0, -0.1, 1.5, float("nan"), "half"])
def test_keep_outside_unit_interval_is_a_one_line_error(name, keep):
    with pytest.raises(ValueError) as err:
        build_pruner(name, keep=keep)
    msg = str(err.value)
    assert "keep" in msg and "\n" not in msg


@pytest.mark.parametrize("cls", [type(build_pruner(n, keep=0.5)) for n in available_pruners() if n != "none"])
def test_hyper_parameters_are_keyword_only(cls):
    with pytest.raises(TypeError):
        cls(0.5)


def test_a_second_pruner_under_a_taken_name_is_rejected():
    with pytest.raises(ValueError, match="already registered"):

        @register_pruner("fastv")
        class Other(Pruner):
            def select(self, ctx):
                raise NotImplementedError


def test_the_config_group_is_the_registry():
    assert config_options("pruner") == available_pruners()
    for name in config_options("pruner"):
        cfg = yaml.safe_load((conf_dir() / "pruner" / f"{name}.yaml").read_text())
        assert cfg["name"] == name and cfg["_target_"] == "altp.pruning.build_pruner"


def test_the_display_order_names_every_registered_pruner_once():
    assert PRUNER_ORDER[0] == "none" and len(set(PRUNER_ORDER)) == len(PRUNER_ORDER)
    assert set(PRUNER_ORDER) == set(available_pruners())


def test_the_committed_studys_ci_slice_has_one_cell_per_pruner():
    names = [cell.split(":")[0] for cell in DEFAULT_SLICE]
    assert sorted(names) == available_pruners()


def test_paper_table_sweeps_are_the_papers_methods():
    """Hydra's sweeper needs explicit lists: each is every method the paper reports, all registered."""
    with (ROOT / "results" / "paper" / "paper_tables.csv").open() as f:
        papers = {row["method"] for row in csv.DictReader(f)}
    assert papers <= set(available_pruners())
    sweeps = {}
    for path in sorted((conf_dir() / "experiment").glob("*.yaml")):
        params = ((yaml.safe_load(path.read_text()).get("hydra") or {}).get("sweeper") or {}).get("params") or {}
        if "pruner" in params:
            sweeps[path.stem] = sorted(str(params["pruner"]).split(","))
    assert sweeps and all(names == sorted(papers) for names in sweeps.values()), sweeps
