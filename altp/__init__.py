"""ALTP and the harness core.

Importing the package registers the ``run_cell`` config resolver that names run
directories (:mod:`altp.run_dir`), so every entry point that composes conf/config.yaml
(``run.py``, the tests' ``compose``, Hydra's launcher workers) can resolve ``out_dir``.
"""

from altp.run_dir import register_resolver as _register_resolver

_register_resolver()
