"""Where is the model unsure? Sampling, uncertainty maps, calibration and error retention.

Three ways to get several plausible predictions of one scan
(:func:`sample_predictions`): **MC dropout** (Gal & Ghahramani 2016: dropout
left on at test time, normalisation layers kept in eval mode), **deep
ensembles** (Lakshminarayanan et al. 2017: models trained from different
seeds), and **test-time augmentation** (flips, small intensity and affine
changes, each mapped back to the original grid). From the samples,
:func:`uncertainty_maps` gives the voxel-wise measures (Malinin et al. 2022,
Shifts): predictive entropy (total), expected entropy (aleatoric: the data's
ambiguity) and their difference, the mutual information (epistemic: the
models disagree). Entropies are in nats.

Calibration inside the brain and temperature scaling are in :mod:`mstoolkit.uncertainty.calibration`.
:func:`retention_curve` is the Shifts error-retention curve: hand the most
uncertain voxels to a radiologist (replace them with the truth) and watch nDSC
rise; a lower area above the curve means the uncertainty points at the errors.

Introduced in notebook 06 (uncertainty).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from mstoolkit.data.io import MSToolkitInputError, bounding_box, check_mask_shape
from mstoolkit.display.plots import LINE_COLOURS
from mstoolkit.evaluation.metrics import ndsc_from_counts
from mstoolkit.segmentation.inference import check_model_inputs, sliding_window_logits

__all__ = ["SAMPLING_METHODS", "UNCERTAINTY_MEASURES", "mc_dropout", "sample_predictions",
           "uncertainty_maps", "lesion_uncertainty", "review_yield", "retention_curve", "lesion_retention_curve", "plot_retention"]

#: Methods of :func:`sample_predictions`.
SAMPLING_METHODS = ("mc_dropout", "ensemble", "tta")
#: Keys of :func:`uncertainty_maps` that measure uncertainty (higher = less sure).
UNCERTAINTY_MEASURES = ("entropy", "expected_entropy", "mutual_information", "variance")
_DROPOUT_TYPES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
_EPS = 1e-7


# --------------------------------------------------------------------------- sampling


@contextmanager
def mc_dropout(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode everywhere except dropout layers, which stay active; restore the modes after.

    Batch/instance normalisation must stay in eval mode: in train mode BatchNorm would
    normalise with the test batch's statistics and update its running averages.

    Introduced in notebook 06.
    """
    modes = {m: m.training for m in model.modules()}
    dropouts = [m for m in model.modules() if isinstance(m, _DROPOUT_TYPES)]
    if not dropouts or all(m.p == 0 for m in dropouts):
        raise MSToolkitInputError(
            "the model has no dropout layer with p > 0, so MC dropout would repeat one prediction. "
            "Build it with dropout, e.g. build_model('tiny_unet', in_channels=2, dropout=0.1), and train it so."
        )
    model.eval()
    for module in dropouts:
        module.train()
    try:
        yield model
    finally:
        for module, mode in modes.items():
            module.train(mode)


def _box(mask: np.ndarray | None, shape: tuple[int, ...], margin: int = 8) -> tuple[slice, ...]:
    if mask is None:
        return tuple(slice(0, n) for n in shape)
    box = bounding_box(check_mask_shape(mask, shape, "brain_mask"), margin=margin)
    if box is None:
        raise MSToolkitInputError("'brain_mask' is empty.")
    return box


