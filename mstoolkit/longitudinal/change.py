"""Lesion change between a baseline and a follow-up scan, and ``mstoolkit longitudinal``.

The method, step by step (:func:`detect_changes`):

1. **One grid, the follow-up's.** Each scan gets a brain mask (atlas skull stripping,
   :func:`mstoolkit.preprocessing.preprocess.skull_strip`, unless it is already skull
   stripped) and N4 bias correction per time point; the baseline is registered to the
   follow-up rigidly (mutual information, :func:`mstoolkit.preprocessing.registration.register`)
   and resampled onto its grid. Slice thicknesses may differ (2D FLAIR, 3–4 mm): the
   finer-grained one is simply resampled; a little smoothing evens out the blur.
2. **Harmonised intensities.** Each time point is z-scored robustly inside the brain
   (median and scaled MAD), so "how bright compared to this scan's normal tissue" is
   compared, not raw scanner units.
3. **A statistical change map** (as in LST's longitudinal pipeline, Schmidt et al. 2019,
   NeuroImage: Clinical 23:101849): follow-up minus baseline, scaled by the spread of that
   difference inside normal-appearing tissue. A voxel counts as changed where the scaled
   difference exceeds ``change_z`` AND the tissue is lesion-like at the time point where it
   is bright (hyperintense on FLAIR, or called lesion by the segmentation model: the
   per-time-point lesion probabilities are fused in this way). ``gate`` says whether that
   holds voxel by voxel (the default) or for a changed component as a whole.
4. **Lesion-wise classes.** Connected components of changed voxels (26-connectivity,
   at least ``min_size_mm3``) are sorted: *new* (no lesion there at baseline), *enlarging*
   (an existing lesion whose volume grows by at least ``enlarging_ratio``), *shrinking or
   resolved* (the mirror image). A lesion that changes less is *stable* and not reported.

Label values written to ``change_labels.nii.gz``: :data:`NEW` = 1, :data:`ENLARGING` = 2,
:data:`SHRINKING` = 3 (shrinking or resolved).

References
----------
- Schmidt P, Pongratz V, Küster P, et al. Automated segmentation of changes in FLAIR-
  hyperintense white matter lesions in multiple sclerosis on serial magnetic resonance
  imaging. NeuroImage: Clinical 23 (2019) 101849. (LST longitudinal pipeline.)
- Commowick O, Cervenansky F, Cotton F, Dojat M. MSSEG-2 challenge proceedings:
  multiple sclerosis new lesions segmentation challenge using a data management and
  processing infrastructure. MICCAI 2021. (Lesions under 3 mm³ are ignored by its anima
  scoring tools.)
- Goodkin DE, Ross JS, Medendorp SV, et al. Magnetic resonance imaging lesion enlargement
  in multiple sclerosis. Arch Neurol 49 (1992) 261–263, doi:10.1001/archneur.1992.00530270075021.
  (Repeated measurements of small lesions vary by up to 45 %: a smaller growth is not a
  reliable enlargement.)
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from mstoolkit.data.io import MSToolkitInputError, check_same_grid, spacing_from_affine, write_atomic

__all__ = [
    "NEW", "ENLARGING", "SHRINKING", "CLASS_NAMES",
    "DEFAULT_CHANGE_Z", "DEFAULT_HYPERINTENSITY_Z", "DEFAULT_SMOOTHING_MM", "DEFAULT_EDGE_MM",
    "DEFAULT_MIN_SIZE_MM3", "DEFAULT_ENLARGING_RATIO", "DEFAULT_MODEL", "METHODS", "DEFAULT_METHOD",
    "GATES", "DEFAULT_GATE",
    "ChangeResult", "robust_zscore", "normal_appearing_tissue", "change_z_map", "classify_changes",
    "detect_changes", "longitudinal_files", "cli_longitudinal", "to_common_space", "score_in_common_space", "score_phantom_pair",
]

#: Label values of the change classes.
NEW, ENLARGING, SHRINKING = 1, 2, 3
CLASS_NAMES = {NEW: "new", ENLARGING: "enlarging", SHRINKING: "shrinking_or_resolved"}

# Defaults. Each has a source or was selected on phantom pairs (benchmarks/bench_longitudinal.py
# --select; the real open_ms_data pairs were NOT used to choose them, they are held out).
#: Scaled difference above which a voxel has changed. Selected on phantom pairs (best mean lesion F1
#: 0.500 of the grid 3/4/5/6; 6 gives 0.493).
DEFAULT_CHANGE_Z = 5.0
#: Robust z-score (within the brain) above which FLAIR tissue counts as lesion-like (selected on phantom pairs, grid 2/2.5/3).
DEFAULT_HYPERINTENSITY_Z = 2.5
#: Gaussian smoothing (sigma, mm) of both scans before subtraction (selected on phantom pairs, grid 0.5/1).
DEFAULT_SMOOTHING_MM = 0.5
#: Brain-edge band (mm) left out: skull-stripping and registration residue live there.
DEFAULT_EDGE_MM = 3.0
#: Smallest change kept, mm³: anima (MSSEG-2 scoring) ignores lesions under 3 mm³ (also best of 3/10/30 on phantom pairs).
DEFAULT_MIN_SIZE_MM3 = 3.0
#: Volume ratio that makes a lesion "enlarging" (and its inverse "shrinking"): 1.5, i.e. 50 %
#: growth, just above the 45 % measurement variability of small lesions (Goodkin et al. 1992).
DEFAULT_ENLARGING_RATIO = 1.5
#: The segmentation model whose lesion calls widen "lesion-like" (``"none"``: FLAIR hyperintensity
#: alone). Chosen on the phantom selection pairs 8000-8005, default settings: mean lesion change F1
#: 0.50 without the model, 0.44 with the reference model (the held-out phantom and real pairs
#: agreed; benchmarks/bench_longitudinal.py --model reference|none).
DEFAULT_MODEL = "none"
#: What decides growth: the statistical map or the learned detector (:mod:`mstoolkit.longitudinal.learned`).
METHODS = ("statistical", "learned")
#: The statistical map: on the held-out real pairs its mean lesion change F1 is 0.175 raw / 0.165
#: co-registered against the network's 0.119 / 0.122, and on the phantom test pairs 0.328 against
#: 0.269 (benchmarks/bench_longitudinal.py [--method learned]; MODEL_CARD.md).
DEFAULT_METHOD = "statistical"

#: How "lesion-like" gates the change map. ``"voxel"``: a changed voxel counts only where the tissue
#: itself is lesion-like (bright at the time point where it is bright). ``"component"``: a connected
#: component of changed voxels counts whole when at least one of its voxels is lesion-like, so the
#: rim of a growing lesion, still below the brightness gate, is kept with it. Selected on phantom
#: pairs together with the settings above (bench_longitudinal.py --select): the voxel gate's best
#: mean lesion F1 is 0.500, the component gate's 0.497 (at change_z 6, hyperintensity_z 3); on twelve
#: fresh phantom pairs, the tie-break decided in advance (--tie-break), 0.462 against 0.455.
GATES = ("voxel", "component")
DEFAULT_GATE = "voxel"

_MAD_TO_SD = 1.4826  # scaled median absolute deviation = standard deviation for a normal distribution


@dataclass
class ChangeResult:
    """What :func:`detect_changes` found, all on the follow-up grid.

    Attributes
    ----------
    labels : uint8 (x, y, z): 0 unchanged, 1 new, 2 enlarging, 3 shrinking or resolved
    change_z : float32 (x, y, z): the scaled difference (follow-up minus baseline), 0 outside the brain
    baseline_registered : float32 (x, y, z): the baseline FLAIR (bias corrected) on the follow-up grid
    followup_corrected : float32 (x, y, z): the follow-up FLAIR (bias corrected)
    brain : uint8 (x, y, z): the region analysed (both brains, minus the edge band)
    lesions : one dict per changed lesion (id, class, volumes in mm³ at each time point, centroid in world mm)
    transform : (4, 4) baseline world → follow-up world (RAS mm); identity when already registered
    registration_quality : Pearson correlation of the two FLAIRs inside the brain after registration
    notes : what was done or skipped, in words (e.g. "model not used: ...")
    growth_probability : float32 (x, y, z) from the learned detector (``method="learned"``), else None
    """

    labels: np.ndarray
    change_z: np.ndarray
    baseline_registered: np.ndarray
    followup_corrected: np.ndarray
    brain: np.ndarray
    lesions: list[dict[str, Any]]
    transform: np.ndarray
    registration_quality: float
    notes: list[str] = field(default_factory=list)
    growth_probability: np.ndarray | None = None


# --------------------------------------------------------------------------- the steps


def robust_zscore(image: np.ndarray, region: np.ndarray) -> np.ndarray:
    """``(image - median) / (1.4826 * MAD)`` with median and MAD taken inside ``region``.

    Robust statistics, so the lesions themselves (a few percent of the brain) barely move
    the scale: this is the per-time-point intensity harmonisation.
    """
    values = image[region > 0]
    median = float(np.median(values))
    spread = _MAD_TO_SD * float(np.median(np.abs(values - median)))
    if not spread > 0:
        raise MSToolkitInputError("the brain region has (almost) constant intensity; is the scan empty or a mask?")
    return ((image - median) / spread).astype(np.float32)


def normal_appearing_tissue(z_baseline: np.ndarray, z_followup: np.ndarray, brain: np.ndarray,
                            hyperintensity_z: float) -> np.ndarray:
    """Brain voxels that look normal at both time points: neither lesion-bright nor CSF-dark.

    LST longitudinal scales the difference inside normal-appearing white matter from a T1
    tissue segmentation; with a FLAIR alone this is the closest stand-in: tissue within
    [-1, ``hyperintensity_z``) robust z at both time points (CSF is dark on FLAIR, below -1).
    """
    normal = (brain > 0)
    for z in (z_baseline, z_followup):
        normal &= (z > -1.0) & (z < hyperintensity_z)
    return normal


def change_z_map(z_baseline: np.ndarray, z_followup: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """Follow-up minus baseline, centred and scaled by the difference's spread in normal tissue.

    In normal tissue the difference is noise plus residual misregistration; its robust
    standard deviation is the unit of change (Schmidt et al. 2019).
    """
    difference = z_followup - z_baseline
    values = difference[normal]
    if values.size < 100:
        raise MSToolkitInputError("too little normal-appearing tissue to scale the change map "
                                  f"({values.size} voxels); do the two scans show the same brain?")
    median = float(np.median(values))
    spread = _MAD_TO_SD * float(np.median(np.abs(values - median)))
    return ((difference - median) / max(spread, 1e-6)).astype(np.float32)


def _components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    import cc3d

    labels = cc3d.connected_components(np.asarray(mask, dtype=np.uint8), connectivity=26)
    return labels, int(labels.max())


def _touching(labels: np.ndarray, component: np.ndarray) -> list[int]:
    """Ids of ``labels`` components inside or next to (26-neighbours of) the boolean ``component``."""
    grown = ndimage.binary_dilation(component, structure=np.ones((3, 3, 3), bool))
    found = np.unique(labels[grown])
    return [int(i) for i in found if i]


def gate_changes(changed: np.ndarray, lesion_like: np.ndarray, gate: str = DEFAULT_GATE) -> np.ndarray:
    """Changed voxels that the lesion-like mask lets through, voxel by voxel or component by component.

    ``gate="voxel"`` keeps ``changed & lesion_like``; ``gate="component"`` keeps every
    26-connected component of ``changed`` that holds at least one lesion-like voxel.

    >>> import numpy as np
    >>> changed = np.zeros((5, 5, 5), bool); changed[1:4, 2, 2] = True
    >>> bright = np.zeros_like(changed); bright[2, 2, 2] = True
    >>> int(gate_changes(changed, bright, "voxel").sum()), int(gate_changes(changed, bright, "component").sum())
    (1, 3)
    """
    if gate not in GATES:
        raise MSToolkitInputError(f"unknown gate {gate!r}; allowed: {', '.join(GATES)}.")
    changed = np.asarray(changed, bool)
    if gate == "voxel":
        return changed & lesion_like
    components, _ = _components(changed)
    kept = np.unique(components[changed & lesion_like])
    return np.isin(components, kept[kept > 0])


def classify_changes(
    change_z: np.ndarray,
    lesion_baseline: np.ndarray,
    lesion_followup: np.ndarray,
    brain: np.ndarray,
    affine: np.ndarray,
    *,
    change_z_threshold: float = DEFAULT_CHANGE_Z,
    min_size_mm3: float = DEFAULT_MIN_SIZE_MM3,
    enlarging_ratio: float = DEFAULT_ENLARGING_RATIO,
    appeared: np.ndarray | None = None,
    gate: str = DEFAULT_GATE,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Sort changed voxels into lesion-wise classes.

    Parameters
    ----------
    change_z : the scaled difference map (:func:`change_z_map`)
    lesion_baseline, lesion_followup : boolean lesion-like tissue at each time point (same grid)
    brain : where to look
    affine : the grid's voxel-to-world matrix (volumes in mm³, centroids in world mm)
    change_z_threshold : a voxel has *appeared* where ``change_z > threshold`` and it is
        lesion-like at follow-up; it has *disappeared* where ``change_z < -threshold`` and it
        was lesion-like at baseline
    min_size_mm3 : changed components smaller than this are ignored (and so are lesions
        smaller than this when deciding whether a lesion was already there)
    enlarging_ratio : an appeared component next to a baseline lesion of volume V makes it
        *enlarging* when (V + appeared) / V >= ratio; a disappeared one makes it *shrinking*
        when V / (V - disappeared) >= ratio, *resolved* when almost nothing is left. Smaller
        changes are *stable* and not reported.
    appeared : optional boolean mask of appeared tissue that replaces the thresholded map
        (the learned detector's growth, :mod:`mstoolkit.longitudinal.learned`); disappeared
        tissue still comes from ``change_z``
    gate : how "lesion-like" gates the thresholded map, voxel by voxel or component by
        component (:data:`GATES`, :func:`gate_changes`)

    Returns
    -------
    labels : uint8 array, 0 / NEW / ENLARGING / SHRINKING
    lesions : one dict per reported change: id, class, volume_baseline_mm3, volume_followup_mm3,
        changed_mm3, centroid_mm (world, RAS), max_abs_change_z
    """
    if not enlarging_ratio > 1.0:
        raise MSToolkitInputError(f"'enlarging_ratio' must be greater than 1 (e.g. 1.5), got {enlarging_ratio!r}.")
    if not min_size_mm3 >= 0:
        raise MSToolkitInputError(f"'min_size_mm3' must be 0 or more, got {min_size_mm3!r}.")
    voxel_mm3 = float(np.prod(spacing_from_affine(affine)))
    brain = brain > 0
    if appeared is None:
        appeared = gate_changes(brain & (change_z > change_z_threshold), lesion_followup, gate)
    appeared = brain & appeared
    disappeared = gate_changes(brain & (change_z < -change_z_threshold), lesion_baseline, gate)
    base_labels, _ = _components(lesion_baseline & brain)
    follow_labels, _ = _components(lesion_followup & brain)
    base_sizes = np.bincount(base_labels.ravel()) * voxel_mm3
    follow_sizes = np.bincount(follow_labels.ravel()) * voxel_mm3

    labels = np.zeros(change_z.shape, dtype=np.uint8)
    found = []
    for direction, changed in (("appeared", appeared), ("disappeared", disappeared)):
        components, n = _components(changed)
        boxes = ndimage.find_objects(components)
        for index in range(1, n + 1):
            # Work in the component's box, grown by one voxel: whole-volume dilations are slow.
            box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in boxes[index - 1])
            component = components[box] == index
            changed_mm3 = float(component.sum()) * voxel_mm3
            if changed_mm3 < min_size_mm3:
                continue
            if direction == "appeared":
                before = sum(base_sizes[i] for i in _touching(base_labels[box], component) if base_sizes[i] >= min_size_mm3)
                after = before + changed_mm3
                if before == 0:
                    kind = NEW
                elif after / before >= enlarging_ratio:
                    kind = ENLARGING
                else:
                    continue  # grew too little: stable
            else:
                after_lesions = [i for i in _touching(follow_labels[box], component) if follow_sizes[i] >= min_size_mm3]
                remaining = sum(follow_sizes[i] for i in after_lesions)
                before = remaining + changed_mm3
                if remaining and before / remaining < enlarging_ratio:
                    continue  # shrank too little: stable
                after, kind = remaining, SHRINKING
            labels[box][component] = kind
            centre_voxel = np.array([s.start for s in box]) + np.argwhere(component).mean(axis=0)
            centre_mm = (np.asarray(affine) @ np.append(centre_voxel, 1.0))[:3]
            found.append({"class": CLASS_NAMES[kind], "label": kind,
                          "volume_baseline_mm3": round(float(before), 2), "volume_followup_mm3": round(float(after), 2),
                          "changed_mm3": round(changed_mm3, 2), "centroid_mm": [round(float(c), 2) for c in centre_mm],
                          "max_abs_change_z": round(float(np.abs(change_z[box][component]).max()), 2)})
    found.sort(key=lambda row: -row["changed_mm3"])
    return labels, [{"id": i, **row} for i, row in enumerate(found, 1)]


