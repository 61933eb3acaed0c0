"""Compare a lesion segmentation with the ground truth: voxel, lesion and surface metrics.

Definitions (each one the field uses, named after where it comes from):

* **Dice** ``2|P∩G| / (|P| + |G|)``; both masks empty → 1.0.
* **nDSC** (Shifts challenge, Malinin et al. 2022): Dice with false positives
  rescaled as if the lesion load were ``r = 0.001`` of the volume,
  ``2TP / (2TP + k·FP + FN)`` with ``k = (1−r)|G| / (r(N−|G|))``; both empty →
  1.0, ``|G| = 0`` → ``k = 1``. It makes scores comparable across lesion loads.
* **Lesions** are connected components (26-connectivity by default, 18 or 6
  selectable) of at least ``min_lesion_mm3``. Matching presets:

  - ``"any_overlap"`` (WMH challenge 2017): a truth lesion is detected when any
    predicted voxel touches it; a predicted lesion is a false positive when it
    touches no truth lesion. F1 is the harmonic mean of lesion sensitivity and
    precision.
  - ``"iou"`` (Shifts challenge): a lesion matches when its best
    intersection-over-union with a lesion of the other mask is at least
    ``iou_threshold`` (0.25). F1 is Shifts' ``TP / (TP + (FP + FN) / 2)``, with TP
    counted on the predicted side.
  - ``"anima"`` (MSSEG, Commowick et al. 2018, animaSegPerfAnalyzer): a lesion is
    detected when more than ``alpha`` (10 %) of it is covered, and the lesions
    covering it, taken largest overlap first until more than ``gamma`` (65 %) of
    the covered part is explained, each lie at most ``beta`` (70 %) outside the
    other mask. Lesions of 3 mm³ or less are removed first. F1 is the harmonic
    mean. (The anima tool labels with face connectivity: pass
    ``connectivity=6`` to reproduce its counts exactly.)

* **HD95** in mm, from the *surface voxels* of each mask: the voxels of the mask
  that a 6-connected binary erosion removes (``mask XOR erode(mask)``, outside
  the image counts as background), the definition MONAI and medpy share.
  Distances between voxel centres use the spacing. ``hd_mode="max_directed"``
  (MONAI ``HausdorffDistanceMetric(percentile=95)``, MetricsReloaded, WMH):
  the larger of the two directed 95th percentiles. ``hd_mode="pooled"`` (medpy
  ``hd95``): the 95th percentile of both directions' distances pooled.

Empty-case policy (never a silent NaN): a ratio whose denominator counts
nothing is 1.0 (nothing was missed, nothing falsely claimed), so two empty
masks score Dice = nDSC = sensitivity = precision = lesion F1 = 1 and HD95 = 0;
with exactly one mask empty, overlap scores are 0 and HD95 is ``inf`` (or
``hd95_worst`` when given). The ``"empty"`` key of :func:`evaluate` says which
case applied.

A trap worth knowing: medpy's ``obj_tpr(result, reference)`` divides by the
number of objects in its *first* argument, so ``obj_tpr(pred, truth)`` is lesion
*precision*, not sensitivity; call ``obj_tpr(truth, pred)`` for sensitivity.

Per-lesion tables, metrics by lesion size and whole cohorts are in
:mod:`mstoolkit.evaluation.metric_tables`.

Introduced in notebook 04 (metrics).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from mstoolkit.data.io import MSToolkitInputError, bounding_box, check_binary_mask

__all__ = [
    "MATCHING_PRESETS",
    "HD_MODES",
    "ANIMA_MIN_LESION_MM3",
    "dice",
    "dice_from_counts",
    "ndsc",
    "ndsc_from_counts",
    "surface_distances",
    "hd95",
    "label_lesions",
    "evaluate",
]

MATCHING_PRESETS = ("any_overlap", "iou", "anima")
HD_MODES = ("max_directed", "pooled")
#: MSSEG/anima removes lesions of this volume or less before matching.
ANIMA_MIN_LESION_MM3 = 3.0


# --------------------------------------------------------------------------- input checks


def check_spacing(spacing: Sequence[float]) -> tuple[float, float, float]:
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise MSToolkitInputError(f"'spacing' must be 3 positive numbers (mm), got {spacing!r}.") from None
    if len(values) != 3 or not all(np.isfinite(v) and v > 0 for v in values):
        raise MSToolkitInputError(f"'spacing' must be 3 positive numbers (mm), got {tuple(spacing)}.")
    return values  # type: ignore[return-value]


def as_mask(array: np.ndarray, name: str) -> np.ndarray:
    """A 3D bool view of a binary mask; raise with the fix if it is not one."""
    array = np.asarray(array)
    if array.ndim != 3:
        raise MSToolkitInputError(f"'{name}' must be a 3D mask (x, y, z), got shape {array.shape}.")
    if array.dtype == bool:
        return array
    # Fast path for the common uint8/int 0/1 masks; the slow, explanatory check only on failure.
    if array.dtype.kind in "iu" and array.size and array.min() >= 0 and array.max() <= 1:
        return array.astype(bool)
    if array.dtype.kind == "f" and ((array == 0) | (array == 1)).all():
        return array == 1
    return check_binary_mask(array, name).astype(bool)


def prepare_masks(pred: np.ndarray, truth: np.ndarray, brain_mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, int]:
    pred, truth = as_mask(pred, "pred"), as_mask(truth, "truth")
    if pred.shape != truth.shape:
        raise MSToolkitInputError(
            f"'pred' has shape {pred.shape} but 'truth' has shape {truth.shape}; they must be on the same grid."
        )
    n_voxels = pred.size
    if brain_mask is not None:
        brain = as_mask(brain_mask, "brain_mask")
        if brain.shape != truth.shape:
            raise MSToolkitInputError(f"'brain_mask' has shape {brain.shape}, expected {truth.shape} like the masks.")
        pred, truth, n_voxels = pred & brain, truth & brain, int(np.count_nonzero(brain))
    return pred, truth, n_voxels


def _ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, with the empty-case policy: 0/0 is 1.0."""
    return 1.0 if denominator == 0 else float(numerator) / float(denominator)


