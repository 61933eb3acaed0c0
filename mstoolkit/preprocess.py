"""Preprocessing: resampling, N4 bias correction, skull stripping, normalisation, registration.

Every function works on plain arrays in the toolkit's convention (RAS+ ``(x, y, z)``
arrays with a 4x4 voxel-to-world ``affine``, see :mod:`mstoolkit.io`);
:func:`preprocess_case` runs any of them, by name, on a whole :class:`~mstoolkit.io.Case`
and records what it did in ``case.meta["preprocessing"]``.

Transform convention
--------------------
:func:`register` returns a 4x4 matrix ``M`` in **RAS world millimetres** that maps a
point of the INPUT (moving) image's world to the corresponding point of the
REFERENCE (fixed) image's world: ``p_ref = M @ p_input``. :func:`resample_to_reference`
with ``transform=M`` puts the input on the reference grid.

ITK (and SimpleITK, ANTs, ``*.txt`` transform files) differ in two ways:

* ITK's physical space is **LPS** (x grows to the Left, y to Posterior), nibabel's is
  **RAS**; the same point has its x and y negated: ``p_lps = F @ p_ras`` with
  ``F = diag(-1, -1, 1, 1)``.
* An ITK registration transform maps points of the FIXED (output) space to the
  MOVING (input) space, because resampling asks "where in the input does this
  output voxel come from?".

So an ITK transform ``T`` is, in this toolkit's convention, ``M = inv(F @ T @ F)``;
:func:`itk_to_world_matrix` does that conversion.

Introduced in notebook 02 (preprocessing).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import ndimage

from .io import Case, MSToolkitInputError, check_binary_mask

__all__ = [
    "NORMALIZATIONS",
    "STEPS",
    "reorient_to_ras",
    "resample_to_spacing",
    "resample_to_reference",
    "n4_correct",
    "load_mni_template",
    "skull_strip",
    "normalize",
    "normalize_zscore",
    "normalize_percentile",
    "nyul_landmarks",
    "normalize_nyul",
    "register",
    "itk_to_world_matrix",
    "displacement_mm",
    "preprocess_case",
    "cli_preprocess",
]

log = logging.getLogger(__name__)

#: Intensity normalisation methods understood by :func:`normalize`.
NORMALIZATIONS = ("zscore", "percentile", "nyul")
#: Step names understood by :func:`preprocess_case`, in a sensible order.
STEPS = ("resample", "coregister", "n4", "skull_strip", "normalize", "to_mni")
_STEP_OPTIONS = {"resample": {"spacing"}, "coregister": {"kind"}, "n4": {"shrink_factor", "mask"},
                 "skull_strip": {"method", "working_spacing"}, "normalize": {"method", "landmarks"},
                 "to_mni": {"resolution", "working_spacing"}}
_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS <-> LPS: negate x and y
_NYUL_PERCENTILES = (1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 99)
# Starting sizes of a brain relative to the MNI template (which is larger than most brains).
_BRAIN_SCALES = (1.0, 0.9, 0.8)


# --------------------------------------------------------------------------- checks and conversions


def _check_image(image: np.ndarray, affine: np.ndarray, name: str = "image") -> tuple[np.ndarray, np.ndarray]:
    image, affine = np.asarray(image), np.asarray(affine, dtype=np.float64)
    if image.ndim != 3:
        raise MSToolkitInputError(f"'{name}' must be a 3D array (x, y, z), got shape {image.shape}.")
    if affine.shape != (4, 4):
        raise MSToolkitInputError(f"the affine of '{name}' must be a 4x4 matrix, got shape {affine.shape}.")
    return image, affine


def _check_mask(mask: np.ndarray | None, shape: tuple, name: str = "mask") -> np.ndarray | None:
    if mask is None:
        return None
    mask = check_binary_mask(mask, name)
    if mask.shape != tuple(shape):
        raise MSToolkitInputError(f"'{name}' has shape {mask.shape} but the image has shape {tuple(shape)}.")
    if not mask.any():
        raise MSToolkitInputError(f"'{name}' is empty (no voxel set): pass a mask that covers the brain, or None.")
    return mask


def _to_sitk(image: np.ndarray, affine: np.ndarray):
    """An RAS (x, y, z) array + affine as a SimpleITK image in ITK's LPS physical space."""
    import SimpleITK as sitk

    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    lps_affine = _LPS @ affine
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(image, (2, 1, 0)), dtype=np.float32))
    img.SetSpacing(spacing.tolist())
    img.SetDirection((lps_affine[:3, :3] / spacing).ravel().tolist())
    img.SetOrigin(lps_affine[:3, 3].tolist())
    return img