# --------------------------------------------------------------------------- the whole method


def _check_scan(image: np.ndarray, name: str) -> np.ndarray:
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3:
        raise MSToolkitInputError(f"the {name} has shape {image.shape}; expected a 3D volume (x, y, z).")
    if min(image.shape) < 4:
        raise MSToolkitInputError(f"the {name} has shape {image.shape}: too few voxels along one axis to be a brain scan.")
    if not np.isfinite(image).all():
        raise MSToolkitInputError(f"the {name} contains NaN or infinite voxels; replace them first (numpy.nan_to_num).")
    if float(image.max()) == float(image.min()):
        raise MSToolkitInputError(f"the {name} is empty: every voxel is {float(image.min())}. Pass the scan itself.")
    return image


def _brain_mask(image: np.ndarray, affine: np.ndarray, skull_stripped: bool) -> np.ndarray:
    """The brain: the non-zero voxels of a skull-stripped scan, else atlas skull stripping."""
    if skull_stripped:
        return (image != 0).astype(np.uint8)
    from mstoolkit.preprocessing.preprocess import skull_strip

    return skull_strip(image, affine)


def _smooth(image: np.ndarray, spacing: Sequence[float], sigma_mm: float) -> np.ndarray:
    if not sigma_mm:
        return image
    return ndimage.gaussian_filter(image, [sigma_mm / s for s in spacing]).astype(np.float32)