# --------------------------------------------------------------------------- voxel metrics


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice similarity coefficient of two binary masks; both empty → 1.0.

    >>> dice(np.ones((2, 2, 2)), np.pad(np.ones((2, 2, 1)), ((0, 0), (0, 0), (0, 1))))
    0.6666666666666666

    Introduced in notebook 04 (metrics).
    """
    pred, truth = as_mask(pred, "pred"), as_mask(truth, "truth")
    if pred.shape != truth.shape:
        raise MSToolkitInputError(f"'pred' has shape {pred.shape} but 'truth' has shape {truth.shape}.")
    return dice_from_counts(np.count_nonzero(pred & truth), np.count_nonzero(pred), np.count_nonzero(truth))


def dice_from_counts(overlap: int, n_pred: int, n_truth: int) -> float:
    """Dice from voxel counts: ``2·overlap / (n_pred + n_truth)``; nothing counted → 1.0.

    The toolkit's one Dice formula: :func:`dice` counts two masks and calls it, :func:`evaluate`
    calls it on the counts it has, and :func:`mstoolkit.evaluation.metric_tables.lesion_table`
    on one lesion and its partners.

    >>> dice_from_counts(4, 6, 6), dice_from_counts(0, 0, 0)
    (0.6666666666666666, 1.0)

    Introduced in notebook 04 (metrics).
    """
    return _ratio(2 * overlap, n_pred + n_truth)


def ndsc_from_counts(tp: int, fp: int, fn: int, *, n_truth: int, n_voxels: int, r: float = 0.001) -> float:
    """nDSC from voxel counts: ``2TP / (2TP + k·FP + FN)``, ``k = (1−r)|G| / (r(N−|G|))``.

    ``n_truth`` is ``|G|`` (truth voxels) and ``n_voxels`` is ``N``; nothing counted
    (TP = FP = FN = 0) → 1.0, ``|G| = 0`` → ``k = 1``. :func:`ndsc` counts two masks
    and calls it; the error-retention curve of notebook 06
    (:func:`mstoolkit.uncertainty.sampling.retention_curve`) calls it on running counts.

    >>> round(ndsc_from_counts(8, 2, 2, n_truth=10, n_voxels=10_000), 4)  # k = 1 at a 0.1 % load
    0.8

    Introduced in notebook 04 (metrics).
    """
    if tp + fp + fn == 0:
        return 1.0
    k = 1.0 if n_truth == 0 or n_voxels == n_truth else (1 - r) * n_truth / (r * (n_voxels - n_truth))
    return float(2 * tp / (2 * tp + k * fp + fn))


def ndsc(pred: np.ndarray, truth: np.ndarray, *, r: float = 0.001, brain_mask: np.ndarray | None = None) -> float:
    """Normalised Dice (Shifts): false positives weighted as if the lesion load were ``r``.

    ``N`` is the number of voxels in ``brain_mask`` (the whole volume without one).
    Both empty → 1.0; an empty truth uses ``k = 1``.

    At a lesion load of exactly ``r`` (1 voxel in 1000) ``k = 1`` and nDSC equals
    Dice; at a 100× heavier load each false positive weighs about 100× more.

    >>> truth = np.zeros((10, 10, 10), bool); truth[0, 0, 0] = True
    >>> pred = truth.copy(); pred[9, 9, 9] = True
    >>> round(ndsc(pred, truth), 4), round(dice(pred, truth), 4)
    (0.6667, 0.6667)

    Introduced in notebook 04 (metrics).
    """
    if not 0 < r < 1:
        raise MSToolkitInputError(f"'r' must be between 0 and 1 (a lesion-load fraction), got {r}.")
    pred, truth, n_voxels = prepare_masks(pred, truth, brain_mask)
    tp = np.count_nonzero(pred & truth)
    fp, fn = np.count_nonzero(pred) - tp, np.count_nonzero(truth) - tp
    return ndsc_from_counts(tp, fp, fn, n_truth=tp + fn, n_voxels=n_voxels, r=r)


# --------------------------------------------------------------------------- surface metrics


def _surface_coordinates(mask: np.ndarray, offset: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    from scipy.ndimage import binary_erosion

    surface = mask ^ binary_erosion(mask)  # 6-connected erosion, outside = background (MONAI, medpy)
    return (np.argwhere(surface) + offset) * spacing


def surface_distances(pred: np.ndarray, truth: np.ndarray, *, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each surface voxel of one mask to the nearest surface voxel of the other.

    Only the box around both masks is processed, and nearest neighbours are found
    with a k-d tree over surface voxels (as MONAI does on CPU): a dense distance
    transform of the box gives the same numbers but is several times slower.

    Returns
    -------
    pred_to_truth, truth_to_pred : float64 arrays, one distance per surface voxel
        Empty arrays when either mask is empty.

    Introduced in notebook 04 (metrics).
    """
    from scipy.spatial import cKDTree

    spacing_arr = np.asarray(check_spacing(spacing))
    pred, truth = as_mask(pred, "pred"), as_mask(truth, "truth")
    if pred.shape != truth.shape:
        raise MSToolkitInputError(f"'pred' has shape {pred.shape} but 'truth' has shape {truth.shape}.")
    if not pred.any() or not truth.any():
        return np.zeros(0), np.zeros(0)
    box = bounding_box(pred | truth, margin=1)
    offset = np.array([s.start for s in box])
    pred_points = _surface_coordinates(pred[box], offset, spacing_arr)
    truth_points = _surface_coordinates(truth[box], offset, spacing_arr)
    pred_to_truth = cKDTree(truth_points).query(pred_points, k=1)[0]
    truth_to_pred = cKDTree(pred_points).query(truth_points, k=1)[0]
    return pred_to_truth, truth_to_pred


