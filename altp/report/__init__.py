"""A study as one static HTML page: tables, figures and a per-image gallery.

``python -m altp.report RESULTS_DIR --out DIR`` (:func:`altp.report.build.build_report`);
``make report`` builds it for ``results/shapes`` into ``results/report/`` (not committed).
"""