def _model_probabilities(model, sequences: Sequence[str], flairs: Sequence[np.ndarray], t1s: Sequence[np.ndarray | None],
                         brain: np.ndarray, affine: np.ndarray, device: str) -> list[np.ndarray] | str:
    """Lesion masks of the model at each time point, or a sentence saying why it was not used."""
    from mstoolkit.data.io import Case
    from mstoolkit.segmentation.inference import predict

    if any(s not in ("FLAIR", "T1") for s in sequences):
        return f"model not used: it needs {', '.join(sequences)}; this command passes FLAIR and T1 only"
    if "T1" in sequences and any(t1 is None for t1 in t1s):
        return "model not used: it needs a T1 at both time points (pass --baseline-t1 and --followup-t1)"
    masks = []
    for flair, t1 in zip(flairs, t1s):
        images = {"FLAIR": np.where(brain > 0, flair, 0).astype(np.float32)}
        if "T1" in sequences:
            images["T1"] = np.where(brain > 0, t1, 0).astype(np.float32)
        case = Case(case_id="timepoint", images=images, affine=affine, brain_mask=brain.astype(np.uint8))
        _, mask = predict(model, case, sequences=sequences, device=device, min_lesion_mm3=0.0)
        masks.append(mask > 0)
    return masks


def detect_changes(
    baseline: np.ndarray,
    baseline_affine: np.ndarray,
    followup: np.ndarray,
    followup_affine: np.ndarray,
    *,
    baseline_t1: np.ndarray | None = None,
    followup_t1: np.ndarray | None = None,
    registered: bool = False,
    skull_stripped: bool = False,
    bias_correct: bool = True,
    model=None,
    model_sequences: Sequence[str] = ("FLAIR", "T1"),
    device: str = "cpu",
    change_z: float = DEFAULT_CHANGE_Z,
    hyperintensity_z: float = DEFAULT_HYPERINTENSITY_Z,
    smoothing_mm: float = DEFAULT_SMOOTHING_MM,
    edge_mm: float = DEFAULT_EDGE_MM,
    min_size_mm3: float = DEFAULT_MIN_SIZE_MM3,
    enlarging_ratio: float = DEFAULT_ENLARGING_RATIO,
    method: str = DEFAULT_METHOD,
    change_network: tuple[Any, dict] | None = None,
    gate: str = DEFAULT_GATE,
) -> ChangeResult:
    """New, enlarging and shrinking lesions between two FLAIR scans, on the follow-up grid.

    Parameters
    ----------
    baseline, baseline_affine : the earlier FLAIR (RAS+ array, as :func:`mstoolkit.data.io.load_image` gives)
    followup, followup_affine : the later FLAIR; its grid is the output grid
    baseline_t1, followup_t1 : optional T1 images on the grid of their own FLAIR; only the
        segmentation model uses them
    registered : both scans already share one grid: nothing is registered, and different
        grids are refused
    skull_stripped : the scans are already skull stripped (the brain is their non-zero
        voxels); otherwise an atlas skull stripping finds the brain
    bias_correct : N4 bias correction per time point (Tustison et al. 2010)
    model, model_sequences : an optional segmentation model (``load_model``) and its input
        sequences; where it calls lesion, the tissue counts as lesion-like too
    device : where the model runs
    change_z, hyperintensity_z, smoothing_mm, edge_mm, min_size_mm3, enlarging_ratio, gate : see the
        module's DEFAULT_* constants (each says where its value comes from) and :func:`classify_changes`
    method : ``"statistical"`` (the scaled difference and FLAIR hyperintensity decide growth) or
        ``"learned"`` (a network on both scans and their difference decides it,
        :mod:`mstoolkit.longitudinal.learned`); shrinking comes from the statistical map in both
    change_network : ``(network, config)`` from :func:`mstoolkit.longitudinal.learned.load_change_model`
        for ``method="learned"`` (default: the shipped weights); its config's ``threshold`` applies
    """
    from mstoolkit.preprocessing.preprocess import n4_correct
    from mstoolkit.preprocessing.registration import register, resample_to_reference

    if method not in METHODS:
        raise MSToolkitInputError(f"unknown change method {method!r}; allowed: {', '.join(METHODS)}.")
    if gate not in GATES:
        raise MSToolkitInputError(f"unknown gate {gate!r}; allowed: {', '.join(GATES)}.")
    baseline = _check_scan(baseline, "baseline FLAIR")
    followup = _check_scan(followup, "follow-up FLAIR")
    notes: list[str] = []
    if registered:
        check_same_grid(baseline.shape, baseline_affine, followup.shape, followup_affine,
                        names=("the baseline", "the follow-up"))
    brain_followup = _brain_mask(followup, followup_affine, skull_stripped)
    brain_baseline = _brain_mask(baseline, baseline_affine, skull_stripped)
    if not brain_followup.any() or not brain_baseline.any():
        raise MSToolkitInputError("no brain found in one of the scans; check the files (or drop --skull-stripped).")
    if bias_correct:
        baseline = n4_correct(baseline, baseline_affine, mask=brain_baseline)
        followup = n4_correct(followup, followup_affine, mask=brain_followup)
        notes.append("N4 bias correction per time point")

    if registered:
        transform = np.eye(4)
        notes.append("no registration (--registered): both scans on one grid")
    else:
        grown = ndimage.binary_dilation(brain_followup, iterations=2).astype(np.uint8)
        transform = register(baseline, baseline_affine, followup, followup_affine, kind="rigid", reference_mask=grown)
        notes.append("rigid registration of the baseline to the follow-up (Mattes mutual information)")

    def onto_followup(array, is_mask=False):
        if registered:
            return array
        return resample_to_reference(array, baseline_affine, followup.shape, followup_affine,
                                     transform=transform, is_mask=is_mask)

    baseline_on_grid = onto_followup(baseline)
    brain = (onto_followup(brain_baseline, is_mask=True) > 0) & (brain_followup > 0)
    spacing = spacing_from_affine(followup_affine)
    if edge_mm > 0:
        brain &= ndimage.distance_transform_edt(brain, sampling=spacing) > edge_mm
    if brain.sum() < 1000:
        raise MSToolkitInputError("the two brains hardly overlap after registration; are both scans of the same head?")
    quality = float(np.corrcoef(baseline_on_grid[brain], followup[brain])[0, 1])

    z_baseline = robust_zscore(_smooth(baseline_on_grid, spacing, smoothing_mm), brain)
    z_followup = robust_zscore(_smooth(followup, spacing, smoothing_mm), brain)
    normal = normal_appearing_tissue(z_baseline, z_followup, brain, hyperintensity_z)
    scaled = change_z_map(z_baseline, z_followup, normal)
    scaled[~brain] = 0.0
    lesion_baseline, lesion_followup = z_baseline >= hyperintensity_z, z_followup >= hyperintensity_z

    if model is not None:
        t1s = [None if baseline_t1 is None else onto_followup(_check_scan(baseline_t1, "baseline T1")),
               None if followup_t1 is None else _check_scan(followup_t1, "follow-up T1")]
        masks = _model_probabilities(model, model_sequences, [baseline_on_grid, followup], t1s, brain, followup_affine, device)
        if isinstance(masks, str):
            notes.append(masks)
        else:
            lesion_baseline, lesion_followup = lesion_baseline | masks[0], lesion_followup | masks[1]
            notes.append("lesion-like = FLAIR hyperintense OR lesion by the model, at each time point")

    appeared = probability = None
    if method == "learned":
        from mstoolkit.longitudinal.learned import growth_probability, load_change_model, network_inputs

        network, config = change_network if change_network is not None else load_change_model(device=device)
        # Unsmoothed z-scores, not z_baseline / z_followup above: the network was trained on these.
        inputs = network_inputs(robust_zscore(baseline_on_grid, brain), robust_zscore(followup, brain), scaled, brain)
        probability = growth_probability(network, inputs, spacing, device=device)
        appeared = probability > float(config["threshold"])
        notes.append(f"growth from the change network (probability > {config['threshold']}); shrinking from the "
                     "statistical map")
    labels, lesions = classify_changes(scaled, lesion_baseline, lesion_followup, brain, followup_affine,
                                       change_z_threshold=change_z, min_size_mm3=min_size_mm3,
                                       enlarging_ratio=enlarging_ratio, appeared=appeared, gate=gate)
    return ChangeResult(labels=labels, change_z=scaled, baseline_registered=baseline_on_grid,
                        followup_corrected=followup, brain=brain.astype(np.uint8), lesions=lesions, transform=transform,
                        registration_quality=quality, notes=notes, growth_probability=probability)


