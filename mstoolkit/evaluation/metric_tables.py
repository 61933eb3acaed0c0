"""Metrics as tables: one row per lesion, per lesion-size bin, or per case of a cohort.

:func:`lesion_table` lists every lesion of the ground truth and of the prediction with
its volume, centroid and whether it was matched (the definitions and matching presets
of :mod:`mstoolkit.evaluation.metrics`); :func:`metrics_by_lesion_size` bins it by volume, because
the small lesions are the ones a model misses; :func:`evaluate_cohort` runs
:func:`mstoolkit.evaluation.metrics.evaluate` on every case of a cohort (arrays or NIfTI files),
for :func:`mstoolkit.evaluation.report.summarize_cohort` to summarise.

Introduced in notebook 04 (metrics).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from mstoolkit.data.io import MSToolkitInputError, bounding_box
from mstoolkit.evaluation.metrics import (
    check_metric_options,
    check_spacing,
    dice_from_counts,
    evaluate,
    match_lesions,
    prepare_masks,
)

__all__ = ["evaluate_cohort", "lesion_table", "metrics_by_lesion_size"]


def lesion_table(
    pred: np.ndarray,
    truth: np.ndarray,
    *,
    spacing: Sequence[float],
    brain_mask: np.ndarray | None = None,
    connectivity: int = 26,
    min_lesion_mm3: float = 0.0,
    matching: str = "any_overlap",
    iou_threshold: float = 0.25,
    alpha: float = 0.10,
    beta: float = 0.70,
    gamma: float = 0.65,
):
    """One row per lesion, truth lesions then predicted lesions, as a pandas DataFrame.

    Columns: ``source`` ("truth"/"pred"), ``lesion`` (1..n within its mask),
    ``volume_mm3``, ``centroid_x/y/z`` (voxel indices), ``matched`` (by the
    chosen preset), ``n_partners`` (lesions of the other mask it touches: 2+ on
    the truth side means split, on the predicted side merged), ``overlap_fraction``
    (part of it covered by the other mask), ``best_iou`` and ``lesion_dice``
    (Dice between the lesion and the union of the lesions it touches).
    Options as in :func:`evaluate`. Introduced in notebook 04 (metrics).
    """
    import cc3d
    import pandas as pd

    check_metric_options(connectivity, matching, "pooled", iou_threshold, alpha, beta, gamma, min_lesion_mm3)
    spacing = check_spacing(spacing)
    pred, truth, _ = prepare_masks(pred, truth, brain_mask)
    box = bounding_box(pred | truth, margin=1)
    offset = np.zeros(3) if box is None else np.array([s.start for s in box], dtype=float)
    if box is not None:
        pred, truth = pred[box], truth[box]
    truth_labels, pred_labels, found = match_lesions(
        pred, truth, float(np.prod(spacing)), connectivity=connectivity, min_lesion_mm3=min_lesion_mm3,
        matching=matching, iou_threshold=iou_threshold, alpha=alpha, beta=beta, gamma=gamma)
    inner = found["overlap"][1:, 1:]
    rows = []
    for source, labels, sizes, other_sizes, hits, touching, iou in (
        ("truth", truth_labels, found["truth_sizes"], found["pred_sizes"], found["truth_hit"], inner, found["iou"]),
        ("pred", pred_labels, found["pred_sizes"], found["truth_sizes"], found["pred_hit"], inner.T, found["iou"].T),
    ):
        centroids = cc3d.statistics(labels.astype(np.uint32))["centroids"][1:] if len(sizes) else np.zeros((0, 3))
        for k in range(len(sizes)):
            partners = touching[k] > 0
            covered = int(touching[k].sum())
            rows.append({
                "source": source, "lesion": k + 1, "volume_mm3": float(sizes[k] * np.prod(spacing)),
                **{f"centroid_{axis}": float(c) for axis, c in zip("xyz", centroids[k] + offset)},
                "matched": bool(hits[k]), "n_partners": int(partners.sum()),
                "overlap_fraction": covered / float(sizes[k]),
                "best_iou": float(iou[k].max(initial=0.0)),
                "lesion_dice": dice_from_counts(covered, int(sizes[k]), int(other_sizes[partners].sum())),
            })
    columns = ["source", "lesion", "volume_mm3", "centroid_x", "centroid_y", "centroid_z", "matched",
               "n_partners", "overlap_fraction", "best_iou", "lesion_dice"]
    return pd.DataFrame(rows, columns=columns)


def metrics_by_lesion_size(table, *, bins: Sequence[float] = (0.0, 10.0, 100.0, np.inf)):
    """Lesion sensitivity and precision per lesion-volume bin (mm³), from :func:`lesion_table`.

    Truth lesions are binned by their own volume (sensitivity), predicted lesions
    by theirs (precision). An empty bin gives ``n = 0`` and the 0/0 → 1.0 policy
    is *not* applied here: its rate is shown as NaN so a plot leaves it out.
    Introduced in notebook 04 (metrics).
    """
    import pandas as pd

    bins = list(bins)
    if len(bins) < 2 or any(hi <= lo for lo, hi in zip(bins[:-1], bins[1:])):
        raise MSToolkitInputError(f"'bins' must be increasing volumes in mm³, got {bins}.")
    labels = [f"{lo:g}–{hi:g} mm³" if np.isfinite(hi) else f"> {lo:g} mm³" for lo, hi in zip(bins[:-1], bins[1:])]
    table = table.assign(size_bin=pd.cut(table["volume_mm3"], bins=bins, labels=labels, right=False))
    rows = []
    for label in labels:
        truth = table[(table["source"] == "truth") & (table["size_bin"] == label)]
        pred = table[(table["source"] == "pred") & (table["size_bin"] == label)]
        rows.append({
            "size_bin": label,
            "n_truth": len(truth), "detected": int(truth["matched"].sum()),
            "lesion_sensitivity": truth["matched"].mean() if len(truth) else np.nan,
            "n_pred": len(pred), "false_positives": int((~pred["matched"]).sum()),
            "lesion_precision": pred["matched"].mean() if len(pred) else np.nan,
        })
    return pd.DataFrame(rows)


def _load_pair(case_id: str, pred, truth, brain, spacing: Sequence[float] | None) -> tuple:
    """Arrays pass through; file paths are loaded (RAS+) and checked to share one grid."""
    from mstoolkit.data.io import check_same_grid, load_mask, spacing_from_affine

    if not isinstance(pred, (str, os.PathLike)) and not isinstance(truth, (str, os.PathLike)):
        if spacing is None:
            raise MSToolkitInputError(f"Case '{case_id}': pass spacing=(x, y, z) in mm when giving arrays, not files.")
        return pred, truth, brain, spacing
    (pred, pred_affine), (truth, truth_affine) = load_mask(pred), load_mask(truth)
    check_same_grid(pred.shape, pred_affine, truth.shape, truth_affine,
                    names=(f"{case_id}: prediction", f"{case_id}: ground truth"))
    if isinstance(brain, (str, os.PathLike)):
        brain, brain_affine = load_mask(brain)
        check_same_grid(truth.shape, truth_affine, brain.shape, brain_affine,
                        names=(f"{case_id}: ground truth", f"{case_id}: brain mask"))
    return pred, truth, brain, spacing_from_affine(truth_affine)


def evaluate_cohort(
    pairs: Mapping[str, tuple],
    *,
    spacing: Sequence[float] | None = None,
    brain_masks: Mapping[str, object] | None = None,
    progress: bool = True,
    **options,
):
    """:func:`evaluate` every case of a cohort: one DataFrame row per case.

    Parameters
    ----------
    pairs : mapping of case id to ``(pred, truth)``
        Arrays (then ``spacing`` is required) or NIfTI paths (spacing read from the affine).
    brain_masks : mapping of case id to array or path, optional
    **options
        Passed to :func:`evaluate` (``matching``, ``hd_mode``, ``min_lesion_mm3`` …).

    Summarise with :func:`mstoolkit.evaluation.report.summarize_cohort`, which makes the
    empty-case policy visible. Introduced in notebook 04 (metrics).
    """
    import pandas as pd
    from tqdm.auto import tqdm

    if not pairs:
        raise MSToolkitInputError("'pairs' is empty; pass {case_id: (pred, truth), ...}.")
    rows = []
    for case_id, pair in tqdm(pairs.items(), desc="evaluate", disable=not progress or len(pairs) < 5):
        if len(pair) != 2:
            raise MSToolkitInputError(f"Case '{case_id}': expected a (pred, truth) pair, got {len(pair)} items.")
        brain = None if brain_masks is None else brain_masks.get(case_id)
        pred, truth, brain, case_spacing = _load_pair(case_id, pair[0], pair[1], brain, spacing)
        rows.append({"case_id": case_id, **evaluate(pred, truth, spacing=case_spacing, brain_mask=brain, **options)})
    return pd.DataFrame(rows).set_index("case_id")