def _windows(shape: Sequence[int], max_voxels: int = 1_200_000, context: int = 32,
             smallest: int = 96) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Few, large windows (≤ ``max_voxels`` each, overlapping by ``context`` voxels) covering ``shape``.

    On a CPU, fewer and larger windows waste less work on overlaps than 96³ ones: ~3× faster.
    The tiny U-Net holds ~0.45 kB of activations per window voxel, so 1.2 million voxels
    cost ~0.5 GB: the notebooks stay within Binder's 2 GB.
    """
    counts = [1, 1, 1]
    while True:
        size = [-(-(n + (k - 1) * context) // k) for n, k in zip(shape, counts)]
        # U-Nets need sizes divisible by 2^levels; ≥ 96 like inference.predict's windows, so instance
        # normalisation sees the same mix of brain and background on small scans
        size = [max(smallest, -(-v // 16) * 16) for v in size]
        if math.prod(size) <= max_voxels or max(size) <= 64:
            return tuple(size), tuple(min(0.5, context / v) if k > 1 else 0.0 for v, k in zip(size, counts))
        counts[int(np.argmax(size))] += 1


def _logits(model: nn.Module, x: torch.Tensor, roi_size: Sequence[int] | None, overlap: float) -> torch.Tensor:
    """Lesion logits (x, y, z) of one (1, channels, x, y, z) input by Gaussian-blended sliding windows."""
    if roi_size is None:
        roi_size, overlap = _windows(x.shape[2:])
    # _windows gives one overlap per axis; sliding_window_logits takes one number, MONAI's inferer a list
    per_axis = not isinstance(overlap, (int, float))
    if per_axis and len(set(overlap)) == 1:
        overlap, per_axis = float(overlap[0]), False
    # windows keep their size: _windows makes them >= 96 voxels on purpose (see there)
    out = sliding_window_logits(model, x, roi_size, overlap, sw_batch_size=1, fit_to_volume=False, use_monai=per_axis)
    return out[0, 0] if out.shape[1] == 1 else out[0, 1] - out[0, 0]


def _affine_theta(rng: np.random.Generator, shape: Sequence[int], degrees: float, scale: float) -> torch.Tensor:
    """A small random rotation + scaling about the centre, as a grid_sample matrix (output → input)."""
    angles = np.deg2rad(rng.uniform(-degrees, degrees, 3))
    c, s = np.cos(angles), np.sin(angles)
    rx = np.array([[1, 0, 0], [0, c[0], -s[0]], [0, s[0], c[0]]])
    ry = np.array([[c[1], 0, s[1]], [0, 1, 0], [-s[1], 0, c[1]]])
    rz = np.array([[c[2], -s[2], 0], [s[2], c[2], 0], [0, 0, 1]])
    matrix = rz @ ry @ rx @ np.diag(rng.uniform(1 - scale, 1 + scale, 3))
    half = np.diag(np.asarray(shape, dtype=float) / 2)  # voxel ↔ normalised coordinates (align_corners=False)
    normalised = np.linalg.inv(half) @ matrix @ half
    normalised = normalised[::-1, ::-1]  # grid_sample's coordinates run (z, y, x)
    return torch.as_tensor(np.concatenate([normalised, np.zeros((3, 1))], axis=1), dtype=torch.float32)


def _warp(volume: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    # "border" repeats the edge: a zero brought in would be a logit of 0, i.e. probability 0.5
    grid = F.affine_grid(theta[None], [1, 1, *volume.shape[-3:]], align_corners=False)
    return F.grid_sample(volume, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _inverse(theta: torch.Tensor) -> torch.Tensor:
    full = torch.eye(4)
    full[:3] = theta
    return torch.linalg.inv(full)[:3]


def sample_predictions(
    model_or_models: nn.Module | Sequence[nn.Module],
    inputs: np.ndarray | torch.Tensor,
    *,
    method: str = "mc_dropout",
    n: int | None = 10,
    brain_mask: np.ndarray | None = None,
    roi_size: Sequence[int] | None = None,
    overlap: float = 0.25,
    seed: int = 0,
    tta_degrees: float = 5.0,
    tta_scale: float = 0.05,
    tta_intensity: float = 0.1,
) -> np.ndarray:
    """Several plausible lesion probability maps of one scan, stacked.

    Parameters
    ----------
    model_or_models : model, or a list of models for ``"ensemble"``
    inputs : array (channels, x, y, z)
        Normalised images (``mstoolkit.segmentation.inference.prepare_inputs``).
    method : {"mc_dropout", "ensemble", "tta"}, keyword-only
        ``"mc_dropout"``: ``n`` passes with dropout on (:func:`mc_dropout`). ``"ensemble"``: one
        pass per model (``n`` is ignored). ``"tta"``: the plain prediction, then ``n - 1`` passes
        on a randomly flipped, rotated (± ``tta_degrees``), scaled (± ``tta_scale``) and
        intensity-jittered (± ``tta_intensity`` in normalised units) copy, each mapped back.
    brain_mask : binary array, optional
        Run the network only on the mask's bounding box (2–3× faster); probabilities outside the
        mask are 0.
    roi_size, overlap
        Sliding-window size and overlap. Default: the brain box in as few windows of at most
        1.2 million voxels as possible, overlapping by 32 voxels (fast on a CPU, ~0.5 GB).
        ``(96, 96, 96)`` and 0.25 reproduce ``mstoolkit.segmentation.inference.predict``'s windows.
    seed : int
        Makes the dropout masks and augmentations reproducible (global RNG state is restored).

    Returns
    -------
    numpy.ndarray, float32, shape (samples, x, y, z)

    Introduced in notebook 06.
    """
    from tqdm.auto import tqdm

    if method not in SAMPLING_METHODS:
        raise MSToolkitInputError(f"Unknown method {method!r}; allowed: {', '.join(SAMPLING_METHODS)}.")
    x = check_model_inputs(inputs)
    models = list(model_or_models) if isinstance(model_or_models, (list, tuple)) else [model_or_models]
    if method == "ensemble":
        if len(models) < 2:
            raise MSToolkitInputError("an ensemble needs a list of at least 2 models (e.g. trained with different seeds).")
        count = len(models)
    else:
        if len(models) != 1:
            raise MSToolkitInputError(f"method {method!r} takes one model, got {len(models)}; use method='ensemble'.")
        if n is None or int(n) < 2:
            raise MSToolkitInputError(f"'n' must be an integer ≥ 2 (number of samples), got {n!r}.")
        count = int(n)
    shape = tuple(x.shape[1:])
    box = _box(brain_mask, shape)
    device = next(models[0].parameters()).device
    crop = x[(slice(None),) + box][None].to(device)
    samples = np.zeros((count,) + shape, dtype=np.float32)
    rng = np.random.default_rng(seed)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for i in tqdm(range(count), desc=f"{method} samples", leave=False):
            if method == "ensemble":
                modes = {m: m.training for m in models[i].modules()}
                models[i].eval()
                logits = _logits(models[i], crop, roi_size, overlap)
                for module, mode in modes.items():
                    module.train(mode)
            elif method == "mc_dropout":
                with mc_dropout(models[0]):
                    logits = _logits(models[0], crop, roi_size, overlap)
            else:
                logits = _tta_logits(models[0], crop, rng, i == 0, roi_size, overlap, tta_degrees, tta_scale, tta_intensity)
            samples[(i,) + box] = torch.sigmoid(logits).float().cpu().numpy()
    if brain_mask is not None:
        samples[:, ~check_mask_shape(brain_mask, shape, "brain_mask")] = 0.0
    return samples


def _tta_logits(model: nn.Module, crop: torch.Tensor, rng: np.random.Generator, identity: bool, roi_size, overlap,
                degrees: float, scale: float, intensity: float) -> torch.Tensor:
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        if identity:
            return _logits(model, crop, roi_size, overlap)
        axes = [a + 2 for a in range(3) if rng.random() < 0.5]
        channels = crop.shape[1]
        gain = torch.as_tensor(rng.uniform(1 - intensity, 1 + intensity, channels), dtype=crop.dtype, device=crop.device)
        shift = torch.as_tensor(rng.uniform(-intensity, intensity, channels), dtype=crop.dtype, device=crop.device)
        theta = _affine_theta(rng, crop.shape[2:], degrees, scale).to(crop.device)
        changed = _warp(crop * gain.view(1, -1, 1, 1, 1) + shift.view(1, -1, 1, 1, 1), theta)
        changed = torch.flip(changed, axes) if axes else changed
        logits = _logits(model, changed, roi_size, overlap)
        logits = torch.flip(logits, [a - 2 for a in axes]) if axes else logits
        return _warp(logits[None, None], _inverse(theta))[0, 0]
    finally:
        for module, mode in modes.items():
            module.train(mode)


# --------------------------------------------------------------------------- uncertainty measures


def _binary_entropy(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1 - _EPS)
    return -(p * np.log(p) + (1 - p) * np.log1p(-p))


def uncertainty_maps(samples: np.ndarray) -> dict[str, np.ndarray]:
    """Voxel-wise mean probability and uncertainty measures from stacked samples.

    With :math:`p_i` the lesion probability of sample *i* and :math:`\\bar p` their mean:

    * ``"mean"``: :math:`\\bar p` (the prediction to threshold)
    * ``"entropy"``: predictive entropy :math:`H(\\bar p)` — total uncertainty
    * ``"expected_entropy"``: :math:`\\frac1n\\sum_i H(p_i)` — aleatoric part
    * ``"mutual_information"``: their difference (BALD) — epistemic part, ≥ 0
    * ``"variance"``: :math:`\\frac1n\\sum_i (p_i - \\bar p)^2`

    >>> maps = uncertainty_maps(np.array([0.0, 1.0]).reshape(2, 1, 1, 1))
    >>> round(float(maps["entropy"][0, 0, 0]), 4), round(float(maps["mutual_information"][0, 0, 0]), 4)
    (0.6931, 0.6931)

    Introduced in notebook 06.
    """
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim != 4 or samples.shape[0] < 1:
        raise MSToolkitInputError(f"'samples' must be (samples, x, y, z), got shape {samples.shape}.")
    if samples.size and (samples.min() < 0 or samples.max() > 1):
        raise MSToolkitInputError("'samples' must hold probabilities in [0, 1]; apply a sigmoid to logits first.")
    mean = samples.mean(axis=0)
    expected = np.zeros_like(mean)
    variance = np.zeros_like(mean)
    for sample in samples:  # one at a time: a 1 mm brain × 10 samples stays small
        expected += _binary_entropy(sample)
        variance += (sample - mean) ** 2
    expected /= len(samples)
    entropy = _binary_entropy(mean).astype(np.float32)
    return {"mean": mean, "entropy": entropy, "expected_entropy": expected.astype(np.float32),
            "mutual_information": np.clip(entropy - expected, 0, None).astype(np.float32),
            "variance": (variance / len(samples)).astype(np.float32)}


def _label(mask: np.ndarray, connectivity: int) -> tuple[np.ndarray, int]:
    import cc3d

    labels = cc3d.connected_components(np.ascontiguousarray(mask, dtype=np.uint8), connectivity=connectivity)
    return labels.astype(np.int32), int(labels.max())


def lesion_uncertainty(
    samples: np.ndarray,
    *,
    measure: str = "mutual_information",
    threshold: float = 0.5,
    truth: np.ndarray | None = None,
    connectivity: int = 26,
):
    """One uncertainty score per predicted lesion (connected component of the mean prediction).

    Columns: ``lesion`` (1..n), ``voxels``, ``uncertainty`` (mean of the voxel ``measure`` over
    the lesion), ``detection_rate`` (share of samples whose own mask touches the lesion),
    ``disagreement`` (1 − detection_rate: samples that do not see it), and with ``truth``,
    ``status``: "TP" when it touches a truth lesion, else "FP" (any-overlap matching, WMH 2017).

    Introduced in notebook 06.
    """
    import pandas as pd

    if measure not in UNCERTAINTY_MEASURES:
        raise MSToolkitInputError(f"Unknown measure {measure!r}; allowed: {', '.join(UNCERTAINTY_MEASURES)}.")
    maps = uncertainty_maps(samples)
    labels, n_lesions = _label(maps["mean"] >= threshold, connectivity)
    index = np.arange(1, n_lesions + 1)
    voxels = np.bincount(labels.ravel(), minlength=n_lesions + 1)[1:]
    score = np.bincount(labels.ravel(), weights=maps[measure].ravel(), minlength=n_lesions + 1)[1:] / np.maximum(voxels, 1)
    detected = np.zeros(n_lesions)
    for sample in np.asarray(samples):
        detected[np.unique(labels[(sample >= threshold) & (labels > 0)]) - 1] += 1
    table = pd.DataFrame({"lesion": index, "voxels": voxels, "uncertainty": score,
                          "detection_rate": detected / len(samples), "disagreement": 1 - detected / len(samples)})
    if truth is not None:
        hit = np.unique(labels[check_mask_shape(truth, labels.shape, "truth") & (labels > 0)])
        table["status"] = np.where(np.isin(index, hit), "TP", "FP")
    return table


def review_yield(table, reviewed, *, error_status: str = "FP") -> dict[str, Any]:
    """How many of the model's errors a review of some predicted lesions catches, against chance.

    ``table`` is :func:`lesion_uncertainty`'s (with ``truth``, so it has ``status``); ``reviewed``
    is a boolean per row (the lesions a rule sends to a radiologist). Returns ``n_lesions``,
    ``n_reviewed``, ``errors`` (rows with ``error_status``), ``caught`` (errors among the
    reviewed) and ``random_expected``: the mean number caught by reviewing the same number of
    lesions picked at random (``n_reviewed × errors / n_lesions``, the hypergeometric mean).

    >>> import pandas as pd
    >>> table = pd.DataFrame({"status": ["TP", "FP", "TP", "FP"], "uncertainty": [0.1, 0.9, 0.2, 0.8]})
    >>> review_yield(table, table["uncertainty"] > 0.5)["caught"], review_yield(table, table["uncertainty"] > 0.5)["random_expected"]
    (2, 1.0)

    Introduced in notebook 06 (which lesions to send for review).
    """
    if "status" not in table:
        raise MSToolkitInputError("'table' has no 'status' column: make it with lesion_uncertainty(..., truth=...).")
    reviewed = np.asarray(reviewed, dtype=bool).ravel()
    if reviewed.shape != (len(table),):
        raise MSToolkitInputError(f"'reviewed' must hold one True/False per lesion ({len(table)}), got {reviewed.shape[0]}.")
    is_error = np.asarray(table["status"] == error_status)
    n_lesions, n_reviewed, errors = len(table), int(reviewed.sum()), int(is_error.sum())
    return {"n_lesions": n_lesions, "n_reviewed": n_reviewed, "errors": errors,
            "caught": int((is_error & reviewed).sum()),
            "random_expected": n_reviewed * errors / n_lesions if n_lesions else 0.0}


# --------------------------------------------------------------------------- error retention


def _retention_fractions(n_fractions: int) -> np.ndarray:
    fractions = np.log(np.arange(1, n_fractions + 1))  # Shifts: log-spaced, dense near 1
    return fractions / fractions[-1]


def retention_curve(
    pred: np.ndarray,
    truth: np.ndarray,
    uncertainty: np.ndarray,
    *,
    brain_mask: np.ndarray,
    n_fractions: int = 200,
    r: float = 0.001,
) -> dict[str, Any]:
    """Shifts error-retention curve of nDSC, and its area above the curve (lower is better).

    Voxels inside the brain are ordered by ``uncertainty``; at retention fraction *f* the
    (1 − f) most uncertain voxels are replaced by the ground truth (a radiologist checks them),
    and nDSC is computed (``mstoolkit.evaluation.metrics`` definition, r = 0.001). Fractions are
    ``log(1..n) / log(n)``, as in the Shifts challenge code.

    Returns
    -------
    dict
        ``fractions``, ``ndsc`` (one per fraction), ``area_above`` (1 − trapezoidal area).

    Introduced in notebook 06.
    """
    shape = np.shape(pred)
    brain = check_mask_shape(brain_mask, shape, "brain_mask")
    p = check_mask_shape(pred, shape, "pred")[brain]
    t = check_mask_shape(truth, shape, "truth")[brain]
    u = np.asarray(uncertainty, dtype=np.float64)
    if u.shape != shape:
        raise MSToolkitInputError(f"'uncertainty' has shape {u.shape} but 'pred' has {shape}.")
    order = np.argsort(u[brain], kind="stable")  # most certain first: they are kept
    p, t = p[order], t[order]
    n = p.size
    cum_tp = np.concatenate([[0], np.cumsum(p & t)])
    cum_fp = np.concatenate([[0], np.cumsum(p & ~t)])
    cum_fn = np.concatenate([[0], np.cumsum(~p & t)])
    cum_truth = np.concatenate([[0], np.cumsum(t)])
    fractions = _retention_fractions(n_fractions)
    scores = []
    for f in fractions:
        kept = int(n * f)
        replaced_truth = int(cum_truth[-1] - cum_truth[kept])  # referred voxels become exact
        scores.append(ndsc_from_counts(int(cum_tp[kept]) + replaced_truth, int(cum_fp[kept]), int(cum_fn[kept]),
                                       n_truth=int(cum_truth[-1]), n_voxels=n, r=r))
    scores = np.asarray(scores)
    return {"fractions": fractions, "ndsc": scores, "area_above": float(1.0 - np.trapezoid(scores, fractions))}


def lesion_retention_curve(table, *, n_truth: int, n_detected: int, n_fractions: int = 200) -> dict[str, Any]:
    """Lesion-level retention curve of lesion F1 (any-overlap matching).

    ``table`` is :func:`lesion_uncertainty` output with ``status``. The most uncertain predicted
    lesions are referred first: a referred false positive is removed, a referred true positive
    stays. Missed lesions cannot be referred (the model did not flag them), so
    ``n_truth`` / ``n_detected`` (truth lesions, and those touched by the prediction) fix the
    sensitivity. F1 = 2·precision·sensitivity / (precision + sensitivity).

    Introduced in notebook 06.
    """
    if "status" not in table:
        raise MSToolkitInputError("'table' has no 'status' column; call lesion_uncertainty(..., truth=truth).")
    order = np.argsort(table["uncertainty"].to_numpy(), kind="stable")
    false_positive = (table["status"].to_numpy() == "FP")[order]
    sensitivity = 1.0 if n_truth == 0 else n_detected / n_truth
    fractions = _retention_fractions(n_fractions)
    scores = []
    for f in fractions:
        kept = int(len(order) * f)
        fp, tp = int(false_positive[:kept].sum()), len(order) - int(false_positive.sum())
        precision = 1.0 if tp + fp == 0 else tp / (tp + fp)
        scores.append(0.0 if precision + sensitivity == 0 else 2 * precision * sensitivity / (precision + sensitivity))
    scores = np.asarray(scores)
    return {"fractions": fractions, "f1": scores, "area_above": float(1.0 - np.trapezoid(scores, fractions))}


# --------------------------------------------------------------------------- figures


def plot_retention(curves: dict[str, dict[str, Any]], *, ax: Any = None, score: str = "ndsc"):
    """Error-retention curves, one per uncertainty measure, with their area above the curve.

    Introduced in notebook 06.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 4))
    for (label, found), colour, style in zip(curves.items(), LINE_COLOURS, ["-", "--", "-.", ":", "-", "--"]):
        ax.plot(found["fractions"], found[score], color=colour, ls=style, label=f"{label} (AAC {found['area_above']:.3f})")
    ax.set_xlabel("fraction of voxels retained (the rest referred to a radiologist)")
    ax.set_ylabel("nDSC" if score == "ndsc" else "lesion F1")
    ax.set_title("Error-retention curves (higher, lower area above = better)")
    ax.legend(fontsize=8)
    return ax