# --------------------------------------------------------------------------- files and the command


def _load_t1(path, flair: np.ndarray, flair_affine: np.ndarray, name: str, registered: bool) -> np.ndarray | None:
    """A T1 on the grid of its FLAIR: as it is when it is there already, else registered to it."""
    from mstoolkit.data.io import load_image
    from mstoolkit.preprocessing.registration import register, resample_to_reference

    if path is None:
        return None
    image, affine = load_image(path)
    _check_scan(image, name)
    same_grid = image.shape == flair.shape and np.allclose(affine, flair_affine, atol=1e-3)
    if same_grid:
        return image
    if registered:
        raise MSToolkitInputError(f"--registered: the {name} '{path}' is not on its FLAIR's grid "
                                  f"(shape {image.shape} vs {flair.shape}); resample it first or drop --registered.")
    transform = register(image, affine, flair, flair_affine, kind="rigid")
    return resample_to_reference(image, affine, flair.shape, flair_affine, transform=transform)


def to_common_space(path: str | os.PathLike, patient_dir: str | os.PathLike, study: str, *,
                    is_mask: bool) -> tuple[np.ndarray, np.ndarray]:
    """A NIfTI on one study's FLAIR grid, carried into an open_ms_data patient's common space.

    open_ms_data scores lesion change in one common space per longitudinal patient (the grid of
    its ``gt.nii.gz``) and gives, for each study, the ITK affine transform of its FLAIR there
    (``<study>_FLAIR_to_common_space.txt``). SimpleITK applies it exactly as ITK wrote it
    (linear interpolation, or nearest neighbour for masks). Returns the RAS+ array and affine,
    as :func:`mstoolkit.data.io.load_image` gives them.
    """
    import tempfile

    import SimpleITK as sitk

    from mstoolkit.data.io import load_image, load_mask

    patient_dir = Path(patient_dir)
    common = sitk.ReadImage(str(patient_dir / "gt.nii.gz"))
    transform = sitk.ReadTransform(str(patient_dir / f"{study}_FLAIR_to_common_space.txt"))
    image = sitk.ReadImage(str(path), sitk.sitkUInt8 if is_mask else sitk.sitkFloat32)
    carried = sitk.Resample(image, common, transform, sitk.sitkNearestNeighbor if is_mask else sitk.sitkLinear, 0)
    with tempfile.TemporaryDirectory() as folder:  # through a file: the toolkit's own reader sets the orientation
        written = Path(folder) / "carried.nii.gz"
        sitk.WriteImage(carried, str(written))
        return load_mask(written) if is_mask else load_image(written)


