"""Longitudinal monitoring: what changed between two scans of one patient.

:mod:`mstoolkit.longitudinal.change` puts a baseline and a follow-up scan on the
follow-up's grid, builds a statistical change map (follow-up minus baseline, scaled
by the difference found in normal-appearing tissue, as in LST's longitudinal
pipeline, Schmidt et al. 2019) and sorts the changes lesion by lesion into new,
enlarging and shrinking-or-resolved; ``mstoolkit longitudinal`` runs it on files.
The change metrics (MSSEG-2 style) are in :mod:`mstoolkit.evaluation.change_metrics`.
"""
