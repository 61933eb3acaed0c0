"""Orientation, resampling and registration: putting images on one grid.

Every function works on plain arrays in the toolkit's convention (RAS+ ``(x, y, z)``
arrays with a 4x4 voxel-to-world ``affine``, see :mod:`mstoolkit.data.io`);
:func:`mstoolkit.preprocessing.preprocess.preprocess_case` runs resampling and registration as named
steps on a whole case.

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

import logging
import os
import warnings
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from mstoolkit.data.io import MSToolkitInputError, check_binary_mask

__all__ = [
    "displacement_mm",
    "itk_to_world_matrix",
    "register",
    "reorient_to_ras",
    "resample_to_reference",
    "resample_to_spacing",
]

log = logging.getLogger(__name__)

_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS <-> LPS: negate x and y


# --------------------------------------------------------------------------- checks and conversions


def check_image(image: np.ndarray, affine: np.ndarray, name: str = "image") -> tuple[np.ndarray, np.ndarray]:
    image, affine = np.asarray(image), np.asarray(affine, dtype=np.float64)
    if image.ndim != 3:
        raise MSToolkitInputError(f"'{name}' must be a 3D array (x, y, z), got shape {image.shape}.")
    if affine.shape != (4, 4):
        raise MSToolkitInputError(f"the affine of '{name}' must be a 4x4 matrix, got shape {affine.shape}.")
    return image, affine


def check_optional_mask(mask: np.ndarray | None, shape: tuple, name: str = "mask") -> np.ndarray | None:
    if mask is None:
        return None
    mask = check_binary_mask(mask, name)
    if mask.shape != tuple(shape):
        raise MSToolkitInputError(f"'{name}' has shape {mask.shape} but the image has shape {tuple(shape)}.")
    if not mask.any():
        raise MSToolkitInputError(f"'{name}' is empty (no voxel set): pass a mask that covers the brain, or None.")
    return mask


def to_sitk(image: np.ndarray, affine: np.ndarray):
    """An RAS (x, y, z) array + affine as a SimpleITK image in ITK's LPS physical space."""
    import SimpleITK as sitk

    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    lps_affine = _LPS @ affine
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(image, (2, 1, 0)), dtype=np.float32))
    img.SetSpacing(spacing.tolist())
    img.SetDirection((lps_affine[:3, :3] / spacing).ravel().tolist())
    img.SetOrigin(lps_affine[:3, 3].tolist())
    return img


def from_sitk(img) -> np.ndarray:
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

    No interpolation happens: this is what :func:`mstoolkit.data.io.load_image` does on load,
    offered here for arrays from other sources (e.g. the phantom's raw scan).
    Introduced in notebook 02.
    """
    import nibabel as nib

    image, affine = check_image(image, affine)
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
    image, affine = check_image(image, affine)
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

    >>> from mstoolkit.data.io import spacing_from_affine
    >>> out, new_affine = resample_to_spacing(np.zeros((10, 10, 4)), np.diag([1, 1, 3, 1.0]), (2, 2, 2))
    >>> out.shape, spacing_from_affine(new_affine)
    ((5, 5, 6), (2.0, 2.0, 2.0))
    """
    image, affine = check_image(image, affine)
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

    image, affine = check_image(image, affine, "image")
    reference, reference_affine = check_image(reference, reference_affine, "reference")
    if kind not in ("rigid", "affine"):
        raise MSToolkitInputError(f"'kind' must be 'rigid' or 'affine', got {kind!r}.")
    reference_mask = check_optional_mask(reference_mask, reference.shape, "reference_mask")
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
    fixed = _isotropic(to_sitk(reference, reference_affine), working_spacing)
    moving = _isotropic(to_sitk(image, affine), working_spacing)
    fixed_mask = None
    if reference_mask is not None:
        sitk_mask = sitk.Resample(to_sitk(reference_mask.astype(np.float32), reference_affine), fixed,
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
