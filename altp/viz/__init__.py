"""Pictures of runs: token-retention figures (paper Fig. 4/5) and study plots.

* ``python -m altp.viz tokens RUN_DIR [RUN_DIR ...] --image IMAGE_ID --out FILE.png``
  (:mod:`altp.viz.tokens`): kept tokens, superpixels, budgets and masks of one image.
* ``python -m altp.viz figures RESULTS_DIR --out results/figures`` (:mod:`altp.viz.study`):
  every metric against kept tokens, FLOPs and time, per model and split.

Everything is read from run records, predictions and the split; no model is loaded.
"""
