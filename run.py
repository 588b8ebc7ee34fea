"""Entry point: ``python run.py model=glamm pruner=altp keep=0.1 data=grandf_val``.

Thin on purpose: :mod:`altp.run.app` is the command (Hydra composes ``conf/``,
:func:`altp.run.runner.run` does the work and returns the flat metrics); an installed
package has the same command as ``altp-run``. Sweeps: ``python run.py -m pruner=fastv,altp
keep=0.1,0.25``.
"""

from __future__ import annotations

from altp.run.app import main

if __name__ == "__main__":
    main()