def hd95(
    pred: np.ndarray,
    truth: np.ndarray,
    *,
    spacing: Sequence[float],
    mode: str = "max_directed",
    worst: float | None = None,
) -> float:
    """95th-percentile Hausdorff distance in mm (surface definition in the module docstring).

    Parameters
    ----------
    mode : {"max_directed", "pooled"}, keyword-only
        ``"max_directed"`` = MONAI/MetricsReloaded/WMH: ``max(P95(d(P→G)), P95(d(G→P)))``.
        ``"pooled"`` = medpy ``hd95``: ``P95`` of both directions' distances together.
    worst : float, optional
        Returned when exactly one mask is empty; default ``inf``. Both empty → 0.0.

    >>> a = np.zeros((1, 5, 9), bool); a[0, 1:4, 1:4] = True
    >>> b = np.roll(a, 4, axis=2)
    >>> hd95(a, b, spacing=(1.0, 1.0, 2.0))   # a 4-voxel shift along a 2 mm axis
    8.0

    Introduced in notebook 04 (metrics).
    """
    if mode not in HD_MODES:
        raise MSToolkitInputError(f"'mode' must be one of {', '.join(HD_MODES)}, got {mode!r}.")
    pred, truth = as_mask(pred, "pred"), as_mask(truth, "truth")
    pred_any, truth_any = bool(pred.any()), bool(truth.any())
    if not pred_any and not truth_any:
        return 0.0
    if pred_any != truth_any:
        return float("inf") if worst is None else float(worst)
    forward, backward = surface_distances(pred, truth, spacing=spacing)
    if mode == "pooled":
        return float(np.percentile(np.concatenate([forward, backward]), 95))
    return float(max(np.percentile(forward, 95), np.percentile(backward, 95)))


