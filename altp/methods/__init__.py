"""The paper's method: DDC-only and ALTP pruners (importing registers them)."""

from altp.methods.altp import ALTPPruner
from altp.methods.ddc import DDCPruner, RegionPruner, top_per_region

__all__ = ["ALTPPruner", "DDCPruner", "RegionPruner", "top_per_region"]
