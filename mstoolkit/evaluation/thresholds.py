"""Choosing the probability threshold that turns a model's output into a mask.

0.5 is a convention, not a property of the model: a briefly trained or class-imbalanced
model is often under-confident (its best cut-off lies below 0.5), a long-trained one
over-confident. The threshold is a setting like any other, so it is chosen on
**validation** data and then applied, unchanged, to test data. Voxel-wise Dice and
lesion-wise F1 need not agree on the best value: a low threshold grows every lesion's
border (Dice may fall) but also finds faint small lesions (lesion F1 may rise).

Introduced in notebook 04 (metrics).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from mstoolkit.evaluation.metrics import evaluate

__all__ = ["DEFAULT_THRESHOLDS", "threshold_sweep", "best_threshold"]

#: The thresholds tried by default: 0.05, 0.10, …, 0.95.
DEFAULT_THRESHOLDS = tuple(np.round(np.arange(0.05, 0.951, 0.05), 2))


def threshold_sweep(
    probabilities: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    *,
    spacing: Sequence[float],
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    matching: str = "any_overlap",
) -> pd.DataFrame:
    """Mean voxel Dice and lesion F1 over cases, one row per threshold.

    A voxel is lesion when its probability is ``>= threshold``. Returns a DataFrame with
    columns ``threshold``, ``dice``, ``lesion_f1``, ``lesion_sensitivity``, ``lesion_precision``.

    >>> truth = np.zeros((1, 10, 10), bool); truth[0, 2:5, 2:5] = True
    >>> probability = np.where(truth, 0.3, 0.0)
    >>> sweep = threshold_sweep([probability], [truth], spacing=(1, 1, 1), thresholds=(0.2, 0.5))
    >>> sweep["dice"].tolist()
    [1.0, 0.0]
    """
    if len(probabilities) != len(truths) or not probabilities:
        raise ValueError(f"need as many probability maps as truths (at least one), got {len(probabilities)} and {len(truths)}.")
    rows = []
    for threshold in thresholds:
        if not 0.0 < float(threshold) < 1.0:
            raise ValueError(f"thresholds must lie in (0, 1), got {threshold!r}.")
        scores = [evaluate(np.asarray(p) >= threshold, t, spacing=spacing, matching=matching)
                  for p, t in zip(probabilities, truths)]
        rows.append({"threshold": float(threshold),
                     **{key: float(np.mean([s[key] for s in scores]))
                        for key in ("dice", "lesion_f1", "lesion_sensitivity", "lesion_precision")}})
    return pd.DataFrame(rows)


def best_threshold(sweep: pd.DataFrame, metric: str = "dice") -> float:
    """The threshold of ``sweep`` with the highest ``metric`` (ties: the one nearest 0.5).

    >>> sweep = pd.DataFrame({"threshold": [0.3, 0.5, 0.7], "dice": [0.6, 0.6, 0.4]})
    >>> best_threshold(sweep)
    0.5
    """
    if metric not in sweep.columns or metric == "threshold":
        raise ValueError(f"'metric' must be one of {', '.join(c for c in sweep.columns if c != 'threshold')}, got {metric!r}.")
    best = sweep[metric].max()
    tied = sweep.loc[np.isclose(sweep[metric], best), "threshold"]
    return float(tied.iloc[int(np.argmin(np.abs(tied.to_numpy() - 0.5)))])