def _from_sitk(img) -> np.ndarray:
    import SimpleITK as sitk

    return np.ascontiguousarray(np.transpose(sitk.GetArrayFromImage(img), (2, 1, 0)))


def itk_to_world_matrix(transform) -> np.ndarray:
    """Convert an ITK/SimpleITK affine (or rigid) transform to this toolkit's 4x4 convention.

    Parameters
    ----------
    transform : SimpleITK.Transform or str or Path
        A transform from an ITK registration (fixed -> moving points, LPS), or a
        ``.txt``/``.tfm`` file written by ITK, read with ``SimpleITK.ReadTransform``.

    Returns
    -------
    numpy.ndarray, shape (4, 4)
        ``M`` mapping MOVING world RAS mm to FIXED world RAS mm: ``M = inv(F T F)``
        with ``F = diag(-1, -1, 1, 1)`` (see the module docstring).

    Introduced in notebook 02.

    >>> import SimpleITK as sitk
    >>> shift = sitk.TranslationTransform(3, (2.0, 0.0, 0.0))  # fixed x_LPS + 2 = moving x_LPS
    >>> itk_to_world_matrix(shift)[:3, 3].tolist()  # moving x_RAS = fixed x_RAS - 2, so M adds 2 in RAS
    [2.0, 0.0, 0.0]
    """
    import SimpleITK as sitk

    if isinstance(transform, (str, os.PathLike)):
        transform = sitk.ReadTransform(str(transform))
    dim = transform.GetDimension()
    if dim != 3:
        raise MSToolkitInputError(f"expected a 3D transform, got a {dim}D one.")
    # Probe the transform with 4 points: exact for any affine transform.
    points = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=float)
    mapped = np.array([transform.TransformPoint(p.tolist()) for p in points])
    itk = np.eye(4)
    itk[:3, 3] = mapped[0]
    itk[:3, :3] = (mapped[1:] - mapped[0]).T
    return np.linalg.inv(_LPS @ itk @ _LPS)


