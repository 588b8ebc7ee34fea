"""Baseline pruners (importing registers them): FastV, PyramidDrop, random, uniform."""

from baselines.fastv import FastVPruner
from baselines.pyramid_drop import PyramidDropPruner, solve_lambda
from baselines.random_pruner import RandomPruner
from baselines.uniform import UniformPruner, uniform_grid_indices

__all__ = [
    "FastVPruner",
    "PyramidDropPruner",
    "RandomPruner",
    "UniformPruner",
    "solve_lambda",
    "uniform_grid_indices",
]
