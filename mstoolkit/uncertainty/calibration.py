"""Are the probabilities honest? Calibration inside the brain, and temperature scaling.

A model is calibrated when, of all the voxels it gives a lesion probability of 0.8,
about 80 % are lesion. :func:`calibration` measures this inside the brain only (the
millions of easy background voxels would otherwise hide any miscalibration): the
expected calibration error (ECE) and the data of a reliability diagram
(:func:`plot_reliability`). :func:`fit_temperature` learns one temperature on held-out
calibration cases; :func:`apply_temperature` then softens an over-confident model (or
sharpens an under-confident one) without changing which voxels rank higher. The mask at
any threshold other than 0.5 does change: ``sigmoid(z / T) >= t`` ⇔ ``z >= T · logit(t)``.

Introduced in notebook 06 (uncertainty).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from mstoolkit.data.io import MSToolkitInputError, check_mask_shape
from mstoolkit.display.plots import LINE_COLOURS

__all__ = ["apply_temperature", "calibration", "fit_temperature", "plot_reliability"]

_EPS = 1e-7  # probabilities are clipped to [eps, 1 - eps] before taking logits


def calibration(prob: np.ndarray, truth: np.ndarray, *, brain_mask: np.ndarray, n_bins: int = 15) -> dict[str, Any]:
    """Expected calibration error and reliability-diagram data, inside the brain.

    Voxels are binned by predicted lesion probability (``n_bins`` equal-width bins);
    ECE = Σ_bins (voxels in bin / voxels) · |observed lesion frequency − mean probability|.

    Returns
    -------
    dict
        ``ece``, ``bin_edges``, ``confidence`` (mean probability per bin), ``frequency``
        (share of lesion voxels per bin), ``count`` (voxels per bin; empty bins hold NaN).

    Introduced in notebook 06.
    """
    prob = np.asarray(prob, dtype=np.float64)
    if not isinstance(n_bins, int) or n_bins < 2:
        raise MSToolkitInputError(f"'n_bins' must be an integer ≥ 2, got {n_bins!r}.")
    if prob.size and (prob.min() < 0 or prob.max() > 1):
        raise MSToolkitInputError("'prob' must hold probabilities in [0, 1].")
    brain = check_mask_shape(brain_mask, prob.shape, "brain_mask")
    p, t = prob[brain], check_mask_shape(truth, prob.shape, "truth")[brain]
    if p.size == 0:
        raise MSToolkitInputError("'brain_mask' is empty: no voxel to calibrate on.")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, n_bins - 1)
    count = np.bincount(which, minlength=n_bins).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.bincount(which, weights=p, minlength=n_bins) / count
        frequency = np.bincount(which, weights=t, minlength=n_bins) / count
    gaps = np.nan_to_num(np.abs(frequency - confidence))
    return {"ece": float((count * gaps).sum() / count.sum()), "bin_edges": edges, "confidence": confidence,
            "frequency": frequency, "count": count}


def _logit(prob: np.ndarray) -> np.ndarray:
    prob = np.clip(np.asarray(prob, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(prob) - np.log1p(-prob)


def fit_temperature(
    probs: np.ndarray | Sequence[np.ndarray],
    truths: np.ndarray | Sequence[np.ndarray],
    *,
    brain_masks: np.ndarray | Sequence[np.ndarray],
) -> float:
    """Temperature T minimising the lesion log-loss of ``sigmoid(logit(p) / T)`` inside the brain.

    Fit it on held-out *calibration* cases (never on the cases you then report, nor on those
    that trained the model or chose its checkpoint): T > 1 softens an over-confident model,
    T < 1 sharpens an under-confident one. Ranking, and so the mask at threshold 0.5, does not
    change; the mask at any other threshold t does (keep it with ``sigmoid(logit(t) / T)``).
    Pass one case or lists of cases.

    Introduced in notebook 06.
    """
    from scipy.optimize import minimize_scalar

    as_list = lambda v: list(v) if isinstance(v, (list, tuple)) else [v]  # noqa: E731
    probs, truths, brains = as_list(probs), as_list(truths), as_list(brain_masks)
    if not len(probs) == len(truths) == len(brains):
        raise MSToolkitInputError(f"got {len(probs)} probability maps, {len(truths)} truths and {len(brains)} brain masks.")
    z, t = [], []
    for p, y, b in zip(probs, truths, brains):
        p = np.asarray(p)
        brain = check_mask_shape(b, p.shape, "brain_masks")
        z.append(_logit(p[brain]))
        t.append(check_mask_shape(y, p.shape, "truths")[brain].astype(np.float64))
    logits, labels = np.concatenate(z), np.concatenate(t)
    if labels.size == 0 or labels.min() == labels.max():
        raise MSToolkitInputError("temperature scaling needs both lesion and non-lesion voxels inside the brain masks.")

    def loss(log_t: float) -> float:
        scaled = logits / math.exp(log_t)
        return float(np.mean(np.logaddexp(0, scaled) - labels * scaled))  # binary cross-entropy, stable

    return float(math.exp(minimize_scalar(loss, bounds=(-3.0, 3.0), method="bounded").x))


def apply_temperature(prob: np.ndarray, temperature: float) -> np.ndarray:
    """``sigmoid(logit(prob) / temperature)`` as float32. Introduced in notebook 06.

    >>> [round(float(p), 3) for p in apply_temperature(np.array([0.5, 0.9]), 1.0)]
    [0.5, 0.9]
    """
    if not temperature > 0:
        raise MSToolkitInputError(f"'temperature' must be positive, got {temperature!r}.")
    return (1.0 / (1.0 + np.exp(-_logit(prob) / temperature))).astype(np.float32)


def plot_reliability(results: dict[str, dict[str, Any]], *, ax: Any = None):
    """Reliability diagram: observed lesion frequency against mean predicted probability, per bin.

    ``results`` maps a label (e.g. "before", "after temperature scaling") to :func:`calibration`
    output. The diagonal is perfect calibration. Introduced in notebook 06.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(4.2, 4))
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="perfectly calibrated")
    for (label, found), colour, marker in zip(results.items(), LINE_COLOURS, "osD^v"):
        keep = found["count"] > 0
        ax.plot(found["confidence"][keep], found["frequency"][keep], marker=marker, color=colour,
                label=f"{label} (ECE {found['ece']:.3f})")
    ax.set_xlabel("mean predicted lesion probability (bin)")
    ax.set_ylabel("observed share of lesion voxels")
    ax.set_title("Reliability inside the brain")
    ax.legend(fontsize=8)
    return ax
