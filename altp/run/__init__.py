"""The run machinery: one run of a model, a pruner and a split, from the command line to metrics.json.

The command (:mod:`~altp.run.app`, :mod:`~altp.run.cli`, :mod:`~altp.run.config_checks`), the
runner that orders a run's seams (:mod:`~altp.run.runner`): which images to do
(:mod:`~altp.run.resume`, :mod:`~altp.run.fingerprint`), the input pipeline and the batched
model calls (:mod:`~altp.run.pipeline`, :mod:`~altp.run.batches`, :mod:`~altp.run.inference`),
which rank does which images (:mod:`~altp.run.distributed`) and the summary
(:mod:`~altp.run.summary`). Nothing below this package imports it.

Importing the package imports nothing, so ``python -m altp.run.app`` stays light.
"""
