"""MONAI transform pipelines for training and validation, and named data augmentations.

A pipeline works on a dictionary with one entry per sequence (``"FLAIR"``, ``"T1"`` …)
and a ``"label"`` (the lesion mask). It returns ``{"image": (C, x, y, z), "label":
(1, x, y, z)}`` with channels in the order of ``sequences``. Two kinds of input:

* in memory (default): arrays from a :class:`~mstoolkit.data.io.Case`, see :func:`case_to_dict`;
  they are already RAS+ on one grid (resample with :mod:`mstoolkit.preprocessing.registration` first);
* files (``from_files=True``): NIfTI paths, loaded, reoriented to RAS and optionally
  resampled by MONAI (``LoadImaged``, ``Orientationd``, ``Spacingd``).

Training order: normalise each sequence (z-score over non-zero voxels), crop to the
head, pad, draw patches centred on lesion or background voxels in the ratio
``pos_neg`` (lesions fill ~0.1–1 % of a brain: without this, most patches hold none),
then augment the patches (cheaper than augmenting whole volumes).

The augmentation of training patches is defined once, here: :func:`augmentation_pipeline`,
at one of the levels of :data:`AUGMENT_LEVELS` (``"none"``, ``"light"``, ``"domain"``).
:func:`train_transforms` ends with it, and the training loop
(:mod:`mstoolkit.segmentation.train`: notebook 03, ``mstoolkit train``) augments its patches
with it. The single augmentations of :func:`augmentation` are for looking at one effect at
a time (:func:`augmentation_grid`) and for building pipelines of your own.

Introduced in notebook 02 (preprocessing and augmentation).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import MapTransform, Randomizable

from mstoolkit.data.io import Case, MSToolkitInputError

__all__ = [
    "AUGMENTATIONS",
    "AUGMENT_LEVELS",
    "check_augmentation",
    "augmentation_pipeline",
    "augmentation",
    "RandElasticd",
    "RandLesionContrastd",
    "RandBrainContrastd",
    "train_transforms",
    "val_transforms",
    "case_to_dict",
    "augmentation_grid",
]

#: Named augmentations understood by :func:`augmentation`.
AUGMENTATIONS = (
    "flip", "affine", "elastic", "gamma", "noise", "bias_field", "low_resolution", "histogram_shift",
    "brain_contrast", "lesion_contrast",
)
#: The augmentation levels of :func:`augmentation_pipeline`: the ``augment`` of :func:`train_transforms`
#: and of :class:`~mstoolkit.segmentation.config.TrainConfig` (and so of the presets of ``mstoolkit train``).
AUGMENT_LEVELS = {
    "none": "no augmentation",
    "light": "left-right flips",
    "domain": "flips, rotation and scaling, and what scanners change: resolution, blur, bias field, contrast, "
              "intensity scale and offset, noise",
}
_LABEL = "label"


def _nonzero(x):
    """Foreground for cropping: every non-zero voxel (module level so DataLoader workers can pickle it)."""
    return x != 0


def _check_sequences(sequences: Sequence[str]) -> list[str]:
    from mstoolkit.data.io import SEQUENCES

    if isinstance(sequences, str):
        sequences = [sequences]
    sequences = list(sequences)
    unknown = [s for s in sequences if s not in SEQUENCES]
    if not sequences or unknown:
        raise MSToolkitInputError(f"'sequences' must be names from {', '.join(SEQUENCES)}, got {sequences}.")
    return sequences


class RandElasticd(Randomizable, MapTransform):
    """Elastic deformation: a random displacement on a coarse grid of control points, smoothly interpolated.

    The same idea as MONAI's ``Rand3DElasticd`` (and TorchIO's ``RandomElasticDeformation``),
    made cheap: MONAI smooths a random field the size of the image with a wide Gaussian,
    which needs ~2.5 kB per voxel (2 GB for a 96³ patch); interpolating ``control_points``³
    random vectors (trilinear) gives a comparably smooth field for the cost of the field itself.
    ``magnitude`` is the largest displacement as a fraction of the image size.
    """

    def __init__(self, keys: Sequence[str], *, modes: Sequence[str], prob: float = 1.0, control_points: int = 5,
                 magnitude: float = 0.04):
        MapTransform.__init__(self, keys)
        self.modes, self.prob, self.control_points, self.magnitude = list(modes), prob, control_points, magnitude

    def randomize(self, data=None) -> None:
        self.apply = self.R.rand() < self.prob
        self.coarse = self.R.uniform(-1, 1, (1, 3) + (self.control_points,) * 3) * 2 * self.magnitude  # grid spans 2

    def __call__(self, data: dict) -> dict:
        self.randomize()
        if not self.apply:
            return data
        out = dict(data)
        shape = tuple(data[self.keys[0]].shape[1:])
        field = F.interpolate(torch.as_tensor(self.coarse, dtype=torch.float32), size=shape, mode="trilinear",
                              align_corners=True)
        axes = torch.meshgrid(*[torch.linspace(-1, 1, n) for n in shape], indexing="ij")
        grid = (torch.stack(axes) + field[0]).permute(1, 2, 3, 0).flip(-1)[None]  # grid_sample wants (z, y, x) order
        for key, mode in zip(self.keys, self.modes):
            volume = torch.as_tensor(data[key])
            warped = F.grid_sample(volume.float()[None], grid, mode=mode, padding_mode="zeros", align_corners=True)[0]
            out[key] = warped.to(volume.dtype)
        return out


def _float_copy(volume) -> np.ndarray:
    """A float32 NumPy copy of an array or (Meta)Tensor."""
    return torch.as_tensor(volume).detach().cpu().numpy().astype(np.float32, copy=True)


class RandLesionContrastd(Randomizable, MapTransform):
    """Make each lesion fainter or brighter against its surroundings, by a random factor per sequence.

    Real lesions range from faint to very bright on FLAIR (and from grey to black on T1);
    a phantom's lesions all have about the same contrast. Per lesion (connected component
    of the label) and per channel, the difference to the surrounding tissue (median of a
    2-voxel shell around the lesions) is multiplied by a factor drawn from ``factors``,
    fading out over a voxel beyond the lesion's edge so no new edge appears. The label is
    unchanged: a faint lesion is still a lesion. Label-aware, so training-only.
    """

    def __init__(self, keys: Sequence[str] = ("image",), *, label_key: str = _LABEL, prob: float = 0.5,
                 factors: tuple[float, float] = (0.6, 1.4)):
        MapTransform.__init__(self, keys)
        self.label_key, self.prob, self.factors = label_key, prob, factors

    def randomize(self, data=None) -> None:
        self.apply = self.R.rand() < self.prob

    def __call__(self, data: dict) -> dict:
        from scipy import ndimage as ndi

        self.randomize()
        lesion = np.asarray(data[self.label_key])[0] == 1  # 2: unlabelled (training_data.UNLABELLED)
        if not self.apply or not lesion.any():
            return data
        components, n = ndi.label(lesion, structure=np.ones((3, 3, 3)))
        weight = np.maximum(lesion, ndi.gaussian_filter(lesion.astype(np.float32), 0.7))  # soft outer border
        owner = ndi.grey_dilation(components, size=(3, 3, 3))  # border voxels take a neighbouring lesion's factor
        shell = ndi.binary_dilation(lesion, iterations=2) & ~lesion
        out = dict(data)
        for key in self.keys:
            image = _float_copy(data[key])  # the cached volume stays untouched
            for c in range(image.shape[0]):
                inside = image[c] != 0  # outside the brain is 0: not tissue, and it stays 0
                around = image[c][shell & inside]
                if around.size == 0:
                    continue
                factor = np.concatenate([[1.0], self.R.uniform(*self.factors, n)]).astype(np.float32)[owner]
                image[c] += (factor - 1) * weight * inside * (image[c] - np.median(around))
            out[key] = torch.as_tensor(image)
        return out


class RandBrainContrastd(Randomizable, MapTransform):
    """A random monotone intensity curve per channel, inside the brain only: contrast randomisation.

    A monotone curve keeps the *order* of tissue intensities and changes the distances between
    them, so the network learns to rely less on exact contrasts and more on order and shape,
    which carry over between scanners of one sequence. SynthSeg (Billot et al. 2023, Medical
    Image Analysis 86:102789) goes further: it draws every tissue's intensity at random, so not
    even the order is kept and one network segments any contrast. MONAI's ``RandHistogramShift``
    draws the curve; unlike
    applying it to the whole patch, the background stays 0 (as in every skull-stripped
    input) and the brain keeps its mean and spread, so the z-score normalisation still holds.
    """

    def __init__(self, keys: Sequence[str] = ("image",), *, prob: float = 0.3,
                 num_control_points: tuple[int, int] = (5, 10)):
        from monai.transforms import RandHistogramShift

        MapTransform.__init__(self, keys)
        self.prob = prob
        self.curve = RandHistogramShift(num_control_points=num_control_points, prob=1.0)

    def randomize(self, data=None) -> None:
        self.apply = self.R.rand() < self.prob

    def __call__(self, data: dict) -> dict:
        self.randomize()
        if not self.apply:
            return data
        self.curve.R = self.R  # one random stream: Compose's seed fixes the curves too
        out = dict(data)
        for key in self.keys:
            image = _float_copy(data[key])
            for c in range(image.shape[0]):
                brain = image[c] != 0
                values = image[c][brain]
                if values.size < 2 or values.std() == 0:
                    continue
                mapped = np.asarray(self.curve(values[None]), dtype=np.float32)[0]
                spread = mapped.std()
                if spread > 0:
                    image[c][brain] = (mapped - mapped.mean()) / spread * values.std() + values.mean()
            out[key] = torch.as_tensor(image)
        return out


def augmentation(name: str, keys: Sequence[str], *, label_key: str | None = _LABEL, prob: float = 1.0):
    """One named augmentation from the literature as a MONAI dictionary transform.

    Parameters
    ----------
    name : one of :data:`AUGMENTATIONS`
        Spatial (move the label too): ``flip`` (left-right), ``affine`` (rotation ±15°,
        scaling ±10 %), ``elastic`` (smooth random deformation). Intensity (images only,
        drawn independently per sequence, so the contrast between sequences varies as
        between scanners): ``gamma`` (0.7–1.5), ``noise`` (Gaussian), ``bias_field``
        (smooth multiplicative field, like an uncorrected coil), ``low_resolution``
        (down- then up-sampling, like thick slices), ``histogram_shift`` (random
        monotone intensity curve: contrast randomisation), ``brain_contrast`` (the same
        inside the brain only, background kept at 0: :class:`RandBrainContrastd`).
        Label-aware (needs ``label_key``): ``lesion_contrast`` (each lesion fainter or
        brighter against its surroundings: :class:`RandLesionContrastd`).
    keys : the image keys (sequence names)
    label_key : the label key moved with spatial augmentations (None: no label)
    prob : probability of applying it to a sample

    Introduced in notebook 02.

    >>> augmentation("gamma", ["FLAIR"], prob=0.5).__class__.__name__
    'Compose'
    """
    import monai.transforms as mt

    keys = list(keys)
    spatial = keys + ([label_key] if label_key else [])
    modes = ["bilinear"] * len(keys) + (["nearest"] if label_key else [])
    if name == "flip":
        return mt.RandFlipd(spatial, prob=prob, spatial_axis=0)
    if name == "affine":
        return mt.RandAffined(spatial, prob=prob, rotate_range=(np.pi / 12,) * 3, scale_range=(0.1,) * 3,
                              mode=modes, padding_mode="zeros")
    if name == "elastic":
        return RandElasticd(spatial, modes=modes, prob=prob)
    if name == "brain_contrast":
        return RandBrainContrastd(keys, prob=prob)
    if name == "lesion_contrast":
        if not label_key:
            raise MSToolkitInputError("'lesion_contrast' changes the lesions the label marks: pass label_key.")
        return RandLesionContrastd(keys, label_key=label_key, prob=prob)
    per_sequence = {
        "gamma": lambda k: mt.RandAdjustContrastd([k], prob=prob, gamma=(0.7, 1.5), retain_stats=True),
        "noise": lambda k: mt.RandGaussianNoised([k], prob=prob, std=0.1),
        "bias_field": lambda k: mt.RandBiasFieldd([k], prob=prob, coeff_range=(0.1, 0.3)),
        "low_resolution": lambda k: mt.RandSimulateLowResolutiond([k], prob=prob, zoom_range=(0.4, 0.8)),
        "histogram_shift": lambda k: mt.RandHistogramShiftd([k], prob=prob, num_control_points=(5, 12)),
    }
    if name not in per_sequence:
        raise MSToolkitInputError(f"unknown augmentation {name!r}; allowed: {', '.join(AUGMENTATIONS)}.")
    return mt.Compose([per_sequence[name](k) for k in keys])


def check_augmentation(level: str, lesion_contrast: float = 0.0) -> None:
    """Raise a clear error for an unknown level or a ``lesion_contrast`` that is not a probability.

    >>> check_augmentation("heavy")
    Traceback (most recent call last):
    ...
    mstoolkit.data.io.MSToolkitInputError: 'augment' must be 'none', 'light' or 'domain', got 'heavy'.
    """
    if level not in AUGMENT_LEVELS:
        *first, last = (repr(name) for name in AUGMENT_LEVELS)
        raise MSToolkitInputError(f"'augment' must be {', '.join(first)} or {last}, got {level!r}.")
    if not 0.0 <= lesion_contrast <= 1.0 or (lesion_contrast and level == "none"):
        raise MSToolkitInputError(f"'lesion_contrast' must be a probability in [0, 1] (with augment other than 'none'), "
                                  f"got {lesion_contrast!r} with augment={level!r}.")


def augmentation_pipeline(level: str, patch_size: Sequence[int], *, lesion_contrast: float = 0.0):
    """The augmentation of training patches: MONAI transforms on ``"image"`` (C, x, y, z) and ``"label"``.

    Parameters
    ----------
    level : a key of :data:`AUGMENT_LEVELS`
        ``"none"``: returns None. ``"light"``: left-right flips (p 0.5; the brain is nearly
        symmetric). ``"domain"``: flips, then what differs between scanners and subjects:
        rotation and scaling (p 0.3), low resolution (p 0.25), blur (p 0.2), bias field
        (p 0.4), gamma (p 0.5; one curve for all channels), intensity scale and shift per
        channel (p 0.5 each), Gaussian noise (p 0.4).
    patch_size : (x, y, z) of the patches (the rotated patch keeps this size)
    lesion_contrast : with this probability each lesion's contrast to its surroundings is
        scaled (:class:`RandLesionContrastd`), right after the flip, before any scanner effect

    The one definition of the training loop's augmentation (:mod:`mstoolkit.segmentation.train`
    seeds it per patch) and of the augmentation step of :func:`train_transforms`. Introduced in notebook 02.

    >>> [type(t).__name__ for t in augmentation_pipeline("light", (32, 32, 32)).transforms]
    ['RandFlipd']
    """
    from monai import transforms as T

    check_augmentation(level, lesion_contrast)
    if level == "none":
        return None
    steps: list = [T.RandFlipd(keys=["image", "label"], prob=0.5, spatial_axis=0)]  # left-right symmetry
    if lesion_contrast > 0:
        steps.append(RandLesionContrastd(keys=["image"], label_key="label", prob=lesion_contrast))
    if level == "domain":
        steps += [
            T.RandAffined(keys=["image", "label"], prob=0.3, rotate_range=(0.2, 0.2, 0.2), scale_range=(0.15, 0.15, 0.15),
                          mode=("bilinear", "nearest"), padding_mode="zeros", spatial_size=tuple(patch_size)),
            T.RandSimulateLowResolutiond(keys=["image"], prob=0.25, zoom_range=(0.4, 0.9)),
            T.RandGaussianSmoothd(keys=["image"], prob=0.2, sigma_x=(0.0, 1.0), sigma_y=(0.0, 1.0), sigma_z=(0.0, 1.5)),
            T.RandBiasFieldd(keys=["image"], prob=0.4, coeff_range=(0.0, 0.3)),
            T.RandAdjustContrastd(keys=["image"], prob=0.5, gamma=(0.6, 1.6)),
            T.RandScaleIntensityd(keys=["image"], prob=0.5, factors=0.25, channel_wise=True),
            T.RandShiftIntensityd(keys=["image"], prob=0.5, offsets=0.3, channel_wise=True),
            T.RandGaussianNoised(keys=["image"], prob=0.4, std=0.15),
        ]
    return T.Compose(steps)


def _start(sequences: list[str], *, from_files: bool, spacing: Sequence[float] | None, with_label: bool) -> list:
    """Load (or wrap arrays), orient, resample and normalise: shared by training and validation."""
    import monai.transforms as mt

    keys = sequences + ([_LABEL] if with_label else [])
    if from_files:
        steps = [
            mt.LoadImaged(keys, image_only=True),
            mt.EnsureChannelFirstd(keys),
            mt.Orientationd(keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
        ]
        if spacing is not None:
            modes = ["bilinear"] * len(sequences) + (["nearest"] if with_label else [])
            steps.append(mt.Spacingd(keys, pixdim=tuple(spacing), mode=modes))
    else:
        if spacing is not None:
            raise MSToolkitInputError(
                "'spacing' needs from_files=True; resample in-memory cases with mstoolkit.preprocessing.registration.resample_to_spacing."
            )
        steps = [mt.EnsureChannelFirstd(keys, channel_dim="no_channel")]
    steps += [mt.EnsureTyped(keys, dtype="float32", track_meta=from_files)]
    steps += [mt.NormalizeIntensityd(sequences, nonzero=True, channel_wise=True)]
    return steps


def _finish(sequences: list[str], with_label: bool, augment=None) -> list:
    """Stack the sequences into ``"image"`` (in order), augment (training), and make float32 tensors."""
    import monai.transforms as mt

    steps = [mt.ConcatItemsd(sequences, "image"), mt.DeleteItemsd(sequences)] + ([augment] if augment is not None else [])
    return steps + [mt.EnsureTyped(["image"] + ([_LABEL] if with_label else []), dtype="float32", track_meta=False)]


def train_transforms(
    sequences: Sequence[str] = ("FLAIR", "T1"),
    *,
    patch_size: Sequence[int] = (96, 96, 96),
    pos_neg: tuple[float, float] = (1.0, 1.0),
    num_samples: int = 2,
    augment: str = "light",
    lesion_contrast: float = 0.0,
    from_files: bool = False,
    spacing: Sequence[float] | None = None,
    seed: int | None = None,
):
    """The training pipeline: normalise, crop to the head, lesion-balanced patches, augmentation.

    Parameters
    ----------
    sequences : channel order, e.g. ``("FLAIR", "T1")``
    patch_size : (x, y, z) voxels of each training patch
    pos_neg : relative frequency of patches centred on a lesion voxel vs a background voxel
        (``RandCropByPosNegLabeld``); ``(1, 1)`` gives half lesion-centred patches
    num_samples : patches drawn per volume (the pipeline returns a list of that many dicts)
    augment : a key of :data:`AUGMENT_LEVELS`: ``"none"``, ``"light"`` or ``"domain"``; the patches
        are augmented by :func:`augmentation_pipeline`, the augmentation the training loop uses
    lesion_contrast : probability of scaling each lesion's contrast (see :func:`augmentation_pipeline`)
    from_files : input dicts hold NIfTI paths instead of arrays
    spacing : resample to this voxel size (mm), files only
    seed : seed of every random transform (None: MONAI's default state)

    A whole pipeline in MONAI's style, for data of your own or a MONAI ``Dataset``. The
    training loop of :mod:`mstoolkit.segmentation.train` (notebook 03, ``mstoolkit train``)
    does not run it: it normalises each case once and keeps it in memory
    (:func:`mstoolkit.segmentation.training_data.cache_cases`), draws its patches itself,
    and augments them with the same :func:`augmentation_pipeline`. Introduced in notebook 02.
    """
    import monai.transforms as mt

    sequences = _check_sequences(sequences)
    check_augmentation(augment, lesion_contrast)
    patch = tuple(int(p) for p in patch_size)
    if len(patch) != 3 or min(patch) < 1:
        raise MSToolkitInputError(f"'patch_size' must be 3 positive integers, got {tuple(patch_size)}.")
    if len(pos_neg) != 2 or min(pos_neg) < 0 or sum(pos_neg) <= 0:
        raise MSToolkitInputError(f"'pos_neg' must be two non-negative numbers, not both 0, got {tuple(pos_neg)}.")
    keys = sequences + [_LABEL]
    steps = _start(sequences, from_files=from_files, spacing=spacing, with_label=True)
    steps += [
        mt.CropForegroundd(keys, source_key=sequences[0], select_fn=_nonzero, margin=4, allow_smaller=True,
                           start_coord_key=None, end_coord_key=None),
        mt.SpatialPadd(keys, spatial_size=patch),
        mt.RandCropByPosNegLabeld(keys, label_key=_LABEL, spatial_size=patch, pos=pos_neg[0], neg=pos_neg[1],
                                  num_samples=int(num_samples), allow_smaller=True),
    ]
    augment_patches = augmentation_pipeline(augment, patch, lesion_contrast=lesion_contrast)
    pipeline = mt.Compose(steps + _finish(sequences, with_label=True, augment=augment_patches))
    if seed is not None:
        pipeline.set_random_state(seed=int(seed))
    return pipeline


def val_transforms(
    sequences: Sequence[str] = ("FLAIR", "T1"),
    *,
    from_files: bool = False,
    spacing: Sequence[float] | None = None,
    with_label: bool = True,
):
    """The validation/inference pipeline: the same loading and normalisation, whole volumes, no randomness.

    The output stays on the input grid (no foreground crop), so a prediction maps
    straight back onto the scan. Introduced in notebook 02.
    """
    import monai.transforms as mt

    sequences = _check_sequences(sequences)
    steps = _start(sequences, from_files=from_files, spacing=spacing, with_label=with_label)
    return mt.Compose(steps + _finish(sequences, with_label=with_label))


def case_to_dict(case: Case, sequences: Sequence[str] = ("FLAIR", "T1")) -> dict[str, Any]:
    """A case as the dictionary the in-memory pipelines expect.

    Keys: each sequence (float32 (x, y, z)), ``"label"`` (uint8; zeros when the case
    has no lesion mask) and ``"case_id"``. Introduced in notebook 02.
    """
    sequences = _check_sequences(sequences)
    stacked = case.stack(sequences)  # raises a clear error for a missing sequence
    label = case.mask if case.mask is not None else np.zeros(case.shape, np.uint8)
    out: dict[str, Any] = {seq: stacked[i] for i, seq in enumerate(sequences)}
    out.update({_LABEL: label.astype(np.uint8), "case_id": case.case_id})
    return out


def augmentation_grid(
    case: Case,
    *,
    names: Sequence[str] = AUGMENTATIONS,
    n_samples: int = 3,
    sequence: str = "FLAIR",
    seed: int = 0,
    max_size: int = 112,
    slab: int = 33,
):
    """A figure of one axial slice under each named augmentation: rows = augmentations, columns = samples.

    The first column is the original; the lesion outline is drawn in orange. For
    speed the volume is cropped to the head, downsampled to at most ``max_size``
    voxels per axis, and only a ``slab`` of slices around the shown one is augmented. Introduced in notebook 02.
    """
    import matplotlib.pyplot as plt
    import monai.transforms as mt
    from scipy import ndimage

    from mstoolkit.display.plots import OVERLAY_COLOURS, take_slice
    from mstoolkit.preprocessing.normalization import normalize_percentile

    unknown = [n for n in names if n not in AUGMENTATIONS]
    if unknown:
        raise MSToolkitInputError(f"unknown augmentation(s) {unknown}; allowed: {', '.join(AUGMENTATIONS)}.")
    if n_samples < 1:
        raise MSToolkitInputError(f"'n_samples' must be at least 1, got {n_samples}.")
    data = case_to_dict(case, [sequence])
    image, label = data[sequence], data[_LABEL]
    box = tuple(slice(a.min(), a.max() + 1) for a in np.nonzero(image > 0)) if (image > 0).any() else (slice(None),) * 3
    image, label = image[box], label[box]
    factor = max(1.0, max(image.shape) / max_size)
    if factor > 1:
        image = ndimage.zoom(image, 1 / factor, order=1)
        label = (ndimage.zoom(label.astype(np.float32), 1 / factor, order=1) > 0.5).astype(np.uint8)
    z = int(np.argmax(label.sum(axis=(0, 1)))) if label.any() else image.shape[2] // 2
    # A slab around the shown slice is enough (and much faster than the whole volume).
    low = max(0, z - slab // 2)
    image, label, z = image[:, :, low:low + slab], label[:, :, low:low + slab], z - low
    # Shown on a [0, 1] percentile scale (background stays black) with one fixed window.
    scaled = normalize_percentile(image, lower=0.5, upper=99.5) if (image != 0).any() else image
    base = {sequence: torch.as_tensor(scaled[None]), _LABEL: torch.as_tensor(label[None].astype(np.float32))}

    # constrained layout keeps the title clear of the column titles at any number of rows
    fig, axes = plt.subplots(len(names), n_samples + 1, figsize=(1.9 * (n_samples + 1), 1.9 * len(names)), squeeze=False,
                             layout="constrained")
    for row, name in enumerate(names):
        transform = mt.Compose([augmentation(name, [sequence], prob=1.0)])
        transform.set_random_state(seed=seed + row)
        for col in range(n_samples + 1):
            sample = base if col == 0 else transform({k: v.clone() for k, v in base.items()})
            ax = axes[row, col]
            ax.imshow(take_slice(np.asarray(sample[sequence][0]), "axial", z), cmap="gray", vmin=0, vmax=1)
            lesion = take_slice(np.asarray(sample[_LABEL][0]), "axial", z)
            if lesion.any():
                ax.contour(lesion, levels=[0.5], colors=[OVERLAY_COLOURS["mask"]], linewidths=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(name, fontsize=9)
            if row == 0:
                ax.set_title("original" if col == 0 else f"sample {col}", fontsize=9)
    fig.suptitle(f"{case.case_id}: {sequence} under each augmentation (axial slice {z}, lesions in orange)", fontsize=10)
    fig.supxlabel("radiological view: subject's right on the left, anterior at the top", fontsize=8)
    return fig
