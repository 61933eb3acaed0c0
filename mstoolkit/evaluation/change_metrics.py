"""How good is a change detection: lesion-wise and voxel scores of lesion CHANGE between two scans.

The MSSEG-2 challenge (Commowick O, Cervenansky F, Cotton F, Dojat M. "MSSEG-2 challenge
proceedings: multiple sclerosis new lesions segmentation challenge using a data management
and processing infrastructure", MICCAI 2021) scores new-lesion detection lesion by lesion
(F1 of detection) and voxel by voxel (Dice), and counts how many patients without any new
lesion were called active. The definitions here:

* **Changes** are connected components (26-connectivity) of a change mask, at least
  ``min_lesion_mm3`` in volume.
* **Lesion-wise change sensitivity**: the fraction of true changes that a predicted change
  overlaps (any voxel in common: "a true change counts as detected when a predicted change
  overlaps it"). **Precision**: the fraction of predicted changes that overlap a true change.
  **F1**: their harmonic mean. (MSSEG-2 matched with anima's overlap rules, which need more
  than 10 % of a lesion covered; any-overlap is the simpler WMH-challenge rule also used in
  :mod:`mstoolkit.evaluation.metrics`.)
* **Voxel Dice of change**: Dice of the two binary change masks (:func:`mstoolkit.evaluation.metrics.dice`).
* **Count agreement**: predicted minus true number of new and of enlarging lesions.
* **Subject-level activity**: a patient is *active* when they have any new or enlarging
  lesion (yes/no); MSSEG-2 reported it for the patients without new lesions.

Empty-case policy, as in :mod:`mstoolkit.evaluation.metrics`: a ratio whose denominator
counts nothing is 1.0 (no true change and none predicted: sensitivity = precision = F1 = 1).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mstoolkit.data.io import MSToolkitInputError
from mstoolkit.evaluation.metrics import dice, label_lesions

__all__ = ["change_detection", "count_agreement", "is_active", "evaluate_change"]

def _ratio(numerator: float, denominator: float) -> float:
    return 1.0 if denominator == 0 else float(numerator) / float(denominator)


def change_detection(pred: np.ndarray, truth: np.ndarray, *, spacing: Sequence[float],
                     min_lesion_mm3: float = 0.0, connectivity: int = 26) -> dict[str, float | int]:
    """Lesion-wise change detection: sensitivity, precision and F1 (MSSEG-2 style, any-overlap matching).

    Parameters
    ----------
    pred, truth : change masks on one grid (any non-zero voxel is a change)
    spacing : voxel size in mm (for ``min_lesion_mm3``)
    min_lesion_mm3 : changes smaller than this are removed from both masks first
    connectivity : 6, 18 or 26

    Returns
    -------
    dict with ``sensitivity``, ``precision``, ``f1``, ``n_true``, ``n_pred``, ``detected``
    (true changes overlapped), ``true_positive_pred`` (predicted changes overlapping a true one)

    >>> truth = np.zeros((8, 8, 8), np.uint8); truth[1, 1, 1] = truth[5, 5, 5] = 1
    >>> pred = np.zeros_like(truth); pred[1, 1, 1:3] = 1; pred[3, 6, 1] = 1
    >>> change_detection(pred, truth, spacing=(1, 1, 1))["f1"]
    0.5
    """
    pred, truth = np.asarray(pred) != 0, np.asarray(truth) != 0
    if pred.shape != truth.shape:
        raise MSToolkitInputError(f"'pred' has shape {pred.shape} but 'truth' has shape {truth.shape}; put both on one grid.")
    pred_labels, n_pred = label_lesions(pred, spacing=spacing, connectivity=connectivity, min_lesion_mm3=min_lesion_mm3)
    truth_labels, n_true = label_lesions(truth, spacing=spacing, connectivity=connectivity, min_lesion_mm3=min_lesion_mm3)
    both = (pred_labels > 0) & (truth_labels > 0)
    detected = int(np.unique(truth_labels[both]).size)
    true_positive_pred = int(np.unique(pred_labels[both]).size)
    sensitivity, precision = _ratio(detected, n_true), _ratio(true_positive_pred, n_pred)
    f1 = 0.0 if sensitivity + precision == 0 else 2 * sensitivity * precision / (sensitivity + precision)
    return {"sensitivity": sensitivity, "precision": precision, "f1": f1, "n_true": n_true, "n_pred": n_pred,
            "detected": detected, "true_positive_pred": true_positive_pred}


def count_agreement(pred_counts: Mapping[str, int], true_counts: Mapping[str, int]) -> dict[str, int]:
    """Predicted minus true count of new and of enlarging lesions (0 = agreement; > 0 = too many).

    >>> count_agreement({"new": 3, "enlarging": 1}, {"new": 2, "enlarging": 1})
    {'new': 1, 'enlarging': 0}
    """
    return {name: int(pred_counts.get(name, 0)) - int(true_counts.get(name, 0)) for name in ("new", "enlarging")}


def is_active(counts: Mapping[str, int]) -> bool:
    """Subject-level activity (MSSEG-2): any new or enlarging lesion.

    >>> is_active({"new": 0, "enlarging": 1}), is_active({"new": 0, "enlarging": 0, "shrinking_or_resolved": 4})
    (True, False)
    """
    return bool(counts.get("new", 0) or counts.get("enlarging", 0))


def evaluate_change(pred: np.ndarray, truth: np.ndarray, *, spacing: Sequence[float], min_lesion_mm3: float = 0.0,
                    connectivity: int = 26, pred_counts: Mapping[str, int] | None = None,
                    true_counts: Mapping[str, int] | None = None) -> dict[str, Any]:
    """Every change metric of one pair: lesion-wise detection, voxel Dice, and (given counts) count and activity agreement.

    ``pred`` may be a label map (1 new, 2 enlarging, 3 shrinking): every non-zero voxel is a change.
    """
    pred, truth = np.asarray(pred), np.asarray(truth)
    result: dict[str, Any] = change_detection(pred, truth, spacing=spacing, min_lesion_mm3=min_lesion_mm3,
                                              connectivity=connectivity)
    result["dice"] = dice(pred != 0, truth != 0)
    if pred_counts is not None and true_counts is not None:
        result["count_difference"] = count_agreement(pred_counts, true_counts)
        result["active_pred"], result["active_true"] = is_active(pred_counts), is_active(true_counts)
        result["activity_agrees"] = result["active_pred"] == result["active_true"]
    return result