def displacement_mm(matrix_a: np.ndarray, matrix_b: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Distance in mm between where two 4x4 world transforms send each point ((n, 3) array).

    Used to compare a registration with a reference one, e.g. over the brain voxels.
    """
    homogeneous = np.c_[points, np.ones(len(points))]
    return np.linalg.norm((homogeneous @ (np.asarray(matrix_a) - np.asarray(matrix_b)).T)[:, :3], axis=1)


# --------------------------------------------------------------------------- orientation and resampling


def reorient_to_ras(image: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flip/permute array axes so index x grows to Right, y to Anterior, z to Superior.

    No interpolation happens: this is what :func:`mstoolkit.io.load_image` does on load,
    offered here for arrays from other sources (e.g. the phantom's raw scan).
    Introduced in notebook 02.
    """
    import nibabel as nib

    image, affine = _check_image(image, affine)
    canonical = nib.as_closest_canonical(nib.Nifti1Image(image, affine))
    return np.asanyarray(canonical.dataobj), canonical.affine.astype(np.float64)


def resample_to_reference(
    image: np.ndarray,
    affine: np.ndarray,
    reference_shape: Sequence[int],
    reference_affine: np.ndarray,
    *,
    transform: np.ndarray | None = None,
    is_mask: bool = False,
) -> np.ndarray:
    """Resample an image (or mask) onto another grid, optionally through a world transform.

    Parameters
    ----------
    image, affine : the input array (x, y, z) and its voxel-to-world matrix
    reference_shape, reference_affine : the output grid
    transform : (4, 4) array, optional, keyword-only
        Input-world to reference-world matrix, as returned by :func:`register`.
    is_mask : bool, keyword-only
        Nearest-neighbour interpolation and a uint8 0/1 result (masks stay binary);
        otherwise trilinear interpolation and float32. Outside the input: 0.

    Introduced in notebook 02.

    >>> out = resample_to_reference(np.ones((4, 4, 4)), np.eye(4), (2, 2, 2), np.diag([2.0, 2, 2, 1]))
    >>> out.shape, float(out.mean())
    ((2, 2, 2), 1.0)
    """
    image, affine = _check_image(image, affine)
    if len(reference_shape) != 3:
        raise MSToolkitInputError(
            f"the reference must be 3D, got shape {tuple(reference_shape)}; pass a 3D reference image."
        )
    transform = np.eye(4) if transform is None else np.asarray(transform, dtype=float)
    if is_mask:
        image = check_binary_mask(image, "mask")
    elif image.dtype in (np.bool_, np.uint8) and np.isin(image, (0, 1)).all():
        warnings.warn(
            "this looks like a mask (0/1 values) but is_mask=False: linear interpolation returns fractions. "
            "Pass is_mask=True to keep it binary.", stacklevel=2,
        )
    # reference voxel -> reference world -> input world -> input voxel
    voxel_map = np.linalg.inv(affine) @ np.linalg.inv(transform) @ np.asarray(reference_affine, dtype=float)
    out = ndimage.affine_transform(
        image.astype(np.float32), voxel_map[:3, :3], offset=voxel_map[:3, 3],
        output_shape=tuple(int(s) for s in reference_shape), order=0 if is_mask else 1, mode="constant", cval=0.0,
    )
    return out.astype(np.uint8) if is_mask else out.astype(np.float32)


def resample_to_spacing(
    image: np.ndarray, affine: np.ndarray, spacing: Sequence[float], *, is_mask: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Resample to a new voxel size (mm) covering the same field of view.

    Returns the new array and affine (same axis directions). Linear for images,
    nearest for masks (``is_mask=True``, uint8 result). Introduced in notebook 02.

    >>> out, new_affine = resample_to_spacing(np.zeros((10, 10, 4)), np.diag([1, 1, 3, 1.0]), (2, 2, 2))
    >>> out.shape, spacing_from_affine(new_affine)
    ((5, 5, 6), (2.0, 2.0, 2.0))
    """
    image, affine = _check_image(image, affine)
    spacing_arr = np.asarray(spacing, dtype=float).ravel()
    if spacing_arr.size != 3 or not np.all(spacing_arr > 0) or not np.all(np.isfinite(spacing_arr)):
        raise MSToolkitInputError(f"'spacing' must be 3 positive numbers, got {tuple(np.ravel(spacing).tolist())}.")
    old_spacing = np.linalg.norm(affine[:3, :3], axis=0)
    new_shape = np.maximum(1, np.round(np.array(image.shape) * old_spacing / spacing_arr)).astype(int)
    directions = affine[:3, :3] / old_spacing
    new_affine = np.eye(4)
    new_affine[:3, :3] = directions * spacing_arr
    # Keep the outer edge of the field of view where it was (corner at voxel -0.5).
    new_affine[:3, 3] = affine[:3, 3] - directions @ (old_spacing / 2) + directions @ (spacing_arr / 2)
    return resample_to_reference(image, affine, tuple(new_shape), new_affine, is_mask=is_mask), new_affine


# --------------------------------------------------------------------------- N4


def n4_correct(
    image: np.ndarray,
    affine: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    shrink_factor: int = 4,
    iterations: Sequence[int] = (20, 20, 20, 20),
    return_field: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """N4 bias-field correction (Tustison et al. 2010) with SimpleITK.

    Parameters
    ----------
    image, affine : the image to correct; the B-spline field lives in mm, so spacing matters
    mask : optional 0/1 array where the field is estimated (default: Otsu foreground)
    shrink_factor : downsample by this factor for the fit (much faster; the field is smooth anyway)
    iterations : iterations per fitting level, one level per entry (4 x 20 gave the same field
        as 4 x 50 on the phantom, in two thirds of the time)
    return_field : also return the estimated multiplicative field (image = corrected * field)

    Introduced in notebook 02.
    """
    import SimpleITK as sitk

    image, affine = _check_image(image, affine)
    mask = _check_mask(mask, image.shape, "mask")
    if int(shrink_factor) < 1:
        raise MSToolkitInputError(f"'shrink_factor' must be an integer >= 1, got {shrink_factor}.")
    if len(iterations) == 0 or min(int(i) for i in iterations) < 1:
        raise MSToolkitInputError(f"'iterations' must list at least one positive count per level, got {tuple(iterations)}.")
    # N4 works on log intensities: shift to positive values first.
    offset = float(min(image.min(), 0.0))
    full = _to_sitk(image - offset + 1e-3, affine)
    if mask is None:
        sitk_mask = sitk.OtsuThreshold(full, 0, 1, 200)
    else:
        sitk_mask = _to_sitk(mask.astype(np.float32), affine)
        sitk_mask = sitk.Cast(sitk_mask, sitk.sitkUInt8)
    shrunk = sitk.Shrink(full, [int(shrink_factor)] * 3)
    shrunk_mask = sitk.Shrink(sitk_mask, [int(shrink_factor)] * 3)
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations([int(i) for i in iterations])
    corrector.Execute(shrunk, shrunk_mask)
    field = np.exp(_from_sitk(corrector.GetLogBiasFieldAsImage(full))).astype(np.float32)
    corrected = (image / field).astype(np.float32)
    return (corrected, field) if return_field else corrected


# --------------------------------------------------------------------------- registration


def _isotropic(img, spacing: float):
    """Smooth then resample a SimpleITK image to isotropic voxels (anisotropic 2D scans register badly otherwise)."""
    import SimpleITK as sitk

    size = np.array(img.GetSize()) * np.array(img.GetSpacing()) / spacing
    smoothed = sitk.SmoothingRecursiveGaussian(img, spacing / 2.0)
    return sitk.Resample(
        smoothed, [max(1, int(round(s))) for s in size], sitk.Transform(), sitk.sitkLinear,
        img.GetOrigin(), [spacing] * 3, img.GetDirection(), 0.0, sitk.sitkFloat32,
    )


def _world_bounds(shape: Sequence[int], affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    corners = np.array([[i, j, k, 1] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)])
    world = corners @ np.asarray(affine).T
    return world[:, :3].min(axis=0), world[:, :3].max(axis=0)


def register(
    image: np.ndarray,
    affine: np.ndarray,
    reference: np.ndarray,
    reference_affine: np.ndarray,
    *,
    kind: str = "rigid",
    reference_mask: np.ndarray | None = None,
    working_spacing: float = 2.0,
    iterations: int = 100,
    sampling: float = 0.1,
    seed: int = 0,
    initial_scales: Sequence[float] = (1.0,),
) -> np.ndarray:
    """Register INPUT (``image``) to ``reference``: Mattes mutual information, multi-resolution.

    Works across contrasts (T1 to FLAIR), sessions, and subjects (to the MNI template).

    Parameters
    ----------
    image, affine : the moving image
    reference, reference_affine : the fixed image
    kind : ``"rigid"`` (6 parameters) or ``"affine"`` (12; a similarity transform first, then affine)
    reference_mask : optional 0/1 array on the reference grid; only voxels inside count
    working_spacing : both images are smoothed and resampled to this isotropic size (mm)
        first; levels then run at 4x, 2x and 1x this size
    iterations, sampling, seed : optimiser iterations per level, fraction of voxels sampled, seed
    initial_scales : affine only: starting guesses of the input's size relative to the reference
        for the similarity stage; each is tried at coarse resolution and the best match kept

    Returns
    -------
    numpy.ndarray, shape (4, 4)
        Maps INPUT world RAS mm to REFERENCE world RAS mm (module docstring); pass it as
        ``transform=`` to :func:`resample_to_reference`.

    Introduced in notebook 02.
    """
    import SimpleITK as sitk

    image, affine = _check_image(image, affine, "image")
    reference, reference_affine = _check_image(reference, reference_affine, "reference")
    if kind not in ("rigid", "affine"):
        raise MSToolkitInputError(f"'kind' must be 'rigid' or 'affine', got {kind!r}.")
    reference_mask = _check_mask(reference_mask, reference.shape, "reference_mask")
    if not (working_spacing > 0 and 0 < sampling <= 1 and iterations >= 1 and len(initial_scales) >= 1):
        raise MSToolkitInputError(
            "need working_spacing > 0, 0 < sampling <= 1, iterations >= 1 and at least one initial scale; got "
            f"{working_spacing}, {sampling}, {iterations}, {tuple(initial_scales)}."
        )
    lo_a, hi_a = _world_bounds(image.shape, affine)
    lo_b, hi_b = _world_bounds(reference.shape, reference_affine)
    if np.any(hi_a < lo_b) or np.any(hi_b < lo_a):
        raise MSToolkitInputError(
            "the image and the reference do not overlap in world space (their bounding boxes are "
            f"{lo_a.round(1).tolist()}..{hi_a.round(1).tolist()} and {lo_b.round(1).tolist()}..{hi_b.round(1).tolist()} mm): "
            "check that both headers are right, or move one (e.g. centre both) before registering."
        )
    fixed = _isotropic(_to_sitk(reference, reference_affine), working_spacing)
    moving = _isotropic(_to_sitk(image, affine), working_spacing)
    fixed_mask = None
    if reference_mask is not None:
        sitk_mask = sitk.Resample(_to_sitk(reference_mask.astype(np.float32), reference_affine), fixed,
                                  sitk.Transform(), sitk.sitkNearestNeighbor)
        fixed_mask = sitk.Cast(sitk_mask > 0.5, sitk.sitkUInt8)

    def run(initial, levels=(4, 2, 1)):
        method = sitk.ImageRegistrationMethod()
        method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
        method.SetMetricSamplingStrategy(method.RANDOM)
        method.SetMetricSamplingPercentage(float(sampling), int(seed) + 1)  # seed 0 means "wall clock" in ITK
        if fixed_mask is not None:
            method.SetMetricFixedMask(fixed_mask)
        method.SetInterpolator(sitk.sitkLinear)
        method.SetOptimizerAsRegularStepGradientDescent(
            learningRate=2.0, minStep=1e-3, numberOfIterations=int(iterations), relaxationFactor=0.6
        )
        method.SetOptimizerScalesFromPhysicalShift()
        method.SetShrinkFactorsPerLevel(list(levels))
        method.SetSmoothingSigmasPerLevel([level / 2 for level in levels])
        method.SetInitialTransform(initial, inPlace=False)
        try:
            result = method.Execute(fixed, moving)
        except RuntimeError as err:
            raise MSToolkitInputError(
                "registration failed: the images overlap too little after alignment "
                f"({str(err).strip().splitlines()[-1][:160]}). Check the headers or pass a reference_mask."
            ) from None
        if isinstance(result, sitk.CompositeTransform):
            result = result.GetNthTransform(0)
        return result, method.GetMetricValue()

    def centred(transform):
        return sitk.CenteredTransformInitializer(fixed, moving, transform, sitk.CenteredTransformInitializerFilter.MOMENTS)

    if kind == "rigid":
        result, _ = run(centred(sitk.Euler3DTransform()))
    else:
        # Brains differ in size, and a scalp around the brain can pull a template towards the
        # head's outline: try a few starting sizes at coarse resolution, keep the best match.
        tries = []
        for scale in initial_scales:
            start = centred(sitk.Similarity3DTransform())
            start.SetScale(float(scale))
            tries.append(run(start, levels=(4, 2)))
        best = int(np.argmin([value for _, value in tries]))
        log.debug("similarity stage: starting scales %s gave metrics %s; kept %s",
                  list(initial_scales), [round(v, 4) for _, v in tries], initial_scales[best])
        similarity = sitk.Similarity3DTransform(tries[best][0])
        start = sitk.AffineTransform(3)
        start.SetCenter(similarity.GetCenter())
        start.SetMatrix(similarity.GetMatrix())
        start.SetTranslation(similarity.GetTranslation())
        result, _ = run(start)
    return itk_to_world_matrix(result)


# --------------------------------------------------------------------------- skull stripping


def load_mni_template(*, resolution: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The MNI152 2009 T1 template (brain only) and its brain mask, shipped in nilearn's wheel.

    Returns ``(template, brain_mask, affine)`` in RAS; ``resolution`` is 1 or 2 mm.
    Introduced in notebook 02.
    """
    if resolution not in (1, 2):
        raise MSToolkitInputError(f"'resolution' must be 1 or 2 (mm), got {resolution!r}.")
    template, mask, affine = _cached_template(resolution)
    return template.copy(), mask.copy(), affine.copy()


@lru_cache(maxsize=2)
def _cached_template(resolution: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from nilearn.datasets import load_mni152_brain_mask, load_mni152_template

    template = load_mni152_template(resolution=resolution)
    mask = load_mni152_brain_mask(resolution=resolution)
    return template.get_fdata(dtype=np.float32), (mask.get_fdata() > 0.5).astype(np.uint8), template.affine.astype(np.float64)


def _external_skull_strip(image: np.ndarray, affine: np.ndarray, method: str) -> np.ndarray:
    import subprocess

    from .io import load_mask, save_image

    commands = {"synthstrip": "mri_synthstrip", "hd-bet": "hd-bet"}
    exe = shutil.which(commands[method])
    if exe is None:
        raise MSToolkitInputError(
            f"skull stripping method '{method}' needs the '{commands[method]}' program on PATH, which was not "
            "found. Install it (SynthStrip: FreeSurfer or `pip install synthstrip`; HD-BET: `pip install hd-bet`) "
            "or use method='atlas', which works offline."
        )
    with tempfile.TemporaryDirectory() as tmp:
        source, brain, mask_path = Path(tmp, "in.nii.gz"), Path(tmp, "brain.nii.gz"), Path(tmp, "brain_mask.nii.gz")
        save_image(source, image, affine)
        if method == "synthstrip":
            args = [exe, "-i", str(source), "-o", str(brain), "-m", str(mask_path)]
        else:
            args = [exe, "-i", str(source), "-o", str(brain), "-device", "cpu", "-mode", "fast", "-tta", "0"]
        done = subprocess.run(args, capture_output=True, text=True)
        if done.returncode != 0 or not mask_path.exists():
            raise MSToolkitInputError(
                f"'{commands[method]}' failed (exit code {done.returncode}): {done.stderr.strip()[-300:]} "
                "Try method='atlas', which works offline."
            )
        return load_mask(mask_path)[0]


def skull_strip(
    image: np.ndarray,
    affine: np.ndarray,
    *,
    method: str = "atlas",
    working_spacing: float = 2.0,
    return_transform: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Brain mask of a head scan.

    ``method="atlas"`` (default, offline): affinely register the MNI152 template to the
    scan (mutual information, so any contrast works; a few starting brain sizes are tried
    so the scalp cannot pull the template outwards) and warp the template's brain mask.
    An affine map cannot follow every individual fold, and atrophy or an unusual contrast
    shrinks or grows the mask a little: check it. ``"synthstrip"`` and ``"hd-bet"`` call
    those deep-learning tools when installed (more accurate on real, pathological scans).

    ``working_spacing`` (mm) is the registration's finest level: 2 mm is about 0.005 Dice
    better than 3 mm and takes about twice as long. Returns the uint8 mask (and, with
    ``return_transform``, the 4x4 matrix mapping the scan's world to MNI world;
    :func:`preprocess_case` reuses it). Introduced in notebook 02.
    """
    image, affine = _check_image(image, affine)
    allowed = ("atlas", "synthstrip", "hd-bet")
    if method not in allowed:
        raise MSToolkitInputError(f"'method' must be one of {', '.join(allowed)}, got {method!r}.")
    if method != "atlas":
        mask = _external_skull_strip(image, affine, method)
        return (mask, np.full((4, 4), np.nan)) if return_transform else mask
    template, template_mask, template_affine = load_mni_template(resolution=2)
    dilated = ndimage.binary_dilation(template_mask, iterations=3).astype(np.uint8)  # some context around the brain
    to_mni = register(image, affine, template, template_affine, kind="affine", reference_mask=dilated,
                      working_spacing=working_spacing, initial_scales=_BRAIN_SCALES)
    _, fine_mask, fine_affine = load_mni_template(resolution=1)  # the 1 mm mask has a smoother edge
    mask = resample_to_reference(fine_mask, fine_affine, image.shape, affine, transform=np.linalg.inv(to_mni), is_mask=True)
    return (mask, to_mni) if return_transform else mask


# --------------------------------------------------------------------------- intensity normalisation


def _foreground(image: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Voxels the statistics use: the mask, or the non-zero voxels when there is none."""
    if mask is not None:
        return _check_mask(mask, image.shape, "mask").astype(bool)
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
                "mstoolkit.preprocess.nyul_landmarks(images, masks) (CLI: --landmarks FILE.json)."
            )
        return normalize_nyul(image, mask=mask, landmarks=landmarks)
    raise MSToolkitInputError(f"unknown normalisation {method!r}; allowed: {', '.join(NORMALIZATIONS)}.")


# --------------------------------------------------------------------------- whole cases


def _copy_case(case: Case) -> Case:
    return Case(
        case_id=case.case_id,
        images={k: v.copy() for k, v in case.images.items()},
        affine=case.affine.copy(),
        mask=None if case.mask is None else case.mask.copy(),
        brain_mask=None if case.brain_mask is None else case.brain_mask.copy(),
        meta={**case.meta, "preprocessing": list(case.meta.get("preprocessing", []))},
    )


def _regrid(case: Case, shape: tuple, affine: np.ndarray, transform: np.ndarray | None = None) -> Case:
    """The case's images (linear) and masks (nearest) on a new grid."""
    def move(array, is_mask):
        if array is None:
            return None
        return resample_to_reference(array, case.affine, shape, affine, transform=transform, is_mask=is_mask)

    images = {k: move(v, False) for k, v in case.images.items()}
    return Case(case.case_id, images, affine, move(case.mask, True), move(case.brain_mask, True), case.meta)


def _run_step(case: Case, name: str, options: dict[str, Any]) -> tuple[Case, dict[str, Any]]:
    """Apply one named step to a case; return the new case and what to record."""
    reference = case.images.get("FLAIR", next(iter(case.images.values())))
    record: dict[str, Any] = {}
    if name == "resample":
        spacing = options.get("spacing", (1.0, 1.0, 1.0))
        new_reference, new_affine = resample_to_spacing(reference, case.affine, spacing)
        case = _regrid(case, new_reference.shape, new_affine)
        record["shape"] = list(case.shape)
    elif name == "coregister":
        target = "FLAIR" if "FLAIR" in case.images else case.sequences[0]
        for seq in case.sequences:
            if seq != target:
                image = case.images[seq]
                matrix = register(image, case.affine, case.images[target], case.affine, kind=options.get("kind", "rigid"))
                case.images[seq] = resample_to_reference(image, case.affine, case.shape, case.affine, transform=matrix)
                record[f"{seq}_to_{target}"] = matrix.round(5).tolist()
    elif name == "n4":
        for seq in case.sequences:
            case.images[seq] = n4_correct(case.images[seq], case.affine, mask=options.get("mask"),
                                          shrink_factor=options.get("shrink_factor", 4))
    elif name == "skull_strip":
        mask, to_mni = skull_strip(reference, case.affine, method=options.get("method", "atlas"),
                                   working_spacing=options.get("working_spacing", 2.0), return_transform=True)
        if not mask.any():
            raise MSToolkitInputError(
                f"skull stripping of case '{case.case_id}' gave an empty brain mask; check the image."
            )
        case.brain_mask = mask
        case.images = {k: np.where(mask > 0, v, 0).astype(np.float32) for k, v in case.images.items()}
        if case.mask is not None:
            case.mask = (case.mask * mask).astype(np.uint8)
        case.meta["to_mni"] = to_mni.tolist()
        volume_ml = float(mask.sum() * np.prod(case.spacing)) / 1000
        record.update(brain_volume_ml=round(volume_ml, 1), to_mni=to_mni.round(5).tolist())
    elif name == "normalize":
        method = options.get("method", "zscore")
        for seq in case.sequences:
            landmarks = options.get("landmarks", {}).get(seq) if method == "nyul" else None
            case.images[seq] = normalize(case.images[seq], method=method, mask=case.brain_mask, landmarks=landmarks)
    elif name == "to_mni":
        template, template_mask, template_affine = load_mni_template(resolution=options.get("resolution", 1))
        matrix = case.meta.get("to_mni")
        if matrix is None or not np.all(np.isfinite(matrix)):
            matrix = register(reference, case.affine, template, template_affine, kind="affine",
                              working_spacing=options.get("working_spacing", 2.0),
                              reference_mask=ndimage.binary_dilation(template_mask, iterations=3).astype(np.uint8),
                              initial_scales=_BRAIN_SCALES)
        else:
            record["reused"] = "the skull_strip registration"
        matrix = np.asarray(matrix)
        case = _regrid(case, template.shape, template_affine, transform=matrix)
        case.meta["to_mni"] = np.eye(4).tolist()  # the case now lives in MNI space
        record["matrix"] = matrix.round(5).tolist()
    else:
        raise MSToolkitInputError(f"unknown preprocessing step {name!r}; allowed: {', '.join(STEPS)}.")
    return case, record


def preprocess_case(case: Case, steps: Sequence[str | tuple[str, dict]] = ("n4", "skull_strip", "normalize")) -> Case:
    """Run named steps on a whole case and record each in ``meta["preprocessing"]``.

    Parameters
    ----------
    case : the case to process (not modified; a new one is returned)
    steps : names from :data:`STEPS`, or ``(name, options)`` pairs, e.g.
        ``["n4", ("normalize", {"method": "percentile"}), ("to_mni", {"resolution": 2})]``.
        ``resample`` {spacing}; ``coregister`` {kind}: other sequences to the FLAIR;
        ``n4`` {shrink_factor, mask}; ``skull_strip`` {method, working_spacing}: sets ``brain_mask``
        and zeroes the outside; ``normalize`` {method, landmarks: {sequence: landmarks}};
        ``to_mni`` {resolution, working_spacing}: affine to the MNI template grid (reuses the
        skull_strip registration when there was one).

    Each record holds the step name, its options, the seconds it took and step
    details (matrices, brain volume). Introduced in notebook 02.
    """
    from tqdm.auto import tqdm

    if not isinstance(case, Case):
        raise MSToolkitInputError(f"'case' must be a mstoolkit.io.Case, got {type(case).__name__}.")
    parsed = [(s, {}) if isinstance(s, str) else (s[0], dict(s[1])) for s in steps]
    for name, options in parsed:
        if name not in STEPS:
            raise MSToolkitInputError(f"unknown preprocessing step {name!r}; allowed: {', '.join(STEPS)}.")
        unknown = sorted(set(options) - _STEP_OPTIONS[name])
        if unknown:
            raise MSToolkitInputError(
                f"step {name!r} has no option(s) {unknown}; allowed: {', '.join(sorted(_STEP_OPTIONS[name]))}."
            )
    case = _copy_case(case)
    for name, options in tqdm(parsed, desc=f"preprocess {case.case_id}", leave=False, disable=len(parsed) < 2):
        start = time.perf_counter()
        case, details = _run_step(case, name, options)
        shown = {k: (v if isinstance(v, (str, int, float, tuple, list)) else type(v).__name__) for k, v in options.items()}
        case.meta["preprocessing"].append(
            {"step": name, "options": shown, "seconds": round(time.perf_counter() - start, 2), **details}
        )
    return case


# --------------------------------------------------------------------------- command line


def _load_reference_3d(path: str) -> tuple[np.ndarray, np.ndarray, tuple]:
    import nibabel as nib

    from .io import load_image

    if not Path(path).exists():
        raise FileNotFoundError(f"No such reference file: '{path}'.")
    shape = nib.load(path).shape
    if len(shape) != 3 and not (len(shape) == 4 and shape[3] == 1):
        raise MSToolkitInputError(
            f"the reference '{path}' has shape {shape} ({len(shape)}D); it must be a 3D image like the input."
        )
    image, affine = load_image(path)
    return image, affine, shape


def cli_preprocess(args) -> int:
    """``mstoolkit preprocess INPUT --out OUT [...]``: preprocess one image, write OUT and OUT.json.

    Order: N4, skull strip, register to ``--reference`` (OUT on the reference's grid) or
    resample to ``--spacing``, normalise. OUT.json holds the steps and ``matrix``: the 4x4
    world-space (RAS mm) matrix mapping INPUT world coordinates to REFERENCE world
    coordinates (identity without a reference).
    """
    from .io import load_image, save_image, save_like

    out = Path(args.out)
    if not out.name.endswith((".nii", ".nii.gz")):
        raise MSToolkitInputError(f"'--out' must end with .nii or .nii.gz, got '{out}'.")
    if args.reference and args.spacing:
        raise MSToolkitInputError("pass either --reference (output on its grid) or --spacing, not both.")
    if args.normalize is not None and args.normalize not in NORMALIZATIONS:
        raise MSToolkitInputError(f"unknown normalisation {args.normalize!r}; allowed: {', '.join(NORMALIZATIONS)}.")
    landmarks = None
    if args.normalize == "nyul":
        if not getattr(args, "landmarks", None):
            normalize(np.ones((1, 1, 2)), method="nyul")  # raises the explanatory error
        landmarks = json.loads(Path(args.landmarks).read_text())["landmarks"]
    image, affine = load_image(args.input)
    steps: list[dict[str, Any]] = []
    brain = None
    if args.n4:
        image = n4_correct(image, affine)
        steps.append({"step": "n4", "shrink_factor": 4})
    if args.skull_strip:
        brain = skull_strip(image, affine)
        if not brain.any():
            raise MSToolkitInputError(f"skull stripping of '{args.input}' gave an empty brain mask; check the image.")
        image = np.where(brain > 0, image, 0).astype(np.float32)
        steps.append({"step": "skull_strip", "method": "atlas"})
    matrix = np.eye(4)
    grid = affine
    if args.reference:
        reference, reference_affine, _ = _load_reference_3d(args.reference)
        kind = "affine" if args.affine else "rigid"
        matrix = register(image, affine, reference, reference_affine, kind=kind)
        image = resample_to_reference(image, affine, reference.shape, reference_affine, transform=matrix)
        if brain is not None:
            brain = resample_to_reference(brain, affine, reference.shape, reference_affine, transform=matrix, is_mask=True)
        grid = reference_affine
        steps.append({"step": "register", "kind": kind, "reference": str(args.reference)})
    elif args.spacing:
        if brain is not None:
            brain, _ = resample_to_spacing(brain, affine, args.spacing, is_mask=True)
        image, grid = resample_to_spacing(image, affine, args.spacing)
        steps.append({"step": "resample", "spacing": list(args.spacing)})
    if args.normalize:
        region = brain if brain is not None and brain.any() else None
        image = normalize(image, method=args.normalize, mask=region, landmarks=landmarks)
        steps.append({"step": "normalize", "method": args.normalize})
    if args.reference:
        save_like(out, image, args.reference)
    elif args.spacing:
        save_image(out, image, grid)
    else:
        save_like(out, image, args.input)
    record = {
        "input": str(args.input),
        "reference": str(args.reference) if args.reference else None,
        "matrix": matrix.tolist(),
        "convention": "matrix maps INPUT world (RAS, mm) to REFERENCE world (RAS, mm): p_ref = matrix @ p_input",
        "steps": steps,
    }
    json_path = out.with_name(out.name.split(".nii")[0] + ".json")
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=json_path.parent)
    with os.fdopen(fd, "w") as handle:
        json.dump(record, handle, indent=2)
    os.replace(tmp, json_path)
    print(f"wrote {out} and {json_path.name} ({', '.join(s['step'] for s in steps) or 'no steps'})")
    return 0