def score_in_common_space(change_mask: str | os.PathLike, patient_dir: str | os.PathLike, *, study: str | None = "study2",
                          min_lesion_mm3: float = DEFAULT_MIN_SIZE_MM3) -> dict[str, Any]:
    """Lesion-change scores of a change mask against an open_ms_data patient's ``gt.nii.gz``.

    ``change_mask`` is on the grid of ``study`` (``mstoolkit longitudinal`` writes on the
    follow-up's, ``study2``) and is carried into the common space first; with ``study=None`` it
    is already there. Every predicted change counts (the truth holds appearing and disappearing
    lesions alike); scores are :func:`mstoolkit.evaluation.change_metrics.evaluate_change`'s,
    with changes under ``min_lesion_mm3`` ignored on both sides (3 mm³, as anima scores MSSEG-2).
    """
    from mstoolkit.data.io import load_mask
    from mstoolkit.evaluation.change_metrics import evaluate_change

    truth, affine = load_mask(Path(patient_dir) / "gt.nii.gz")
    if study is None:
        pred, pred_affine = load_mask(change_mask)
        check_same_grid(pred.shape, pred_affine, truth.shape, affine, names=("the change mask", "gt.nii.gz"))
    else:
        pred, _ = to_common_space(change_mask, patient_dir, study, is_mask=True)
    return evaluate_change(pred, truth, spacing=spacing_from_affine(affine), min_lesion_mm3=min_lesion_mm3)


