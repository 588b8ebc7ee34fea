"""Where the Hydra configs live: ``conf/`` of a checkout, or its copy inside an installed wheel.

``conf/`` at the repository root is the one source of truth (config groups mirror the
code: ``model/``, ``pruner/``, ``data/``, ...). Building a wheel copies it into the
package as ``altp/conf/`` (``setup.py``), so a non-editable install -- the ``altp-run``
entry point, ``python -m altp.viz`` -- finds its configs without the source tree. An
editable install or a plain checkout has no ``altp/conf/`` and reads ``conf/`` itself.

Free of heavy imports: :mod:`altp.run_dir` (imported by ``altp/__init__``) reads the
pruner defaults through it.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["conf_dir", "config_options"]

_PACKAGED = Path(__file__).resolve().parent / "conf"  # altp/conf/ in an installed wheel
_CHECKOUT = Path(__file__).resolve().parents[1] / "conf"  # conf/ next to altp/ in a checkout


def conf_dir() -> Path:
    """The Hydra config root (the folder holding ``config.yaml``): the wheel's copy, else the checkout's.

    Raises:
        FileNotFoundError: neither exists (a broken install), saying how to fix it.
    """
    for path in (_PACKAGED, _CHECKOUT):
        if (path / "config.yaml").is_file():
            return path
    raise FileNotFoundError(
        f"no Hydra configs: neither {_PACKAGED} (installed wheel) nor {_CHECKOUT} (checkout) holds "
        "config.yaml; reinstall the package (pip install .) or run from a checkout"
    )


def config_options(group: str) -> list[str]:
    """The options of one config group (``model``, ``pruner``, ``data``, ...), sorted: its YAML file names.

    >>> "altp" in config_options("pruner") and "glamm_shapes" in config_options("model")
    True
    """
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))
