"""DDC-only: SLIC regions, the same keep share in every region, top tokens by attention.

Also home of :class:`RegionPruner`, the part DDC-only and ALTP share: superpixels
at image load (:meth:`RegionPruner.prepare`), then on the critical path only the
budget rounding (about ten regions) and one vectorised per-region top-k.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import replace
from typing import Any, ClassVar

import numpy as np
import torch

from altp.methods.budgets import ddc_budgets
from altp.methods.superpixels import RegionMap, VarianceMode, compute_regions
from altp.pruning.base import (
    PruneContext,
    Pruner,
    PruneStage,
    ScheduleInfo,
    Selection,
    register_pruner,
)

__all__ = ["DDCPruner", "RegionPruner", "top_per_region"]

#: within-region token scores: the decoder's (attention, layer >= 1), image-side ones (cls, norm), a control
_IMPORTANCE: tuple[str, ...] = ("attention", "cls", "norm", "random")


def top_per_region(
    scores: torch.Tensor, region: torch.Tensor, budgets: torch.Tensor, n_keep: int
) -> torch.Tensor:
    """Keep the ``budgets[b, k]`` highest-scoring tokens of every region k.

    Args:
        scores: (B, V_cur) float importance; higher is kept first.
        region: (B, V_cur) long region index in ``0..R_max-1`` of each token.
        budgets: (B, R_max) long, ``budgets[b].sum() == n_keep`` and
            ``budgets[b, k] <=`` the tokens of region k in row b.
        n_keep: tokens kept per row.

    Returns:
        (B, n_keep) long indices into ``0..V_cur-1``, sorted ascending. Score
        ties go to the lower index.
    """
    bsz, v_cur = scores.shape
    # Stable sorts: by score descending (ties keep the lower index first), then
    # by region; the result lists each region's tokens best-first, regions in order.
    by_score = torch.sort(scores, dim=1, descending=True, stable=True).indices  # (B, V)
    reg_by_score = region.gather(1, by_score)
    by_region = torch.sort(reg_by_score, dim=1, stable=True).indices
    order = by_score.gather(1, by_region)  # (B, V) token ids grouped by region, best first
    reg_sorted = reg_by_score.gather(1, by_region)
    sizes = torch.zeros_like(budgets).scatter_add_(1, region, torch.ones_like(region))
    starts = sizes.cumsum(1) - sizes  # (B, R) first sorted position of each region
    rank = torch.arange(v_cur, device=scores.device).expand(bsz, -1) - starts.gather(1, reg_sorted)
    keep = rank < budgets.gather(1, reg_sorted)
    # Push dropped tokens past V_cur and sort once: the first n_keep entries are
    # the kept ids in ascending order (boolean indexing would sync a GPU).
    key = torch.where(keep, order, order + v_cur)
    return key.sort(dim=1).values[:, :n_keep]


class RegionPruner(Pruner):
    """Shared machinery of the superpixel pruners; subclasses choose the budgets.

    Args:
        keep: fraction of visual tokens kept, in (0, 1].
        layer: K, the decoder layer whose input is pruned (2: same place and
            FLOPs as FastV, the project's default reading of the paper); 0 prunes
            at the LLM input, the literal reading of the paper's Algorithm 1
            (step 4 feeds ``Proj(Enc_v(Omega_selected))`` to the LLM).
        n_segments, compactness, sigma: SLIC parameters (:func:`compute_regions`).
        enforce_connectivity: SLIC's connectivity enforcement (scikit-image's
            default True; the configs choose False, see conf/pruner/altp.yaml).
        importance: within-region token score. The paper says only "e.g.
            cross-attention or self-attention magnitude"; the choices:
            ``"attention"`` (FastV's last-token attention at layer K-1; K >= 1; the
            default and our choice), ``"cls"`` (the vision tower's CLS attention to
            each patch at its feature layer, VisionZip's signal; a ViT with a CLS
            token, i.e. GLaMM), ``"norm"`` (the L2 norm of each projected visual embedding at
            the LLM input; any model) or ``"random"`` (a seeded control). At layer
            0 there is no decoder attention: pick ``cls`` or ``norm``.
    """

    needs_scores: ClassVar[bool] = True
    min_layer: ClassVar[int] = 0
    #: colour space of the pixel variance; only ALTP's densities read it.
    variance_mode: VarianceMode = "channel_mean"

    def __init__(
        self,
        *,
        keep: float,
        layer: int = 2,
        n_segments: int = 10,
        compactness: float = 5.0,
        sigma: float = 1.0,
        importance: str = "attention",
        enforce_connectivity: bool = True,
    ) -> None:
        super().__init__(keep=keep, layer=layer)
        if importance not in _IMPORTANCE:
            raise ValueError(
                f"unknown importance {importance!r}; choose one of: {', '.join(_IMPORTANCE)}"
            )
        if layer == 0 and importance == "attention":
            raise ValueError(
                f"{self.name or 'region pruner'} at layer 0 (the LLM input) has no decoder attention to rank with; "
                "pass importance=cls (the vision tower's CLS attention, GLaMM) or importance=norm "
                "(the visual embedding norm, any model)"
            )
        if int(n_segments) < 1 or compactness <= 0 or sigma < 0:
            raise ValueError(
                f"need n_segments >= 1, compactness > 0, sigma >= 0; got {n_segments}, {compactness}, {sigma}"
            )
        self.n_segments = int(n_segments)
        self.compactness = float(compactness)
        self.sigma = float(sigma)
        self.importance = importance
        self.enforce_connectivity = bool(enforce_connectivity)

    def schedule(self, info: ScheduleInfo) -> list[PruneStage]:
        stages = super().schedule(info)
        if self.importance == "attention":
            return stages
        # Other importances read no decoder scores: spare the engine the attention row.
        return [replace(s, score_layer=None) for s in stages]

    @property
    def needs_vision(self) -> frozenset[str]:
        return frozenset({"cls_attention"}) if self.importance == "cls" else frozenset()

    def vision_hint(self) -> str:
        return "; pass pruner.importance=norm (the visual embedding norm) for a model without CLS attention"

    def prepare(self, image: np.ndarray, grid: tuple[int, int]) -> RegionMap:
        """Superpixels of the image the vision tower sees; runs at image load."""
        return compute_regions(
            image,
            grid,
            n_segments=self.n_segments,
            compactness=self.compactness,
            sigma=self.sigma,
            variance_mode=self.variance_mode,
            enforce_connectivity=self.enforce_connectivity,
        )

    @abstractmethod
    def region_budgets(
        self, regions: RegionMap, sizes: np.ndarray, n_keep: int
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Budgets for the regions that still hold tokens.

        Args:
            regions: the image's :class:`RegionMap`.
            sizes: (R,) tokens each region holds now (0 for regions already emptied).
            n_keep: exact total to keep.

        Returns:
            ((R_present,) int64 budgets in region order, summing to ``n_keep``;
            extra per-region details to record, JSON-serialisable).
        """

    def _importance(self, ctx: PruneContext) -> torch.Tensor:
        if self.importance == "random":
            # One generator per sample: an image's draw never depends on its batch.
            noise = [torch.rand(1, ctx.num_current, generator=torch.Generator().manual_seed(s)) for s in ctx.seeds]
            return torch.cat(noise).to(ctx.visual_ids.device)
        if self.importance == "cls":
            if ctx.vision is None or ctx.vision.cls_attention is None:
                raise ValueError(f"{self.name} with importance='cls' needs the vision tower's CLS attention "
                                 "(ctx.vision.cls_attention); this model does not provide it")
            return ctx.vision.cls_attention.float().gather(1, ctx.visual_ids.to(ctx.vision.cls_attention.device))
        if self.importance == "norm":
            return ctx.visual_hidden.float().norm(dim=-1)  # (B, V_cur)
        if ctx.scores is None:
            raise ValueError(
                f"{self.name} with importance='attention' needs ctx.scores; the stage must set score_layer"
            )
        return ctx.scores.float()

    def select(self, ctx: PruneContext) -> Selection:
        scores = self._importance(ctx)
        device = scores.device
        # At the first stage the tokens are all of 0..V-1 in order, so the region
        # map applies as is and the ids need not be copied off the device.
        full = ctx.num_current == ctx.num_visual
        ids = None if full else ctx.visual_ids.cpu().numpy()
        regions_b, budgets_b, extras = [], [], []
        for b, regions in enumerate(ctx.prep):
            if not isinstance(regions, RegionMap):
                raise ValueError(
                    f"{self.name} needs ctx.prep[{b}] = pruner.prepare(image, grid) computed at image load, "
                    f"got {type(regions).__name__}"
                )
            if regions.grid != tuple(ctx.grid):
                raise ValueError(
                    f"prep grid {regions.grid} != model grid {tuple(ctx.grid)}; re-run prepare()"
                )
            # Regions of the tokens still present (all of them at the first stage).
            region = regions.patch_region if ids is None else regions.patch_region[ids[b]]
            sizes = np.bincount(region, minlength=regions.num_regions)
            present = sizes > 0
            budgets = np.zeros(regions.num_regions, dtype=np.int64)
            budgets[present], extra = self.region_budgets(regions, sizes, ctx.n_keep)
            regions_b.append(region)
            budgets_b.append(budgets)
            extras.append(
                {
                    "region_ids": regions.region_labels[present].tolist(),
                    "region_sizes": sizes[present].tolist(),
                    "budgets": budgets[present].tolist(),
                    # Realised counts: SLIC's superpixels, and the regions that own a token
                    # (the paper's N is only SLIC's target; docs/protocol.md).
                    "slic_segments": regions.num_segments,
                    "regions": int(present.sum()),
                    **extra,
                }
            )
        r_max = max(len(x) for x in budgets_b)
        budget_t = torch.zeros(ctx.batch_size, r_max, dtype=torch.long)
        for b, budgets in enumerate(budgets_b):
            budget_t[b, : len(budgets)] = torch.from_numpy(budgets)
        region_t = torch.from_numpy(np.stack(regions_b)).to(device)
        kept = top_per_region(scores, region_t, budget_t.to(device), ctx.n_keep)
        return Selection(indices=kept, extras=tuple(extras))

    def hparams(self) -> dict[str, Any]:
        return {
            **super().hparams(),
            "n_segments": self.n_segments,
            "compactness": self.compactness,
            "sigma": self.sigma,
            "importance": self.importance,
            "enforce_connectivity": self.enforce_connectivity,
        }


@register_pruner("ddc")
class DDCPruner(RegionPruner):
    """DDC-only: every region keeps the same share r of its tokens (``ceil(r|k|)``, trimmed)."""

    def region_budgets(
        self, regions: RegionMap, sizes: np.ndarray, n_keep: int
    ) -> tuple[np.ndarray, dict[str, Any]]:
        present = sizes[sizes > 0]
        v_cur = int(present.sum())
        # The paper's share r is `keep` over the full grid; should tokens already
        # have been pruned once, the share that lands on n_keep is n_keep / V_cur.
        share = self.keep if v_cur == regions.patch_region.size else n_keep / v_cur
        return ddc_budgets(sizes=present, keep=share, n_keep=n_keep), {}