def score_phantom_pair(labels: np.ndarray, transform: np.ndarray, followup_affine: np.ndarray, baseline: Any,
                       truth: np.ndarray, *, min_lesion_mm3: float = DEFAULT_MIN_SIZE_MM3) -> dict[str, Any]:
    """Lesion-change scores of change labels against a phantom pair's truth.

    :func:`mstoolkit.phantom.generator.generate_longitudinal_pair` gives the truth as new and
    enlarged tissue on the baseline grid, so the NEW and ENLARGING labels (on the follow-up grid)
    are carried back there with the inverse of ``transform`` (baseline world → follow-up world,
    :attr:`ChangeResult.transform`) before :func:`mstoolkit.evaluation.change_metrics.evaluate_change`.
    """
    from mstoolkit.evaluation.change_metrics import evaluate_change
    from mstoolkit.preprocessing.registration import resample_to_reference

    grew = np.isin(labels, (NEW, ENLARGING)).astype(np.uint8)
    on_baseline = resample_to_reference(grew, followup_affine, baseline.shape, baseline.affine,
                                        transform=np.linalg.inv(transform), is_mask=True)
    return evaluate_change(on_baseline, truth, spacing=baseline.spacing, min_lesion_mm3=min_lesion_mm3)


def longitudinal_files(
    baseline: str | os.PathLike,
    followup: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    baseline_t1: str | os.PathLike | None = None,
    followup_t1: str | os.PathLike | None = None,
    registered: bool = False,
    skull_stripped: bool = False,
    model: str | os.PathLike | None = DEFAULT_MODEL,
    device: str = "auto",
    min_size_mm3: float = DEFAULT_MIN_SIZE_MM3,
    enlarging_ratio: float = DEFAULT_ENLARGING_RATIO,
    change_z: float = DEFAULT_CHANGE_Z,
    method: str = DEFAULT_METHOD,
    change_model: str | os.PathLike | None = None,
    gate: str = DEFAULT_GATE,
    hyperintensity_z: float = DEFAULT_HYPERINTENSITY_Z,
) -> dict[str, Any]:
    """Run :func:`detect_changes` on files and write its outputs on the follow-up grid.

    Writes ``change_mask.nii.gz`` (any change), ``change_labels.nii.gz`` (1 new, 2 enlarging,
    3 shrinking or resolved), ``baseline_registered.nii.gz`` and ``change_report.json``.
    Everything is computed before the first file is written, and each file is written
    atomically, so an error leaves no half-written output. ``model=None`` or ``"none"`` (the
    default, :data:`DEFAULT_MODEL`) uses the FLAIR hyperintensity alone; ``"reference"`` or a
    checkpoint path adds the model's lesion calls. ``method="learned"`` lets the change network
    (``change_model``, default the shipped weights) decide growth. Returns the report.
    """
    from mstoolkit import __version__
    from mstoolkit.data.io import load_image, save_image, save_mask

    started = time.perf_counter()
    if not enlarging_ratio > 1.0:
        raise MSToolkitInputError(f"--enlarging-ratio must be greater than 1 (e.g. 1.5), got {enlarging_ratio}.")
    if not min_size_mm3 >= 0:
        raise MSToolkitInputError(f"--min-size-mm3 must be 0 or more, got {min_size_mm3}.")
    if method not in METHODS:
        raise MSToolkitInputError(f"--method must be one of {', '.join(METHODS)}, got {method!r}.")
    if gate not in GATES:
        raise MSToolkitInputError(f"--gate must be one of {', '.join(GATES)}, got {gate!r}.")
    if not change_z > 0:
        raise MSToolkitInputError(f"--change-z must be greater than 0 (e.g. {DEFAULT_CHANGE_Z}), got {change_z}.")
    if not hyperintensity_z > 0:
        raise MSToolkitInputError(f"--hyperintensity-z must be greater than 0 (e.g. {DEFAULT_HYPERINTENSITY_Z}), got {hyperintensity_z}.")
    change_network = None
    if method == "learned":  # load before any work: a wrong checkpoint fails fast
        from mstoolkit.longitudinal.learned import load_change_model

        change_network = load_change_model(change_model, device=device)
    base_image, base_affine = load_image(baseline)
    follow_image, follow_affine = load_image(followup)
    _check_scan(base_image, f"baseline FLAIR '{baseline}'")
    _check_scan(follow_image, f"follow-up FLAIR '{followup}'")
    if registered:
        try:
            check_same_grid(base_image.shape, base_affine, follow_image.shape, follow_affine,
                            names=("the baseline", "the follow-up"))
        except MSToolkitInputError:
            raise MSToolkitInputError(
                f"--registered, but the baseline (shape {base_image.shape}, spacing {spacing_from_affine(base_affine)}) "
                f"and the follow-up (shape {follow_image.shape}, spacing {spacing_from_affine(follow_affine)}) are on "
                "different grids: drop --registered to register them, or resample one onto the other first.") from None
    base_t1 = _load_t1(baseline_t1, base_image, base_affine, "baseline T1", registered)
    follow_t1 = _load_t1(followup_t1, follow_image, follow_affine, "follow-up T1", registered)

    net, config, model_note = None, None, None
    if model is not None and str(model).lower() != "none":
        from mstoolkit.segmentation.models import load_model

        net, config = load_model(model, device=device)
    result = detect_changes(base_image, base_affine, follow_image, follow_affine, baseline_t1=base_t1,
                            followup_t1=follow_t1, registered=registered, skull_stripped=skull_stripped, model=net,
                            model_sequences=tuple(config["sequences"]) if config else ("FLAIR", "T1"),
                            device=device, change_z=change_z, min_size_mm3=min_size_mm3,
                            enlarging_ratio=enlarging_ratio, method=method, change_network=change_network, gate=gate,
                            hyperintensity_z=hyperintensity_z)
    voxel_mm3 = float(np.prod(spacing_from_affine(follow_affine)))
    counts = {name: sum(1 for row in result.lesions if row["label"] == label) for label, name in CLASS_NAMES.items()}
    volumes = {name: round(float((result.labels == label).sum()) * voxel_mm3, 2) for label, name in CLASS_NAMES.items()}
    rotation = result.transform[:3, :3]
    angle = float(np.degrees(np.arccos(np.clip((np.trace(rotation) - 1) / 2, -1, 1))))
    if net is not None:
        model_note = {"name": config.get("title", config["name"]), "architecture": config["name"],
                      "version": config.get("version", __version__), "source": str(model),
                      "used": not any(n.startswith("model not used") for n in result.notes)}
    report = {
        "counts": counts,
        "volumes_mm3": volumes,
        "active": bool(counts["new"] or counts["enlarging"]),
        "lesions": result.lesions,
        "registration": {
            "registered_beforehand": registered,
            "baseline_to_followup_world_ras_mm": np.round(result.transform, 6).tolist(),
            "rotation_degrees": round(angle, 3),
            "translation_mm": [round(float(t), 3) for t in result.transform[:3, 3]],
            "quality_correlation_in_brain": round(result.registration_quality, 4),
        },
        "inputs": {name: (None if path is None else str(Path(path).resolve())) for name, path in
                   (("baseline", baseline), ("followup", followup), ("baseline_t1", baseline_t1), ("followup_t1", followup_t1))},
        "model": model_note,
        "method": method,
        "change_model": None if change_network is None else {
            "source": str(change_model or "shipped"), "threshold": change_network[1]["threshold"],
            "title": change_network[1].get("title"), "best_iteration": change_network[1].get("best_iteration")},
        "settings": {"min_size_mm3": min_size_mm3, "enlarging_ratio": enlarging_ratio, "change_z": change_z,
                     "hyperintensity_z": hyperintensity_z, "smoothing_mm": DEFAULT_SMOOTHING_MM,
                     "edge_mm": DEFAULT_EDGE_MM, "gate": gate, "skull_stripped": skull_stripped},
        "steps": result.notes,
        "grid": {"shape": list(follow_image.shape), "affine": np.round(follow_affine, 6).tolist(), "of": "follow-up"},
        "mstoolkit_version": __version__,
        "seconds": round(time.perf_counter() - started, 2),
    }
    out = Path(out_dir)
    save_mask(out / "change_mask.nii.gz", (result.labels > 0).astype(np.uint8), follow_affine)
    save_image(out / "change_labels.nii.gz", result.labels, follow_affine, dtype=np.uint8)
    save_image(out / "baseline_registered.nii.gz", result.baseline_registered, follow_affine)
    write_atomic(out / "change_report.json", json.dumps(report, indent=2))
    return report


