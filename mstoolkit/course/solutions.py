"""The answers the notebooks fall back on while a student's exercise is not written yet.

Each function is the worked answer of one exercise of notebooks 01 and 02, built on the
package or a library; a notebook's check cell passes it to
:func:`mstoolkit.course.exercises.fallback`, so a student version goes on (and says so)
when the stub still raises ``NotImplementedError``. A student who wants a hint may read
them, as any package code. Introduced in notebook 01 (data loading).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from mstoolkit.data.io import Case

__all__ = ["orientation_code", "lesion_volume_ml", "count_lesions", "lesion_sizes_mm3", "voxel_to_mni",
           "lesion_fraction", "mask_to_1mm"]


def orientation_code(path: str | os.PathLike) -> str:
    """Three-letter orientation code of a NIfTI file from its affine, e.g. ``"LAS"`` (notebook 01, exercise 1)."""
    import nibabel as nib

    return "".join(nib.aff2axcodes(nib.load(str(path)).affine))


def lesion_volume_ml(mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Total volume of the non-zero voxels of ``mask`` in mL, voxel size ``spacing`` in mm (notebook 01, exercise 2).

    >>> lesion_volume_ml(np.ones((10, 10, 10)), (1.0, 1.0, 2.0))
    2.0
    """
    return float(np.count_nonzero(mask) * np.prod(np.asarray(spacing, dtype=float)) / 1000.0)


def count_lesions(mask: np.ndarray) -> int:
    """Number of 26-connected lesions of a binary mask (notebook 01, exercise 3)."""
    from mstoolkit.evaluation.metrics import label_lesions

    return int(label_lesions(np.asarray(mask) > 0, spacing=(1.0, 1.0, 1.0), connectivity=26)[1])


def lesion_sizes_mm3(mask: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Volume in mm³ of each 26-connected lesion, in label order (notebook 01, the debugging exercise).

    >>> toy = np.zeros((5, 5, 5)); toy[0, 0, 0] = 1; toy[3:5, 3:5, 3:5] = 1
    >>> lesion_sizes_mm3(toy, (1.0, 1.0, 2.0)).tolist()
    [2.0, 16.0]
    """
    from mstoolkit.evaluation.metrics import label_lesions

    labels, n = label_lesions(np.asarray(mask) > 0, spacing=spacing, connectivity=26)
    return np.bincount(labels.ravel(), minlength=n + 1)[1:] * float(np.prod(np.asarray(spacing, dtype=float)))


def voxel_to_mni(voxel: Sequence[float], affine: np.ndarray, to_mni: np.ndarray) -> np.ndarray:
    """MNI world coordinates (mm) of array index ``voxel``: ``affine`` then ``to_mni`` (notebook 02, exercise 1)."""
    from nibabel.affines import apply_affine

    return apply_affine(np.asarray(to_mni) @ np.asarray(affine), np.asarray(voxel, dtype=float))


def lesion_fraction(case: Case) -> float:
    """Share of the brain's voxels (``case.brain_mask``) that are lesion (``case.mask``) (notebook 02, exercise 3)."""
    brain = np.asarray(case.brain_mask) > 0
    return float(np.count_nonzero(np.asarray(case.mask)[brain]) / np.count_nonzero(brain))


def mask_to_1mm(mask: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A binary mask resampled to 1 mm voxels with nearest-neighbour interpolation (notebook 02, the debugging exercise)."""
    from mstoolkit.preprocessing.registration import resample_to_spacing

    return resample_to_spacing(mask, affine, (1.0, 1.0, 1.0), is_mask=True)
