"""Intensity normalisation: z-score, percentile scaling and Nyúl histogram standardisation.

MRI intensities have no units: the same tissue gets other values on another scanner,
and even on one scanner from one session to the next. Each method maps the intensities
inside the brain (a mask, or the non-zero voxels) onto a common scale and sets the
voxels outside it to 0; :func:`normalize` picks one by name (:data:`NORMALIZATIONS`),
as :func:`mstoolkit.preprocessing.preprocess.preprocess_case` and ``mstoolkit preprocess --normalize`` do.

Introduced in notebook 02 (preprocessing).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mstoolkit.data.io import MSToolkitInputError
from mstoolkit.preprocessing.registration import check_optional_mask

__all__ = [
    "NORMALIZATIONS",
    "normalize",
    "normalize_nyul",
    "normalize_percentile",
    "normalize_zscore",
    "nyul_landmarks",
]

#: Intensity normalisation methods understood by :func:`normalize`.
NORMALIZATIONS = ("zscore", "percentile", "nyul")
_NYUL_PERCENTILES = (1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 99)


def _foreground(image: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Voxels the statistics use: the mask, or the non-zero voxels when there is none."""
    if mask is not None:
        return check_optional_mask(mask, image.shape, "mask").astype(bool)
    foreground = image != 0
    if not foreground.any():
        raise MSToolkitInputError("the image is all zeros: there is nothing to normalise.")
    return foreground


def normalize_zscore(image: np.ndarray, *, mask: np.ndarray | None = None) -> np.ndarray:
    """Z-score within the brain: mean 0 and standard deviation 1 over ``mask`` (default: non-zero voxels).

    Voxels outside the mask are set to 0. Introduced in notebook 02.

    >>> out = normalize_zscore(np.array([[[1.0, 2.0, 3.0]]]))
    >>> [round(float(v), 3) for v in out.ravel()]
    [-1.225, 0.0, 1.225]
    """
    image = np.asarray(image, dtype=np.float32)
    inside = _foreground(image, mask)
    values = image[inside].astype(np.float64)
    std = values.std()
    if std == 0:
        raise MSToolkitInputError("the image is constant inside the mask (std 0): z-scoring would divide by zero.")
    return np.where(inside, (image - values.mean()) / std, 0.0).astype(np.float32)


def normalize_percentile(
    image: np.ndarray, *, mask: np.ndarray | None = None, lower: float = 1.0, upper: float = 99.0
) -> np.ndarray:
    """Clip to the ``lower``/``upper`` percentiles within the mask and scale that range to [0, 1].

    Robust to a few very bright voxels (vessels, artefacts). Outside the mask: 0.
    Introduced in notebook 02.
    """
    image = np.asarray(image, dtype=np.float32)
    if not 0 <= lower < upper <= 100:
        raise MSToolkitInputError(f"'lower' and 'upper' must satisfy 0 <= lower < upper <= 100, got {lower}, {upper}.")
    inside = _foreground(image, mask)
    low, high = np.percentile(image[inside], [lower, upper])
    if high <= low:
        raise MSToolkitInputError("the image is constant inside the mask: the percentile range is empty.")
    return np.where(inside, np.clip((image - low) / (high - low), 0.0, 1.0), 0.0).astype(np.float32)


def nyul_landmarks(
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray | None] | None = None,
    *,
    percentiles: Sequence[float] = _NYUL_PERCENTILES,
    scale: tuple[float, float] = (0.0, 100.0),
) -> np.ndarray:
    """Learn Nyúl's standard histogram landmarks from training images (Nyúl et al. 2000).

    Each image's first/last percentile is mapped linearly onto ``scale``; the
    standard landmarks are the mean of the mapped intermediate percentiles.
    Introduced in notebook 02.
    """
    if len(images) == 0:
        raise MSToolkitInputError("'images' is empty: pass at least one training image.")
    masks = [None] * len(images) if masks is None else list(masks)
    mapped = []
    for image, mask in zip(images, masks):
        image = np.asarray(image, dtype=np.float32)
        values = np.percentile(image[_foreground(image, mask)], percentiles)
        if values[-1] <= values[0]:
            raise MSToolkitInputError("a training image is constant inside its mask; Nyúl landmarks need contrast.")
        mapped.append(scale[0] + (values - values[0]) / (values[-1] - values[0]) * (scale[1] - scale[0]))
    return np.mean(mapped, axis=0)


def normalize_nyul(
    image: np.ndarray,
    *,
    landmarks: Sequence[float],
    mask: np.ndarray | None = None,
    percentiles: Sequence[float] = _NYUL_PERCENTILES,
) -> np.ndarray:
    """Nyúl histogram standardisation: piecewise-linear map of this image's percentiles onto ``landmarks``.

    After it, the image's ``percentiles`` (within the mask) equal the standard
    ``landmarks`` from :func:`nyul_landmarks`, so the same tissue gets the same value
    across scanners. Outside the mask: 0. Introduced in notebook 02.
    """
    image = np.asarray(image, dtype=np.float32)
    landmarks = np.asarray(landmarks, dtype=float)
    if landmarks.shape != (len(percentiles),) or np.any(np.diff(landmarks) <= 0):
        raise MSToolkitInputError(
            f"'landmarks' must be {len(percentiles)} increasing values (from nyul_landmarks), got {landmarks.round(2).tolist()}."
        )
    inside = _foreground(image, mask)
    source = np.percentile(image[inside], percentiles)
    if np.any(np.diff(source) <= 0):
        raise MSToolkitInputError("the image has too few distinct values inside the mask for Nyúl standardisation.")
    mapped = np.interp(image, source, landmarks)
    # Extend the first and last segments linearly beyond the outer landmarks.
    low_slope = (landmarks[1] - landmarks[0]) / (source[1] - source[0])
    high_slope = (landmarks[-1] - landmarks[-2]) / (source[-1] - source[-2])
    mapped = np.where(image < source[0], landmarks[0] + (image - source[0]) * low_slope, mapped)
    mapped = np.where(image > source[-1], landmarks[-1] + (image - source[-1]) * high_slope, mapped)
    return np.where(inside, mapped, 0.0).astype(np.float32)


def normalize(
    image: np.ndarray, *, method: str = "zscore", mask: np.ndarray | None = None, landmarks: Sequence[float] | None = None
) -> np.ndarray:
    """Normalise intensities by name: one of :data:`NORMALIZATIONS`. Introduced in notebook 02."""
    if method == "zscore":
        return normalize_zscore(image, mask=mask)
    if method == "percentile":
        return normalize_percentile(image, mask=mask)
    if method == "nyul":
        if landmarks is None:
            raise MSToolkitInputError(
                "Nyúl standardisation needs 'landmarks' learned from training images: compute them with "
                "mstoolkit.preprocessing.normalization.nyul_landmarks(images, masks) (CLI: --landmarks FILE.json)."
            )
        return normalize_nyul(image, mask=mask, landmarks=landmarks)
    raise MSToolkitInputError(f"unknown normalisation {method!r}; allowed: {', '.join(NORMALIZATIONS)}.")