def _or_default(value, default):
    return default if value is None else value


def cli_longitudinal(args) -> int:
    """``mstoolkit longitudinal --baseline F --followup F --out DIR``: write the change maps and report."""
    report = longitudinal_files(args.baseline, args.followup, args.out, baseline_t1=args.baseline_t1,
                                followup_t1=args.followup_t1, registered=args.registered,
                                skull_stripped=args.skull_stripped, model=args.model, device=args.device,
                                min_size_mm3=args.min_size_mm3, enlarging_ratio=args.enlarging_ratio,
                                method=getattr(args, "method", DEFAULT_METHOD),
                                change_model=getattr(args, "change_model", None),
                                gate=_or_default(getattr(args, "gate", None), DEFAULT_GATE),
                                change_z=_or_default(getattr(args, "change_z", None), DEFAULT_CHANGE_Z),
                                hyperintensity_z=_or_default(getattr(args, "hyperintensity_z", None), DEFAULT_HYPERINTENSITY_Z))
    counts = report["counts"]
    print(f"{counts['new']} new, {counts['enlarging']} enlarging, {counts['shrinking_or_resolved']} shrinking or resolved "
          f"lesion(s); active: {'yes' if report['active'] else 'no'} ({report['seconds']:.1f} s). Wrote change_mask.nii.gz, "
          f"change_labels.nii.gz, baseline_registered.nii.gz and change_report.json to {args.out}")
    return 0