# --------------------------------------------------------------------------- lesions


def label_lesions(
    mask: np.ndarray, *, spacing: Sequence[float], connectivity: int = 26, min_lesion_mm3: float = 0.0
) -> tuple[np.ndarray, int]:
    """Label lesions as connected components (cc3d), dropping those under ``min_lesion_mm3``.

    Returns
    -------
    labels : int32 array, 0 = background, lesions numbered 1..n
    n : int

    Introduced in notebook 04 (metrics).
    """
    if connectivity not in (6, 18, 26):
        raise MSToolkitInputError(f"'connectivity' must be 6, 18 or 26, got {connectivity!r}.")
    voxel_mm3 = float(np.prod(check_spacing(spacing)))
    labels = _label(as_mask(mask, "mask"), connectivity)
    return _remove_small(labels, voxel_mm3, min_lesion_mm3, at_most=None)


def _label(mask: np.ndarray, connectivity: int) -> np.ndarray:
    import cc3d

    return cc3d.connected_components(mask, connectivity=connectivity, out_dtype=np.uint32).astype(np.int32)


def _remove_small(labels: np.ndarray, voxel_mm3: float, min_mm3: float, *, at_most: float | None) -> tuple[np.ndarray, int]:
    """Drop lesions smaller than ``min_mm3`` (and, for anima, of ``at_most`` mm³ or less); renumber."""
    volumes = np.bincount(labels.ravel()) * voxel_mm3
    keep = volumes >= min_mm3 - 1e-9
    if at_most is not None:
        keep &= volumes > at_most + 1e-9
    keep[0] = False
    if keep[1:].all():
        return labels, len(volumes) - 1
    new_ids = np.cumsum(keep).astype(np.int32) * keep
    return new_ids[labels], int(keep.sum())


def _overlap_matrix(truth_labels: np.ndarray, n_truth: int, pred_labels: np.ndarray, n_pred: int) -> np.ndarray:
    """``O[i, j]`` = voxels in truth lesion i and predicted lesion j (index 0 = background)."""
    foreground = (truth_labels > 0) | (pred_labels > 0)
    pairs = truth_labels[foreground].astype(np.int64) * (n_pred + 1) + pred_labels[foreground]
    counts = np.bincount(pairs, minlength=(n_truth + 1) * (n_pred + 1))
    return counts.reshape(n_truth + 1, n_pred + 1)


def _anima_detected(overlap: np.ndarray, alpha: float, beta: float, gamma: float) -> np.ndarray:
    """Which row lesions (rows 1..n) animaSegPerfAnalyzer calls detected by the column lesions."""
    sizes_row = overlap[1:].sum(axis=1)
    sizes_col = overlap.sum(axis=0)
    outside_fraction = overlap[0] / np.maximum(sizes_col, 1)  # part of each column lesion on row background
    detected = np.zeros(len(sizes_row), bool)
    for i, row in enumerate(overlap[1:]):
        covered = row[1:].sum()
        if covered / sizes_row[i] <= alpha:
            continue
        ok, explained = True, 0.0
        for j in np.argsort(-row[1:], kind="stable") + 1:  # largest overlap first
            if row[j] == 0:
                break
            if outside_fraction[j] > beta:
                ok = False
                break
            explained += row[j] / covered
            if explained > gamma:
                break
        detected[i] = ok
    return detected


