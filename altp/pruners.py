"""The built-in pruners, registered: import this module to build any of them by name.

Importing :mod:`altp.methods` (DDC-only, ALTP) and :mod:`baselines` (FastV, PyramidDrop,
random, uniform) runs their ``@register_pruner`` decorators. The pruner interface
(:mod:`altp.pruning.base`) never imports a pruner -- pruners depend on it, not the other
way round -- so this catalogue sits above both and only the top layer imports it: the
runner (before Hydra instantiates ``conf/pruner/<name>.yaml``, whose target is
:func:`altp.pruning.build_pruner`), the scripts and the tests.

A new built-in pruner is one module in ``baselines/`` (or ``altp/methods/``) imported by
that package's ``__init__``, plus ``conf/pruner/<name>.yaml``; a user's own pruner
registers when its module is imported (README, "Pruners")::

    >>> from altp.pruners import build_pruner
    >>> type(build_pruner("fastv", keep=0.25)).__name__
    'FastVPruner'
"""

from __future__ import annotations

import altp.methods  # noqa: F401  (registers ddc, altp)
import baselines  # noqa: F401  (registers fastv, pdrop, random, uniform, visionzip, divprune, dart)
from altp.pruner_order import in_display_order
from altp.pruning.base import available_pruners, build_pruner

__all__ = ["available_pruners", "build_pruner", "pruners_in_display_order"]


def pruners_in_display_order() -> list[str]:
    """Every registered pruner name, ``none`` included, in :data:`altp.pruner_order.PRUNER_ORDER`."""
    return in_display_order(available_pruners())
