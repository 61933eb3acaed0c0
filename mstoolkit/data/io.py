"""Read and write NIfTI images, and hold one subject's images as a :class:`Case`.

Every array this module returns is in **RAS+ canonical orientation**
(``nibabel.as_closest_canonical``): the first index grows towards the
subject's Right, the second towards Anterior, the third towards Superior.
Arrays are indexed ``(x, y, z)``; the ``affine`` maps voxel indices to world
millimetres. Saving goes the other way: :func:`save_like` writes an array back
on the original grid and orientation of a reference file.

Introduced in notebook 01 (data loading).
"""

from __future__ import annotations

import gzip
import os
import secrets
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import nibabel as nib
import numpy as np

__all__ = [
    "SEQUENCES",
    "Case",
    "MSToolkitInputError",
    "load_image",
    "load_mask",
    "load_case",
    "save_image",
    "save_mask",
    "save_like",
    "spacing_from_affine",
    "check_same_grid",
    "crop_around_lesions",
    "check_binary_mask",
    "check_mask_shape",
    "bounding_box",
    "write_atomic",
]

#: The MRI sequence names used throughout the toolkit.
SEQUENCES = ("FLAIR", "T1", "T1CE", "T2")


class MSToolkitInputError(ValueError):
    """Raised for input a user can fix: wrong file, shape, grid or values."""


# --------------------------------------------------------------------------- loading


def _load_nifti(path: str | os.PathLike) -> nib.Nifti1Image:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No such image file: '{path}'. Check the path (and the DATA_DIR you passed).")
    if path.is_dir():
        raise MSToolkitInputError(f"'{path}' is a folder; expected a .nii or .nii.gz file.")
    try:
        img = nib.load(str(path))
        # Touch the data now so a truncated or corrupt file fails here, with its name.
        img.get_fdata(dtype=np.float32)
    except (EOFError, zlib.error, gzip.BadGzipFile, OSError, nib.filebasedimages.ImageFileError, ValueError) as err:
        raise MSToolkitInputError(
            f"Cannot read '{path}': the file is truncated or corrupt ({type(err).__name__}: {' '.join(str(err).split())}). "
            "Download or copy it again."
        ) from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        img = nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine)
    return img


