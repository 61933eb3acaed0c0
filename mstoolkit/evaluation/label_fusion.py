"""Several raters' masks made into one reference: majority vote, STAPLE, soft labels.

* **Majority vote**: a voxel is lesion when more than half the raters drew it.
* **STAPLE** (Warfield, Zou & Wells 2004, *Simultaneous truth and performance level
  estimation*, IEEE TMI 23:903–921): an EM algorithm that estimates each rater's
  sensitivity and specificity together with the probability of every voxel being lesion,
  so a rater who is often wrong counts less. SimpleITK's ``STAPLEImageFilter`` runs it.
* **Soft label**: the fraction of raters who drew each voxel, kept as a probability;
  training on it tells the network that the border is uncertain instead of picking one
  rater's guess.

Introduced in notebook 04 (metrics).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["majority_vote", "soft_label", "staple"]


def _stack(masks: Sequence[np.ndarray]) -> np.ndarray:
    if len(masks) < 2:
        raise ValueError(f"label fusion needs at least 2 raters' masks, got {len(masks)}.")
    shapes = {np.shape(m) for m in masks}
    if len(shapes) != 1:
        raise ValueError(f"the raters' masks must have one shape, got {sorted(shapes)}.")
    return np.stack([np.asarray(m, bool) for m in masks])


def soft_label(masks: Sequence[np.ndarray]) -> np.ndarray:
    """Fraction of raters who drew each voxel (float32 in [0, 1]).

    >>> soft_label([np.array([1, 1, 0]), np.array([1, 0, 0])]).tolist()
    [1.0, 0.5, 0.0]
    """
    return _stack(masks).mean(axis=0).astype(np.float32)


def majority_vote(masks: Sequence[np.ndarray]) -> np.ndarray:
    """Voxels drawn by more than half of the raters (uint8 0/1; a tie is not a majority).

    >>> majority_vote([np.array([1, 1, 0]), np.array([1, 0, 0]), np.array([1, 1, 1])]).tolist()
    [1, 1, 0]
    """
    stacked = _stack(masks)
    return (2 * stacked.sum(axis=0) > len(stacked)).astype(np.uint8)


def staple(masks: Sequence[np.ndarray], *, threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray, list[float], list[float]]:
    """STAPLE fusion (Warfield et al. 2004) with SimpleITK.

    Returns ``(mask, probability, sensitivities, specificities)``: the fused mask
    (probability ``>= threshold``, uint8), the estimated probability of lesion per voxel
    (float32), and each rater's estimated sensitivity and specificity.

    >>> truth = np.zeros((4, 20, 20), bool); truth[:, 5:15, 5:15] = True
    >>> sloppy = truth.copy(); sloppy[:, 5:8] = False
    >>> fused, probability, sens, spec = staple([truth, truth, sloppy])
    >>> bool((fused == truth).all()), sens[2] < sens[0]
    (True, True)
    """
    import SimpleITK as sitk

    stacked = _stack(masks)
    staple_filter = sitk.STAPLEImageFilter()
    staple_filter.SetForegroundValue(1.0)
    images = [sitk.GetImageFromArray(mask.astype(np.uint8)) for mask in stacked]
    probability = sitk.GetArrayFromImage(staple_filter.Execute(images)).astype(np.float32)
    return ((probability >= threshold).astype(np.uint8), probability,
            list(staple_filter.GetSensitivity()), list(staple_filter.GetSpecificity()))
