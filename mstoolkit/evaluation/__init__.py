"""How good is a segmentation: metrics, per-lesion and per-cohort tables, reports.

Modules: ``metric_tables``, ``metrics``, ``report``.
"""
