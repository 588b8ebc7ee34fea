"""Baseline pruners (importing registers them): FastV, PyramidDrop, random, uniform."""

from baselines.fastv import FastVPruner

__all__ = ["FastVPruner"]