def _match(truth_labels: np.ndarray, n_truth: int, pred_labels: np.ndarray, n_pred: int, *, matching: str,
           iou_threshold: float, alpha: float, beta: float, gamma: float) -> dict:
    overlap = _overlap_matrix(truth_labels, n_truth, pred_labels, n_pred)
    truth_sizes, pred_sizes = overlap[1:].sum(axis=1), overlap[:, 1:].sum(axis=0)
    inner = overlap[1:, 1:]
    iou = inner / np.maximum(truth_sizes[:, None] + pred_sizes[None, :] - inner, 1)
    if matching == "any_overlap":
        truth_hit, pred_hit = inner.sum(axis=1) > 0, inner.sum(axis=0) > 0
    elif matching == "iou":
        truth_hit = (iou.max(axis=1, initial=0.0) >= iou_threshold)
        pred_hit = (iou.max(axis=0, initial=0.0) >= iou_threshold)
    else:
        truth_hit = _anima_detected(overlap, alpha, beta, gamma)
        pred_hit = _anima_detected(overlap.T, alpha, beta, gamma)
    return {"overlap": overlap, "iou": iou, "truth_sizes": truth_sizes, "pred_sizes": pred_sizes,
            "truth_hit": truth_hit, "pred_hit": pred_hit}


def check_metric_options(connectivity: int, matching: str, hd_mode: str, iou_threshold: float, alpha: float, beta: float,
                   gamma: float, min_lesion_mm3: float) -> None:
    if connectivity not in (6, 18, 26):
        raise MSToolkitInputError(f"'connectivity' must be 6, 18 or 26, got {connectivity!r}.")
    if matching not in MATCHING_PRESETS:
        raise MSToolkitInputError(f"'matching' must be one of {', '.join(MATCHING_PRESETS)}, got {matching!r}.")
    if hd_mode not in HD_MODES:
        raise MSToolkitInputError(f"'hd_mode' must be one of {', '.join(HD_MODES)}, got {hd_mode!r}.")
    for name, value in (("iou_threshold", iou_threshold), ("alpha", alpha), ("beta", beta), ("gamma", gamma)):
        if not 0 <= value <= 1:
            raise MSToolkitInputError(f"'{name}' must be between 0 and 1, got {value!r}.")
    if not min_lesion_mm3 >= 0:
        raise MSToolkitInputError(f"'min_lesion_mm3' must be 0 or more, got {min_lesion_mm3!r}.")


def match_lesions(pred: np.ndarray, truth: np.ndarray, voxel_mm3: float, *, connectivity: int, min_lesion_mm3: float,
             matching: str, **thresholds: float) -> tuple[np.ndarray, np.ndarray, dict]:
    at_most = ANIMA_MIN_LESION_MM3 if matching == "anima" else None
    truth_labels, n_truth = _remove_small(_label(truth, connectivity), voxel_mm3, min_lesion_mm3, at_most=at_most)
    pred_labels, n_pred = _remove_small(_label(pred, connectivity), voxel_mm3, min_lesion_mm3, at_most=at_most)
    found = _match(truth_labels, n_truth, pred_labels, n_pred, matching=matching, **thresholds)
    return truth_labels, pred_labels, found


