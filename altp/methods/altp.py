"""ALTP, the paper's method: DDC superpixel regions + DDF density-weighted budgets.

Each SLIC region k gets a density ``d_k = Var_k * sqrt(|P_k| / |P_total|)``,
a weight ``w_k = softmax(d / (alpha * max d))_k`` and a budget
``T_k = w_k * n_keep`` (capped at the region's tokens, overflow shared,
rounded to exactly ``n_keep``, :func:`altp.methods.budgets.altp_budgets`); inside each
region the ``T_k`` tokens with the highest FastV attention survive. Pruning sits
at layer K=2 with FastV's score, so its FLOPs equal FastV's.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from altp.methods.budgets import altp_budgets, ddf_density, ddf_weights
from altp.methods.ddc import RegionPruner
from altp.methods.superpixels import VARIANCE_MODES, RegionMap, VarianceMode
from altp.pruning.base import register_pruner

__all__ = ["ALTPPruner"]


@register_pruner("altp")
class ALTPPruner(RegionPruner):
    """Adaptive local-aware token pruning (DDC + DDF).

    Args:
        keep, layer, n_segments, compactness, sigma, importance, enforce_connectivity: as
            :class:`altp.methods.ddc.RegionPruner`.
        alpha: DDF softmax temperature (paper 1.5). Weights lie within a factor
            ``exp(1/alpha)`` of each other, so budgets stay close to uniform
            shares of ``n_keep``, tilted towards textured regions.
        variance_mode: colour space of Var_k (:func:`altp.methods.superpixels.region_variance`);
            ``channel_mean`` (default) scores texture, not hue.

    Example::

        pruner = ALTPPruner(keep=0.1)             # 57 of 576 GLaMM tokens
        prep = pruner.prepare(image336, (24, 24))  # at image load
    """

    def __init__(
        self,
        *,
        keep: float,
        layer: int = 2,
        n_segments: int = 10,
        compactness: float = 5.0,
        sigma: float = 1.0,
        importance: str = "attention",
        alpha: float = 1.5,
        variance_mode: VarianceMode = "channel_mean",
        enforce_connectivity: bool = True,
    ) -> None:
        super().__init__(
            keep=keep,
            layer=layer,
            n_segments=n_segments,
            compactness=compactness,
            sigma=sigma,
            importance=importance,
            enforce_connectivity=enforce_connectivity,
        )
        if not alpha > 0:
            raise ValueError(f"alpha must be > 0 (paper: 1.5), got {alpha}")
        if variance_mode not in VARIANCE_MODES:
            raise ValueError(
                f"unknown variance_mode {variance_mode!r}; choose one of: {', '.join(VARIANCE_MODES)}"
            )
        self.alpha = float(alpha)
        self.variance_mode = variance_mode

    def region_budgets(
        self, regions: RegionMap, sizes: np.ndarray, n_keep: int
    ) -> tuple[np.ndarray, dict[str, Any]]:
        if regions.variance_mode != self.variance_mode:
            raise ValueError(
                f"prep measured variance as {regions.variance_mode!r} but this pruner uses "
                f"{self.variance_mode!r}; compute ctx.prep with this pruner's prepare()"
            )
        present = sizes > 0
        density = ddf_density(
            regions.variance[present], regions.pixel_count[present], regions.total_pixels
        )
        weights = ddf_weights(density, alpha=self.alpha)
        budgets = altp_budgets(weights=weights, sizes=sizes[present], n_keep=n_keep)
        return budgets, {"densities": density.tolist(), "weights": weights.tolist()}

    def hparams(self) -> dict[str, Any]:
        return {**super().hparams(), "alpha": self.alpha, "variance_mode": self.variance_mode}
