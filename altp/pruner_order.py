"""The one display order of pruner names: tables, figures, the demo and its printed table.

The unpruned reference first, then the baselines, then the paper's method with its
ablation last (DDC-only before ALTP), as in the paper's tables. Names not listed (a
pruner added later) follow, alphabetically. The set of pruners is the registry's
(:mod:`altp.pruners`) and the config group's (``conf/pruner/``);
``tests/test_pruner_registry.py`` checks that this order names every one of them.

Free of imports on purpose: ``eval/`` and ``altp.viz`` order their rows and colours
by it without importing a pruner.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["PRUNER_ORDER", "in_display_order", "pruner_rank"]

PRUNER_ORDER: tuple[str, ...] = (
    "none", "fastv", "pdrop", "random", "uniform", "visionzip", "divprune", "dart", "ddc", "altp",
)


def pruner_rank(name: str) -> int:
    """Position of ``name`` in :data:`PRUNER_ORDER`; ``len(PRUNER_ORDER)`` for an unlisted name."""
    return PRUNER_ORDER.index(name) if name in PRUNER_ORDER else len(PRUNER_ORDER)


def in_display_order(names: Iterable[str]) -> list[str]:
    """``names`` sorted by :func:`pruner_rank`, unlisted names after the listed ones, alphabetically.

    >>> in_display_order(["altp", "zeta", "none", "fastv"])
    ['none', 'fastv', 'altp', 'zeta']
    """
    return sorted(names, key=lambda n: (pruner_rank(n), n))