def evaluate(
    pred: np.ndarray,
    truth: np.ndarray,
    *,
    spacing: Sequence[float],
    brain_mask: np.ndarray | None = None,
    connectivity: int = 26,
    min_lesion_mm3: float = 0.0,
    matching: str = "any_overlap",
    hd_mode: str = "max_directed",
    iou_threshold: float = 0.25,
    alpha: float = 0.10,
    beta: float = 0.70,
    gamma: float = 0.65,
    hd95_worst: float | None = None,
) -> dict:
    """Every metric of one prediction against its ground truth, as a flat dict.

    Parameters
    ----------
    pred, truth : binary 3D arrays on the same grid
    spacing : 3 floats, keyword-only
        Voxel size in mm (``case.spacing``).
    brain_mask : binary array, optional
        Voxels outside it are ignored by every metric; nDSC's ``N`` is its size.
    connectivity : {26, 18, 6}
    min_lesion_mm3 : float
        Lesions smaller than this are ignored by the *lesion-wise* metrics only;
        voxel metrics and HD95 use the masks as given.
    matching : {"any_overlap", "iou", "anima"}
        Lesion matching preset (module docstring); ``iou_threshold`` is used by
        ``"iou"``, ``alpha``, ``beta``, ``gamma`` by ``"anima"``.
    hd_mode : {"max_directed", "pooled"}
    hd95_worst : float, optional
        HD95 reported when exactly one mask is empty (default ``inf``).

    Returns
    -------
    dict
        ``dice, ndsc, sensitivity, precision`` (voxel-wise); ``lesion_f1,
        lesion_sensitivity, lesion_precision, n_lesions_truth, n_lesions_pred,
        lesion_tp`` (truth lesions detected), ``lesion_tp_pred`` (predicted
        lesions matched), ``lesion_fp, lesion_fn``; ``hd95_mm``;
        ``volume_truth_ml, volume_pred_ml, volume_difference_ml`` (pred − truth),
        ``abs_volume_difference_ml, relative_volume_difference`` (÷ truth; 0 when
        both empty, ``inf`` when only truth is); ``empty`` ("none", "truth",
        "pred" or "both": which empty-case rule applied), ``matching``, ``hd_mode``.

    Introduced in notebook 04 (metrics).
    """
    check_metric_options(connectivity, matching, hd_mode, iou_threshold, alpha, beta, gamma, min_lesion_mm3)
    spacing = check_spacing(spacing)
    pred, truth, n_voxels = prepare_masks(pred, truth, brain_mask)
    voxel_mm3 = float(np.prod(spacing))
    box = bounding_box(pred | truth, margin=1)
    if box is not None:  # everything below only needs the box around both masks
        pred, truth = pred[box], truth[box]

    n_pred, n_truth = int(np.count_nonzero(pred)), int(np.count_nonzero(truth))
    tp = int(np.count_nonzero(pred & truth))
    fp, fn = n_pred - tp, n_truth - tp
    result: dict = {
        "dice": dice_from_counts(tp, n_pred, n_truth),
        "ndsc": ndsc_from_counts(tp, fp, fn, n_truth=n_truth, n_voxels=n_voxels, r=0.001),
        "sensitivity": _ratio(tp, n_truth),
        "precision": _ratio(tp, n_pred),
    }

    _, _, found = match_lesions(pred, truth, voxel_mm3, connectivity=connectivity, min_lesion_mm3=min_lesion_mm3,
                           matching=matching, iou_threshold=iou_threshold, alpha=alpha, beta=beta, gamma=gamma)
    lesions_truth, lesions_pred = len(found["truth_sizes"]), len(found["pred_sizes"])
    lesion_tp, lesion_tp_pred = int(found["truth_hit"].sum()), int(found["pred_hit"].sum())
    lesion_fn, lesion_fp = lesions_truth - lesion_tp, lesions_pred - lesion_tp_pred
    lesion_sensitivity, lesion_precision = _ratio(lesion_tp, lesions_truth), _ratio(lesion_tp_pred, lesions_pred)
    if matching == "iou":  # Shifts' own F1, TP counted on the predicted side
        lesion_f1 = _ratio(lesion_tp_pred, lesion_tp_pred + 0.5 * (lesion_fp + lesion_fn))
    else:
        total = lesion_sensitivity + lesion_precision
        lesion_f1 = 0.0 if total == 0 else 2 * lesion_sensitivity * lesion_precision / total

    volume_pred, volume_truth = n_pred * voxel_mm3 / 1000, n_truth * voxel_mm3 / 1000
    difference = volume_pred - volume_truth
    empty = {(True, True): "both", (True, False): "pred", (False, True): "truth"}.get((n_pred == 0, n_truth == 0), "none")
    result.update(
        lesion_f1=lesion_f1,
        lesion_sensitivity=lesion_sensitivity,
        lesion_precision=lesion_precision,
        n_lesions_truth=lesions_truth,
        n_lesions_pred=lesions_pred,
        lesion_tp=lesion_tp,
        lesion_tp_pred=lesion_tp_pred,
        lesion_fp=lesion_fp,
        lesion_fn=lesion_fn,
        hd95_mm=hd95(pred, truth, spacing=spacing, mode=hd_mode, worst=hd95_worst),
        volume_truth_ml=volume_truth,
        volume_pred_ml=volume_pred,
        volume_difference_ml=difference,
        abs_volume_difference_ml=abs(difference),
        relative_volume_difference=(0.0 if difference == 0 else float("inf")) if n_truth == 0 else difference / volume_truth,
        empty=empty,
        matching=matching,
        hd_mode=hd_mode,
    )
    return result