def _as_3d(data: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    if data.ndim == 4 and data.shape[3] == 1:
        return data[..., 0]
    if data.ndim != 3:
        raise MSToolkitInputError(
            f"'{path}' has shape {data.shape}; expected a 3D volume (x, y, z). "
            "For a 4D file, pick one volume first, e.g. nibabel.funcs.four_to_three()."
        )
    return data


def load_image(path: str | os.PathLike, *, allow_nan: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Load a 3D NIfTI image as a float32 array in RAS+ orientation.

    Parameters
    ----------
    path : str or Path
        A ``.nii`` or ``.nii.gz`` file.
    allow_nan : bool, keyword-only
        By default NaN or infinite voxels raise an error, because every later
        step (normalisation, training, metrics) would silently propagate them.

    Returns
    -------
    image : numpy.ndarray, float32, shape (x, y, z)
    affine : numpy.ndarray, float64, shape (4, 4)
    """
    img = nib.as_closest_canonical(_load_nifti(path))
    data = _as_3d(img.get_fdata(dtype=np.float32), path)
    if not allow_nan and not np.isfinite(data).all():
        n_bad = int((~np.isfinite(data)).sum())
        raise MSToolkitInputError(
            f"'{path}' contains {n_bad} NaN or infinite voxels. Replace them first "
            "(e.g. numpy.nan_to_num) or pass allow_nan=True."
        )
    return np.ascontiguousarray(data), img.affine.astype(np.float64)


def check_binary_mask(mask: np.ndarray, name: str = "mask") -> np.ndarray:
    """Return ``mask`` as uint8 0/1, or raise if it holds other values.

    A probability map or a label image passed where a binary mask is expected
    is a common mistake; this says what was found and how to fix it.
    """
    mask = np.asarray(mask)
    if mask.dtype == bool:
        return mask.astype(np.uint8)
    if not np.isfinite(mask).all():
        raise MSToolkitInputError(f"'{name}' contains NaN or infinite values; a mask must hold only 0 and 1.")
    values = np.unique(mask)
    if not np.isin(values, (0, 1)).all():
        shown = ", ".join(f"{v:g}" for v in values[:6]) + (" …" if values.size > 6 else "")
        raise MSToolkitInputError(
            f"'{name}' is not binary: it holds the values {shown}. "
            "Threshold a probability map (e.g. prob >= 0.5) or select one label (labels == k) first."
        )
    return mask.astype(np.uint8)


def check_mask_shape(mask: np.ndarray, shape: Sequence[int], name: str = "mask") -> np.ndarray:
    """Return ``mask > 0`` as a bool array, or raise if its shape is not ``shape``.

    A mask goes with images on one grid; a mask of another shape belongs to
    another grid. Any non-zero value counts as inside; use :func:`check_binary_mask`
    where only 0 and 1 are acceptable. Not called in the notebooks themselves: the
    uncertainty and calibration functions of notebook 06 use it.

    >>> check_mask_shape(np.array([[[0, 1, 2]]]), (1, 1, 3)).tolist()
    [[[False, True, True]]]
    """
    mask = np.asarray(mask)
    if mask.shape != tuple(shape):
        raise MSToolkitInputError(f"'{name}' has shape {mask.shape} but expected {tuple(shape)}: same grid needed.")
    return mask > 0


def load_mask(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Load a binary mask (0/1) as uint8 in RAS+ orientation; raise if it is not binary."""
    data, affine = load_image(path)
    return check_binary_mask(data, name=str(path)), affine


def spacing_from_affine(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size in mm along each array axis: the column norms of the affine.

    >>> spacing_from_affine(np.diag([1.0, 1.0, 3.0, 1.0]))
    (1.0, 1.0, 3.0)
    """
    affine = np.asarray(affine, dtype=float)
    if affine.shape != (4, 4):
        raise MSToolkitInputError(f"'affine' must be a 4x4 matrix, got shape {affine.shape}.")
    return tuple(float(round(v, 6)) for v in np.linalg.norm(affine[:3, :3], axis=0))  # type: ignore[return-value]


def check_same_grid(
    shape_a: Sequence[int],
    affine_a: np.ndarray,
    shape_b: Sequence[int],
    affine_b: np.ndarray,
    *,
    names: tuple[str, str] = ("first image", "second image"),
    atol: float = 1e-3,
) -> None:
    """Raise a clear error unless two arrays share shape and affine (same voxel grid)."""
    if tuple(shape_a) != tuple(shape_b):
        raise MSToolkitInputError(
            f"{names[0]} has shape {tuple(shape_a)} but {names[1]} has shape {tuple(shape_b)}: they are on "
            "different grids. Resample one onto the other first, e.g. "
            "mstoolkit.preprocessing.registration.resample_to_reference(image, affine, reference_shape, reference_affine)."
        )
    if not np.allclose(affine_a, affine_b, atol=atol):
        raise MSToolkitInputError(
            f"{names[0]} and {names[1]} have the same shape but different affines (voxel-to-world "
            f"matrices):\n{np.round(affine_a, 3)}\nvs\n{np.round(affine_b, 3)}\n"
            "Register or resample one onto the other's grid first (mstoolkit.preprocessing.registration)."
        )


def bounding_box(mask: np.ndarray, *, margin: int = 0) -> tuple[slice, ...] | None:
    """Slices of the smallest box holding every non-zero voxel of ``mask``, grown by ``margin``.

    The box grows by ``margin`` voxels on each side and is clipped to the array;
    ``array[box]`` crops any array on the mask's grid. Returns None when the mask is empty.
    Not called in the notebooks themselves: the metrics (notebook 04), Grad-CAM
    (notebook 05) and uncertainty (notebook 06) functions use it to work only where a mask is.

    >>> mask = np.zeros((5, 6, 7), bool); mask[2, 3, 1:4] = True
    >>> bounding_box(mask, margin=1)
    (slice(1, 4, None), slice(2, 5, None), slice(0, 5, None))
    """
    mask = np.asarray(mask)
    box = []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if hits.size == 0:
            return None
        box.append(slice(max(int(hits[0]) - margin, 0), min(int(hits[-1]) + margin + 1, mask.shape[axis])))
    return tuple(box)


def crop_around_lesions(case: Case, edge: int) -> Case:
    """A cube of ``edge`` voxels centred on the case's lesions (on the brain when it has none).

    With ``edge`` 0, the brain's bounding box (4 voxels of margin) instead: the empty voxels
    around the brain would only cost memory; a case without a brain mask is then returned as
    it is. The affine moves with the crop, so world coordinates stay right, and every array is
    a copy, so the whole volume can be freed. Notebook 03 trains and scores on such crops.
    """
    if not edge:
        box = None if case.brain_mask is None else bounding_box(case.brain_mask, margin=4)
        if box is None:
            return case
    else:
        where = np.argwhere(case.mask > 0) if case.mask.any() else np.argwhere(case.brain_mask > 0)
        centre = np.median(where, axis=0).astype(int)
        box = tuple(slice(max(0, c - edge // 2), max(0, c - edge // 2) + edge) for c in centre)
    shift = np.eye(4)
    shift[:3, 3] = [s.start for s in box]

    def take(array):
        return None if array is None else array[box].copy()

    return Case(case.case_id, {k: take(v) for k, v in case.images.items()}, case.affine @ shift,
                mask=take(case.mask), brain_mask=take(case.brain_mask), meta=case.meta)


# --------------------------------------------------------------------------- saving


def write_atomic(path: str | os.PathLike, content: str | bytes | Callable[[Path], object], *,
                 encoding: str = "utf-8") -> Path:
    """Write a file whole or not at all: into a temporary file in its folder, then renamed over it.

    ``content`` is text, bytes, or a function that writes the file at the path it is given
    (``lambda tmp: torch.save(state, tmp)``). The temporary file is ``.tmp-XXXXXXXX-NAME`` in the
    same folder (so the rename is atomic, and writers that go by the ending, like nibabel's
    ``.nii.gz``, see the same one), is created with the usual permissions (as ``open`` would) and
    is removed when writing fails: a reader sees the old file or the new one, never half of one.
    The folder must exist. Every file the toolkit writes goes through here.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> write_atomic(folder / "note.txt", "hello").read_text(), [p.name for p in folder.iterdir()]
    ('hello', ['note.txt'])
    """
    path = Path(path)
    while True:
        tmp = path.with_name(f".tmp-{secrets.token_hex(4)}-{path.name}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:  # another writer's temporary file: draw another name
            continue
    try:
        if callable(content):
            os.close(fd)
            content(tmp)
        elif isinstance(content, str):
            with open(fd, "w", encoding=encoding) as handle:
                handle.write(content)
        else:
            with open(fd, "wb") as handle:
                handle.write(content)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _save_nifti(img: nib.Nifti1Image, path: str | os.PathLike) -> Path:
    """Save a NIfTI image atomically (:func:`write_atomic`), creating its folder."""
    path = Path(path)
    if not path.name.endswith((".nii", ".nii.gz")):
        raise MSToolkitInputError(f"'{path}' must end with .nii or .nii.gz.")
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, lambda tmp: nib.save(img, tmp))


def save_image(path: str | os.PathLike, array: np.ndarray, affine: np.ndarray, *, dtype=np.float32) -> Path:
    """Save an (x, y, z) array with its affine as NIfTI (atomically)."""
    array = np.asarray(array)
    if array.ndim != 3:
        raise MSToolkitInputError(f"'array' must be 3D (x, y, z), got shape {array.shape}.")
    img = nib.Nifti1Image(array.astype(dtype), np.asarray(affine, dtype=np.float64))
    img.header.set_xyzt_units("mm")
    return _save_nifti(img, path)


def save_mask(path: str | os.PathLike, mask: np.ndarray, affine: np.ndarray) -> Path:
    """Save a binary mask as uint8 NIfTI; raise if it is not binary."""
    return save_image(path, check_binary_mask(mask), affine, dtype=np.uint8)


def save_like(path: str | os.PathLike, array: np.ndarray, reference: str | os.PathLike, *, dtype=np.float32) -> Path:
    """Save a RAS+ array on the grid and orientation of the ``reference`` file.

    Use it to write a prediction made on :func:`load_image` output back next to
    the scan it came from, so any viewer overlays the two exactly.
    """
    ref = nib.load(str(reference))
    canonical = nib.as_closest_canonical(ref)
    array = np.asarray(array)
    if array.shape != canonical.shape[:3]:
        raise MSToolkitInputError(
            f"'array' has shape {array.shape} but the reference '{reference}' has shape "
            f"{canonical.shape[:3]} after RAS+ reorientation; they must match."
        )
    ras = nib.orientations.axcodes2ornt(("R", "A", "S"))
    target = nib.orientations.io_orientation(ref.affine)
    back = nib.orientations.apply_orientation(array, nib.orientations.ornt_transform(ras, target))
    img = nib.Nifti1Image(back.astype(dtype), ref.affine, header=ref.header.copy())
    img.set_data_dtype(dtype)
    img.header["scl_slope"], img.header["scl_inter"] = 1.0, 0.0
    return _save_nifti(img, path)


# --------------------------------------------------------------------------- cases


@dataclass
class Case:
    """One subject at one time point: images by sequence name on one grid.

    Attributes
    ----------
    case_id : str
    images : dict of str to float32 array (x, y, z), keys from :data:`SEQUENCES`
    affine : (4, 4) array, shared by all images and masks
    mask : uint8 array or None
        Lesion mask (ground truth) when known.
    brain_mask : uint8 array or None
    meta : dict
        Free-form provenance (source files, phantom parameters, preprocessing steps).
    """

    case_id: str
    images: dict[str, np.ndarray]
    affine: np.ndarray
    mask: np.ndarray | None = None
    brain_mask: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.images:
            raise MSToolkitInputError(f"Case '{self.case_id}' has no images.")
        for name in self.images:
            if name not in SEQUENCES:
                raise MSToolkitInputError(f"Unknown sequence '{name}'; allowed: {', '.join(SEQUENCES)}.")
        shapes = {name: img.shape for name, img in self.images.items()}
        for name, extra in (("mask", self.mask), ("brain_mask", self.brain_mask)):
            if extra is not None:
                shapes[name] = extra.shape
        if len(set(shapes.values())) > 1:
            listed = ", ".join(f"{k} {v}" for k, v in shapes.items())
            raise MSToolkitInputError(
                f"Case '{self.case_id}': images are on different grids ({listed}). "
                "Resample them onto the FLAIR grid first (mstoolkit.preprocessing.registration.resample_to_reference)."
            )
        if self.mask is not None:
            self.mask = check_binary_mask(self.mask, f"{self.case_id} lesion mask")
        if self.brain_mask is not None:
            self.brain_mask = check_binary_mask(self.brain_mask, f"{self.case_id} brain mask")

    @property
    def shape(self) -> tuple[int, int, int]:
        return next(iter(self.images.values())).shape

    @property
    def spacing(self) -> tuple[float, float, float]:
        return spacing_from_affine(self.affine)

    @property
    def sequences(self) -> tuple[str, ...]:
        return tuple(self.images)

    def stack(self, sequences: Sequence[str] = ("FLAIR", "T1")) -> np.ndarray:
        """Images as one (channels, x, y, z) float32 array, in the order asked for."""
        missing = [s for s in sequences if s not in self.images]
        if missing:
            raise MSToolkitInputError(
                f"Case '{self.case_id}' has no {', '.join(missing)} image; it has {', '.join(self.images)}. "
                "Pass sequences= with the ones available."
            )
        return np.stack([self.images[s] for s in sequences]).astype(np.float32, copy=False)

    def __repr__(self) -> str:
        lesions = "no mask" if self.mask is None else f"mask {int(self.mask.sum())} voxels"
        return (
            f"Case('{self.case_id}', sequences={list(self.images)}, shape={self.shape}, "
            f"spacing={self.spacing}, {lesions})"
        )


def load_case(
    images: Mapping[str, str | os.PathLike],
    *,
    mask: str | os.PathLike | None = None,
    brain_mask: str | os.PathLike | None = None,
    case_id: str | None = None,
) -> Case:
    """Load the files of one case; every file must be on the FLAIR's (or first image's) grid.

    Parameters
    ----------
    images : mapping of sequence name to path, e.g. ``{"FLAIR": "f.nii.gz", "T1": "t1.nii.gz"}``
    mask, brain_mask : path, optional
    case_id : str, optional
        Defaults to the first image's file name without extension.
    """
    if not images:
        raise MSToolkitInputError("'images' is empty; pass at least {'FLAIR': path}.")
    unknown = [k for k in images if k not in SEQUENCES]
    if unknown:
        raise MSToolkitInputError(f"Unknown sequence name(s) {unknown}; allowed: {', '.join(SEQUENCES)}.")
    order = sorted(images, key=lambda s: s != "FLAIR")  # FLAIR's grid is the reference
    loaded: dict[str, np.ndarray] = {}
    ref_name, ref_affine = None, None
    for name in order:
        data, affine = load_image(images[name])
        if ref_affine is None:
            ref_name, ref_affine = name, affine
        else:
            check_same_grid(loaded[ref_name].shape, ref_affine, data.shape, affine, names=(ref_name, name))
        loaded[name] = data
    extras = {}
    for label, path in (("lesion mask", mask), ("brain mask", brain_mask)):
        if path is None:
            extras[label] = None
            continue
        data, affine = load_mask(path)
        check_same_grid(loaded[ref_name].shape, ref_affine, data.shape, affine, names=(ref_name, label))
        extras[label] = data
    first = Path(images[order[0]]).name
    case_id = case_id or first.split(".nii")[0]
    meta = {"source": {k: str(v) for k, v in images.items()}}
    return Case(
        case_id=case_id,
        images={k: loaded[k] for k in images},
        affine=ref_affine,
        mask=extras["lesion mask"],
        brain_mask=extras["brain mask"],
        meta=meta,
    )
