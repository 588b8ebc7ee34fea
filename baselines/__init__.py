"""Baseline pruners (importing registers them): FastV, PyramidDrop, random, uniform, and the 2025 methods
VisionZip and DivPrune (at the LLM input) and DART (inside the LLM)."""

from baselines.dart import DARTPruner
from baselines.divprune import DivPrunePruner
from baselines.fastv import FastVPruner
from baselines.pyramid_drop import PyramidDropPruner, solve_lambda
from baselines.random_pruner import RandomPruner
from baselines.uniform import UniformPruner, uniform_grid_indices
from baselines.visionzip import VisionZipPruner

__all__ = [
    "DARTPruner",
    "DivPrunePruner",
    "FastVPruner",
    "PyramidDropPruner",
    "RandomPruner",
    "UniformPruner",
    "VisionZipPruner",
    "solve_lambda",
    "uniform_grid_indices",
]
