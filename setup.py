"""Build hook only (the project's metadata is in pyproject.toml): ship conf/ inside the package.

``conf/`` stays at the repository root, the one source of truth for the Hydra configs;
building a wheel copies it to ``altp/conf/`` so an installed package (``altp-run``) finds
its configs without the source tree (:mod:`altp.configs`). Editable installs read ``conf/``
in place.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

CONF = Path(__file__).resolve().parent / "conf"


class BuildPyWithConf(build_py):
    """``build_py`` that also copies ``conf/**/*.yaml`` to ``<build>/altp/conf/``."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:  # the editable package reads conf/ where it is
            return
        if not (CONF / "config.yaml").is_file():
            raise FileNotFoundError(f"{CONF}/config.yaml not found: build the wheel from a full checkout")
        dest = Path(self.build_lib) / "altp" / "conf"
        shutil.rmtree(dest, ignore_errors=True)  # no stale config from an earlier build
        shutil.copytree(CONF, dest, ignore=lambda d, names: [n for n in names if not (
            n.endswith(".yaml") or (Path(d) / n).is_dir())])


setup(cmdclass={"build_py": BuildPyWithConf})
