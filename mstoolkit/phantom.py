"""A realistic synthetic MS phantom built from the MNI152 2009 templates in nilearn's wheel.

Each subject is drawn from a seed: the template's grey matter (GM), white matter
(WM) and CSF maps are deformed (a small affine plus a smooth random warp),
sharpened into one "individual" brain with its own sulci, and turned into
FLAIR, T1, T2 (and optionally T1CE) contrasts. Lesions are ovoids with
irregular borders placed where MS puts them (periventricular fingers
perpendicular to the ventricles, juxtacortical, deep white matter,
infratentorial), with counts and sizes fitted to real consensus masks. A bias
field, Rician noise and a scanner profile complete the picture. Everything is
on the FSL MNI152 1 mm grid (182 x 218 x 182, RAS+), the grid of the real
``open_ms_data`` MNI sample, so a model trained here applies to it directly.

Introduced in notebook 01 (data loading); notebook 02 uses the "raw" scan.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from . import __version__
from .io import Case, MSToolkitInputError, save_image, save_mask

__all__ = [
    "MNI_AFFINE",
    "MNI_SHAPE",
    "PROFILES",
    "cli_phantom",
    "generate_dataset",
    "generate_longitudinal_pair",
    "generate_raw_scan",
    "generate_subject",
    "raw_paths",
]

#: The FSL MNI152 1 mm grid (RAS+) of the real open_ms_data MNI sample.
MNI_SHAPE = (182, 218, 182)
MNI_AFFINE = np.array([[1.0, 0, 0, -91], [0, 1, 0, -126], [0, 0, 1, -72], [0, 0, 0, 1]])

#: Scanner profiles: intensity scale (arbitrary units), tissue contrast, SNR (WM mean / noise
#: sigma), bias-field strength, slice thickness (mm, blurred along z on the 1 mm grid) and
#: incomplete CSF suppression on FLAIR. Train on one, test on another to see domain shift.
PROFILES: dict[str, dict] = {
    "standard": {"scale": 1.0, "contrast": 1.0, "snr": 20.0, "bias": 0.08, "slice_mm": 1.0, "csf_flair": 0.0,
        "description": "3 T, 3D FLAIR, 1 mm isotropic, bias-corrected (like the real MNI sample)"},
    "low_field": {"scale": 0.55, "contrast": 0.75, "snr": 13.0, "bias": 0.25, "slice_mm": 3.0, "csf_flair": 0.05,
        "description": "1.5 T, 2D FLAIR with 3 mm slices, noisier, flatter contrast, strong bias"},
    "vendor_b": {"scale": 6.0, "contrast": 1.2, "snr": 20.0, "bias": 0.15, "slice_mm": 1.5, "csf_flair": 0.2,
        "description": "3 T from another vendor: 12-bit scale, stronger GM/WM contrast, CSF not fully nulled"},
    "high_res": {"scale": 2.0, "contrast": 1.1, "snr": 40.0, "bias": 0.3, "slice_mm": 1.0, "csf_flair": 0.0,
        "description": "research 3 T with a 32-channel coil: low noise, crisp, strong receive bias"},
}

# Mean intensity of each tissue in the "standard" profile: first read off the real patient26 images
# (open_ms_data, Lesjak et al. 2018) inside template GM/WM/CSF masks and the consensus lesion mask,
# then tuned so the intensity histograms inside the brain match (benchmarks/bench_phantom.py).
_MEANS = {
    "FLAIR": {"wm": 76.0, "gm": 93.0, "csf": 14.0, "lesion": 114.0, "black_hole": 104.0, "enhancing": 114.0},
    "T1": {"wm": 330.0, "gm": 250.0, "csf": 65.0, "lesion": 255.0, "black_hole": 140.0, "enhancing": 255.0},
    "T1CE": {"wm": 345.0, "gm": 265.0, "csf": 80.0, "lesion": 270.0, "black_hole": 150.0, "enhancing": 560.0},
    "T2": {"wm": 250.0, "gm": 330.0, "csf": 880.0, "lesion": 540.0, "black_hole": 650.0, "enhancing": 560.0},
}

# 3D T1 (MPRAGE) and T2 reach a higher SNR than FLAIR in the same time.
_SNR_FACTOR = {"FLAIR": 1.0, "T1": 1.6, "T1CE": 1.6, "T2": 1.2}

# Lesion statistics fitted to the 28 consensus masks in open_ms_data/cross_sectional/MNI/*/
# GOLD_STANDARD_*.nii.gz (Lesjak et al. 2018; connected components, 26-connectivity, 1 mm):
# lesions per subject: median 80, range 17-392; lognormal fit of the count: mu 4.249, sigma 0.932.
# Lesion volume (mm^3), 2980 lesions: median 17, 95th percentile 263, max 39 401. The 1.28 % of
# lesions above 1.5 mL (confluent plaques) hold 65 % of the lesion load, so they get their own
# lognormal (log mm^3: mean 8.54, sd 0.87); the rest fit a two-component lognormal mixture in
# log space (weights, means, sds of log mm^3):
_COUNT_LOGNORMAL = (4.249, 0.932)
_PLAQUE_SHARE, _PLAQUE_LOGNORMAL = 0.0128, (8.54, 0.87)
_VOLUME_MIXTURE = ((0.499, 1.877, 1.107), (0.501, 3.783, 1.213))
# Share of real lesions (by centroid) in each zone, measured with _zone_of on the same masks;
# the sampler's weights are tuned so the phantom's rasterised lesions land near these shares.
_REAL_ZONE_SHARE = {"periventricular": 0.51, "juxtacortical": 0.08, "deep": 0.35, "infratentorial": 0.06}
_ZONE_WEIGHTS = {"periventricular": 0.44, "juxtacortical": 0.12, "deep": 0.375, "infratentorial": 0.065}
_ZONES = ("periventricular", "juxtacortical", "deep", "infratentorial")
_MAX_COUNT, _MAX_VOLUME = 400, 40000.0


@dataclass
class _Lesion:
    """One ovoid lesion in the subject's frame (output voxel = mm coordinates)."""

    centre: np.ndarray  # (3,) voxel coordinates
    axes: np.ndarray  # (3,) semi-axes in mm
    rotation: np.ndarray  # (3, 3) columns = ovoid axes; the first is the long one
    waves: np.ndarray  # (k, 5) border irregularity: direction (3), phase, amplitude
    zone: str
    kind: str  # "lesion", "black_hole" or "enhancing"
    brightness: float  # per-lesion intensity factor


# --------------------------------------------------------------------------- template


def _template_dir() -> Path:
    import nilearn.datasets

    return Path(nilearn.datasets.__file__).parent / "data"


@lru_cache(maxsize=1)
def _template() -> dict:
    """Template maps cropped to the FSL MNI grid, lesion zones at 2 mm; cached per process."""
    import nibabel as nib

    maps = {}
    for name in ("t1", "gm", "wm"):
        img = nib.load(str(_template_dir() / f"mni_icbm152_{name}_tal_nlin_sym_09a_converted.nii.gz"))
        # Both grids are 1 mm RAS in MNI space, so going from one to the other is a crop.
        start = np.round(MNI_AFFINE[:3, 3] - img.affine[:3, 3]).astype(int)
        crop = tuple(slice(s, s + n) for s, n in zip(start, MNI_SHAPE))
        maps[name] = np.asarray(img.dataobj)[crop].astype(np.float32) / 255.0
    brain = ndi.gaussian_filter((maps["t1"] > 0.2).astype(np.float32), 0.5)
    gm, wm = maps["gm"], maps["wm"]
    # Averaging 152 brains blurred the sulci away from the GM map, but they survive as thin
    # dark valleys in the template T1: find them (difference of Gaussians), give them to CSF.
    valleys = np.clip(ndi.gaussian_filter(maps["t1"], 1.5) - ndi.gaussian_filter(maps["t1"], 0.5), 0, None)
    gm -= np.clip(valleys / 0.08, 0.0, 0.6) * gm
    csf = np.clip(brain - gm - wm, 0.0, 1.0)
    # Skull stripping (as in the real sample) also removes most CSF outside the cortex.
    rim = ~ndi.binary_erosion(brain > 0.5, iterations=2) & (csf > 0.5)
    strip = ((brain > 0.5) & ~rim).astype(np.uint8)
    domain = ndi.binary_dilation(brain > 0.05, iterations=6)
    # Lesion zones on a 2 mm grid: cheap distance transforms, plenty for choosing centres.
    down = lambda a: a[: 2 * 91, : 2 * 109, : 2 * 91].reshape(91, 2, 109, 2, 91, 2).mean((1, 3, 5))
    gm2, wm2, csf2, brain2 = down(gm), down(wm), down(csf), down(brain)
    depth = ndi.distance_transform_edt(brain2 > 0.5) * 2.0
    world = np.stack(np.meshgrid(*[np.arange(n) * 2.0 + 0.5 for n in (91, 109, 91)], indexing="ij"))
    world += MNI_AFFINE[:3, 3, None, None, None]
    ventricles = (csf2 > 0.5) & (depth > 14) & (np.abs(world[0]) < 30)
    dist_v = ndi.distance_transform_edt(~ventricles)
    # Direction away from the nearest ventricle wall: the gradient of the (smoothed) distance.
    away = np.stack(np.gradient(ndi.gaussian_filter(dist_v, 1.0)))
    away /= np.maximum(np.linalg.norm(away, axis=0), 1e-6)
    cortex = (gm2 > 0.4) & (depth < 12)
    dist_c = ndi.distance_transform_edt(~cortex) * 2.0
    x, y, z = world
    infra = ((y < -35) & (z < -12 - 0.35 * np.maximum(np.abs(x) - 10, 0))) | ((np.abs(x) < 14) & (y < -8) & (z < -14))
    zone = np.full(gm2.shape, 3, np.uint8)  # deep white matter
    zone[dist_c <= 4.5] = 2
    zone[(dist_v * 2.0 <= 8) & ~infra] = 1
    zone[infra] = 4
    zone[brain2 < 0.5] = 0
    candidates = {name: np.flatnonzero((zone == k + 1) & (wm2 > 0.65)) for k, name in enumerate(_ZONES)}
    domain = np.flatnonzero(domain).astype(np.int32)
    voxels = np.stack(np.unravel_index(domain, MNI_SHAPE))
    padded = np.ravel_multi_index(tuple(voxels), tuple(n + _NOISE_MARGIN for n in MNI_SHAPE)).astype(np.int32)
    return {"gm": gm, "wm": wm, "brain": brain, "strip": strip, "zone": zone, "candidates": candidates,
            "away": away.astype(np.float32), "domain": domain, "voxels": voxels.astype(np.float32),
            "padded_domain": padded}


def _zone_of(points: np.ndarray) -> list[str]:
    """Zone name of each (n, 3) voxel point of the MNI grid ("outside" outside the brain)."""
    t = _template()
    idx = np.clip((np.asarray(points) // 2).astype(int), 0, np.array(t["zone"].shape) - 1)
    labels = t["zone"][idx[:, 0], idx[:, 1], idx[:, 2]]
    return [(("outside",) + _ZONES)[int(k)] for k in labels]


# --------------------------------------------------------------------------- anatomy


def _smooth_field(rng: np.random.Generator, step_mm: float, amplitude: float) -> np.ndarray:
    """A random smooth field on the MNI grid: Gaussian bumps every ``step_mm``, built separably.

    A separable sum (three small matrix products) costs far less than filtering a
    full 3D noise volume, and its standard deviation is ``amplitude`` everywhere.
    """
    bases = []
    for n in MNI_SHAPE:
        centres = np.arange(-step_mm, n + step_mm, step_mm)
        basis = np.exp(-0.5 * ((np.arange(n)[:, None] - centres[None]) / (0.6 * step_mm)) ** 2)
        bases.append((basis / np.linalg.norm(basis, axis=1, keepdims=True)).astype(np.float32))
    coef = (rng.standard_normal([b.shape[1] for b in bases]) * amplitude).astype(np.float32)
    return np.einsum("ia,jb,kc,abc->ijk", *bases, coef, optimize=True)


def _rotation(angles: Sequence[float]) -> np.ndarray:
    """Rotation matrix from three small angles (radians) about x, y, z."""
    from scipy.spatial.transform import Rotation

    return Rotation.from_euler("xyz", angles).as_matrix()


def _anatomy(rng: np.random.Generator) -> dict:
    """One individual brain: deformed, sharpened GM/WM/CSF fractions on the MNI grid."""
    t = _template()
    idx, vox = t["domain"], t["voxels"]
    centre = np.array([91.0, 108.0, 90.0], np.float32)[:, None]
    # Output voxel -> template voxel: a small affine (head size and pose) plus a smooth warp.
    # Head size: the real MNI-registered sample (affine registration) keeps brains ~9 % smaller.
    scale = rng.normal(0.91, 0.04) * rng.normal(1.0, 0.02, 3)
    matrix = (_rotation(rng.normal(0, np.radians(2.0), 3)) @ np.diag(1.0 / scale)).astype(np.float32)
    coords = matrix @ (vox - centre)
    coords += centre + rng.normal(0, 1.5, (3, 1)).astype(np.float32)
    for axis in range(3):
        coords[axis] += _smooth_field(rng, 18.0, 2.0).ravel()[idx]
    last = np.array(MNI_SHAPE, np.float32)[:, None] - 1
    nearest = np.clip(np.rint(coords).astype(np.intp), 0, last.astype(np.intp))
    # The brain map is nearly binary, so the nearest voxel is enough; nothing outside the grid.
    brain = t["brain"][tuple(nearest)] * np.all((coords >= 0) & (coords <= last), axis=0)
    inside = np.flatnonzero(brain > 0)  # interpolate only where there is tissue
    brain = brain[inside]
    gm = ndi.map_coordinates(t["gm"], coords[:, inside], order=1, prefilter=False)
    wm = ndi.map_coordinates(t["wm"], coords[:, inside], order=1, prefilter=False)
    csf = np.clip(brain - gm - wm, 0.0, 1.0)
    # The template is an average of 152 brains, so its tissue maps are blurred. Sharpen them
    # (softmax with temperature) and let smooth noise and atrophy decide each boundary:
    # every subject gets its own sulci, cortical ribbon and ventricle size.
    wiggle, sulci, texture = 0.5 * _noise(rng, "coarse"), 0.4 * _noise(rng, "coarse"), _noise(rng, "fine")
    wiggle_inside = wiggle[inside]
    atrophy = rng.uniform(0.0, 0.6)
    eps, temperature = np.float32(0.03), np.float32(0.35)
    logits = np.stack([np.log(gm + eps) / temperature + wiggle_inside, np.log(wm + eps) / temperature - wiggle_inside + 0.25,
                       np.log(csf + eps) / temperature + sulci[inside] + atrophy - 0.5,
                       np.log(1 - brain + eps) / temperature])
    logits -= logits.max(axis=0)
    np.exp(logits, out=logits)
    logits /= logits.sum(axis=0)
    maps = {"strip": np.zeros(MNI_SHAPE, np.uint8)}
    maps["strip"].flat[idx] = t["strip"][tuple(nearest)]
    for k, name in enumerate(("gm", "wm", "csf")):
        maps[name] = np.zeros(MNI_SHAPE, np.float32)
        maps[name].flat[idx[inside]] = logits[k]
    zone = t["zone"][tuple(nearest // 2)]
    return dict(maps, zone=zone, coords=coords, texture=texture + wiggle, atrophy=float(atrophy))


def _noise(rng: np.random.Generator, scale: str) -> np.ndarray:
    """Smooth unit-variance noise at the domain voxels: a random window of a cached volume.

    Cutting a randomly placed window out of one large noise volume is as random as
    drawing new noise per subject, and far cheaper than filtering a fresh 3D volume.
    """
    t = _template()
    volume = _noise_volume(scale)
    offset = rng.integers(0, _NOISE_MARGIN, 3)
    flat = int(np.ravel_multi_index(tuple(offset), volume.shape))
    return volume.ravel()[t["padded_domain"] + flat]


_NOISE_MARGIN = 40


@lru_cache(maxsize=2)
def _noise_volume(scale: str) -> np.ndarray:
    sigma = {"fine": 0.8, "coarse": 2.0}[scale]
    rng = np.random.default_rng(20091)
    shape = tuple(n + _NOISE_MARGIN for n in MNI_SHAPE)
    volume = ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma)
    return volume / volume.std()


# --------------------------------------------------------------------------- lesions


def _lesion_volume(rng: np.random.Generator) -> float:
    if rng.random() < _PLAQUE_SHARE:
        return float(np.clip(np.exp(rng.normal(*_PLAQUE_LOGNORMAL)), 1500.0, _MAX_VOLUME))
    weights, means, sds = np.array(_VOLUME_MIXTURE).T
    k = rng.choice(len(weights), p=weights / weights.sum())
    return float(np.clip(np.exp(rng.normal(means[k], sds[k])), 1.0, 1500.0))


def _frame(direction: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Orthonormal axes whose first column is ``direction``."""
    helper = rng.standard_normal(3)
    if np.linalg.norm(direction) < 0.5:  # no preferred direction (e.g. exactly at the ventricle wall)
        direction = helper / np.linalg.norm(helper)
        helper = rng.standard_normal(3)
    second = np.cross(direction, helper)
    second /= np.linalg.norm(second)
    return np.stack([direction, second, np.cross(direction, second)], axis=1)


def _sample_lesions(rng: np.random.Generator, anatomy: dict, *, n_lesions: int | None = None) -> list[_Lesion]:
    """Draw lesion count, sizes, zones, shapes and kinds (fitted to real masks, see top)."""
    t = _template()
    if n_lesions is None:
        n_lesions = int(np.clip(round(np.exp(rng.normal(*_COUNT_LOGNORMAL))), 1, _MAX_COUNT))
    wm = anatomy["wm"].flat[t["domain"]]
    candidates = {z: np.flatnonzero((anatomy["zone"] == k + 1) & (wm > 0.6)) for k, z in enumerate(_ZONES)}
    weights = np.array([_ZONE_WEIGHTS[z] for z in _ZONES])
    lesions: list[_Lesion] = []
    for _ in range(n_lesions):
        lesions += _one_lesion(rng, anatomy, candidates, weights / weights.sum())
    return lesions


def _one_lesion(rng: np.random.Generator, anatomy: dict, candidates: dict, weights: np.ndarray) -> list[_Lesion]:
    t = _template()
    volume = _lesion_volume(rng)
    zone = "periventricular" if volume > 1500 else str(rng.choice(_ZONES, p=weights))
    if zone in ("juxtacortical", "infratentorial"):
        volume = min(volume, 600.0)
    pick = candidates[zone][rng.integers(len(candidates[zone]))]
    centre = np.array(np.unravel_index(t["domain"][pick], MNI_SHAPE), float) + rng.uniform(-0.5, 0.5, 3)
    if zone == "periventricular":  # Dawson's fingers: long axis points away from the ventricles
        c2 = np.clip((anatomy["coords"][:, pick] // 2).astype(int), 0, np.array(t["zone"].shape) - 1)
        direction = t["away"][:, c2[0], c2[1], c2[2]].astype(float)
        elongation = rng.uniform(1.6, 2.8)
    else:
        direction = rng.standard_normal(3)
        elongation = rng.uniform(1.0, 1.8)
    direction /= max(np.linalg.norm(direction), 1e-6)
    rotation = _frame(direction, rng)
    kind = "black_hole" if rng.random() < (0.35 if volume > 100 else 0.05) else "lesion"
    kind = "enhancing" if kind == "lesion" and volume > 20 and rng.random() < 0.1 else kind
    brightness = float(rng.normal(1.0, 0.07))
    # Confluent plaques: several overlapping ovoids spread along the ventricle wall.
    n_parts = int(np.ceil(volume / 900.0))
    spread = (3 * volume / (4 * np.pi)) ** (1 / 3) * (0.6 if n_parts > 1 else 0.0)
    parts = []
    for _ in range(n_parts):
        part_volume = volume / n_parts * (1.7 if n_parts > 1 else 1.0)
        radius = (3 * part_volume / (4 * np.pi)) ** (1 / 3)
        squash = rng.uniform(0.8, 1.25)
        axes = radius * np.array([elongation ** (2 / 3), elongation ** (-1 / 3) * squash, elongation ** (-1 / 3) / squash])
        waves = np.column_stack([rng.standard_normal((6, 3)) * rng.uniform(1.0, 2.5, (6, 1)),
                                 rng.uniform(0, 2 * np.pi, 6), rng.uniform(0.04, 0.12, 6)])
        offset = rotation @ (rng.normal(0, 1, 3) * np.array([0.3, 1.0, 1.0]) * spread)
        parts.append(_Lesion(centre + offset, axes, rotation, waves, zone, kind, brightness))
    return parts


def _rasterise(lesions: Sequence[_Lesion], *, rigid: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Lesion fraction (partial volume, max over lesions) and index+1 of the dominant lesion.

    ``rigid = (R, t)`` rasterises them in a frame moved by ``p = R (x - c) + c + t``.
    """
    fraction = np.zeros(MNI_SHAPE, np.float32)
    owner = np.zeros(MNI_SHAPE, np.int16)
    origin = np.array([91.0, 108.0, 90.0])
    rot, shift = (np.eye(3), np.zeros(3)) if rigid is None else rigid
    for i, les in enumerate(lesions):
        centre = rot.T @ (les.centre - origin - shift) + origin
        extent = les.axes.max() * 1.3 + 2.0
        lo = np.maximum(np.floor(centre - extent).astype(int), 0)
        hi = np.minimum(np.ceil(centre + extent).astype(int) + 1, MNI_SHAPE)
        if np.any(hi <= lo):
            continue
        grid = np.stack(np.meshgrid(*[np.arange(a, b, dtype=np.float32) for a, b in zip(lo, hi)], indexing="ij"))
        points = np.tensordot(rot, grid - (origin[:, None, None, None]), axes=1) + (origin + shift - les.centre)[:, None, None, None]
        local = np.tensordot(les.rotation.T, points, axes=1) / les.axes[:, None, None, None]
        radius = np.sqrt((local**2).sum(axis=0))
        for wave in les.waves:  # irregular border: a few random waves on the ovoid's surface
            radius += wave[4] * np.sin(np.tensordot(wave[:3], local, axes=1) + wave[3])
        size = float(np.prod(les.axes) ** (1 / 3))
        edge = min(1.2 + 0.15 * size, 2.5)  # larger lesions fade out over a wider rim
        frac = np.clip(0.5 + (1.0 - radius) * size / edge, 0.0, 1.0).astype(np.float32)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        better = frac > fraction[box]
        fraction[box] = np.where(better, frac, fraction[box])
        owner[box] = np.where(better, i + 1, owner[box])
    return fraction, owner


# --------------------------------------------------------------------------- images


def _tissue_with_lesions(anatomy: dict, fraction: np.ndarray) -> dict:
    """Per-voxel (domain) tissue fractions once lesions replace white (then grey) matter."""
    idx = _template()["domain"]
    gm, wm, csf = (anatomy[k].flat[idx] for k in ("gm", "wm", "csf"))
    strip = anatomy["strip"].flat[idx]
    lesion = fraction.flat[idx] * np.clip(wm + 0.7 * gm, 0.0, 1.0) * strip
    from_wm = np.minimum(wm, lesion)
    return {"gm": gm - (lesion - from_wm), "wm": wm - from_wm, "csf": csf, "lesion": lesion, "strip": strip}


def _render(rng: np.random.Generator, anatomy: dict, tissue: dict, owner: np.ndarray, lesions: Sequence[_Lesion],
            sequences: Sequence[str], profile: str, *, clean: bool = False) -> dict[str, np.ndarray]:
    """Contrast mixture and texture, then (unless ``clean``) thick slices, bias field,
    Rician noise and skull stripping, for each sequence."""
    idx = _template()["domain"]
    settings = PROFILES[profile]
    brain = (tissue["gm"] + tissue["wm"] + tissue["csf"] + tissue["lesion"]) * tissue["strip"]
    who = owner.flat[idx]
    enhancing = np.array([False] + [les.kind == "enhancing" for les in lesions])[who]
    ring = np.array([False] + [les.kind == "enhancing" and np.prod(les.axes) > 60 for les in lesions])[who]
    images = {}
    for seq in sequences:
        jittered = {k: v * rng.normal(1.0, 0.03) for k, v in _MEANS[seq].items()}
        wm = jittered["wm"]  # the profile stretches or flattens contrast around white matter
        means = {k: (wm + settings["contrast"] * (v - wm)) * settings["scale"] for k, v in jittered.items()}
        if seq == "FLAIR":
            means["csf"] += settings["csf_flair"] * means["wm"]
        per_lesion = np.array([0.0] + [means[les.kind] * les.brightness for les in lesions], np.float32)[who]
        if seq == "T1CE":  # gadolinium: solid enhancement in small lesions, a ring in larger ones
            weight = np.where(ring, np.clip(2.5 * (1.0 - tissue["lesion"]), 0.0, 1.0), 1.0)
            per_lesion = np.where(enhancing, means["lesion"] + weight * (means["enhancing"] - means["lesion"]), per_lesion)
        signal = (tissue["gm"] * means["gm"] + tissue["wm"] * means["wm"] + tissue["csf"] * means["csf"]
                  + tissue["lesion"] * per_lesion)
        signal *= 1.0 + 0.03 * anatomy["texture"]  # regional tissue variation
        # Lesions and cortex are less uniform than white matter (layers, vessels, partial volume).
        signal += (0.1 * tissue["lesion"] * per_lesion + 0.05 * tissue["gm"] * means["gm"]) * anatomy["texture"]
        volume = np.zeros(MNI_SHAPE, np.float32)
        volume.flat[idx] = signal
        if not clean:
            if settings["slice_mm"] > 1.0:  # thick slices: partial volume along z
                volume = ndi.gaussian_filter1d(volume, settings["slice_mm"] / 2.355, axis=2)
            inside = idx[brain >= 0.5]  # skull-stripped like the real sample: zero outside the brain
            signal = volume.flat[inside] * np.exp(_smooth_field(rng, 60.0, settings["bias"]).flat[inside])
            volume[:] = 0.0
            sigma = means["wm"] / (settings["snr"] * _SNR_FACTOR[seq])
            volume.flat[inside] = _rician(rng, signal, np.float32(sigma))
        images[seq] = volume
    return images


def _rician(rng: np.random.Generator, signal: np.ndarray, sigma: float) -> np.ndarray:
    """Magnitude of a complex signal with Gaussian noise in both channels: Rician noise."""
    real = signal + sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    imaginary = sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    return np.sqrt(real**2 + imaginary**2)


def _resample(volume: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Average a 1 mm volume onto a grid of ``spacing`` mm (same field of view)."""
    spacing = np.asarray(spacing, float)
    smooth = volume
    for axis, s in enumerate(spacing):
        if s > 1.0:  # slice profile: about a box of width s
            smooth = ndi.gaussian_filter1d(smooth, s / 2.355 * 1.3, axis=axis)
    shape = _grid_shape(spacing)
    axes = [np.arange(n, dtype=np.float32) * s + (s - 1) / 2 for n, s in zip(shape, spacing)]
    coords = np.meshgrid(*axes, indexing="ij")
    return ndi.map_coordinates(smooth, coords, order=1, mode="nearest", prefilter=False).astype(np.float32)


def _grid_shape(spacing: Sequence[float]) -> tuple[int, int, int]:
    return tuple(max(1, round(n / s)) for n, s in zip(MNI_SHAPE, spacing))  # type: ignore[return-value]


def _grid_affine(spacing: Sequence[float]) -> np.ndarray:
    affine = MNI_AFFINE.copy()
    affine[:3, :3] = np.diag(spacing)
    affine[:3, 3] += (np.asarray(spacing) - 1) / 2
    return affine


def _check_options(profile: str, spacing: Sequence[float] | None) -> tuple[float, float, float] | None:
    if not isinstance(profile, str) or profile not in PROFILES:
        raise MSToolkitInputError(f"Unknown profile {profile!r}; allowed: {', '.join(PROFILES)}.")
    if spacing is None:
        return None
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3 or not all(np.isfinite(v) and 0.5 <= v <= 10 for v in values):
        raise MSToolkitInputError(f"'spacing' must be 3 positive numbers in mm between 0.5 and 10, got {spacing!r}.")
    return values  # type: ignore[return-value]


def _make_case(case_id: str, images: dict, mask: np.ndarray, brain: np.ndarray, spacing, meta: dict) -> Case:
    """Package (optionally resampled) arrays as a Case with lesion statistics in meta."""
    import cc3d

    affine = MNI_AFFINE.copy()
    if spacing is not None:
        images = {k: _resample(v, spacing) for k, v in images.items()}
        mask, brain = _resample(mask, spacing), _resample(brain, spacing)
        affine = _grid_affine(spacing)
    mask, brain = (mask > 0.5).astype(np.uint8), (brain > 0.5).astype(np.uint8)
    components = cc3d.connected_components(mask, connectivity=26)
    volumes = np.bincount(components.ravel())[1:] * float(np.prod(np.diag(affine)[:3]))
    meta.update(n_lesions=int(volumes.size), lesion_volume_ml=round(float(volumes.sum()) / 1000, 3),
                lesion_volumes_mm3=[round(float(v), 1) for v in volumes])
    return Case(case_id=case_id, images=images, affine=affine, mask=mask, brain_mask=brain, meta=meta)


# --------------------------------------------------------------------------- public API


def _scene(seed: int, *, n_lesions: int | None = None) -> tuple[dict, list[_Lesion], np.random.Generator]:
    """Anatomy and lesions of subject ``seed``; rendering gets its own stream, so a profile
    changes how the subject looks, never the subject itself."""
    anatomy_rng, lesion_rng, render_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
    anatomy = _anatomy(anatomy_rng)
    return anatomy, _sample_lesions(lesion_rng, anatomy, n_lesions=n_lesions), render_rng


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise MSToolkitInputError(f"'seed' must be a non-negative integer, got {seed!r}.")
    return int(seed)


def generate_subject(*, seed: int, profile: str = "standard", spacing: Sequence[float] | None = None,
                     t1ce: bool = False, n_lesions: int | None = None, case_id: str | None = None) -> Case:
    """Generate one synthetic MS subject on the FSL MNI152 1 mm grid (RAS+).

    Introduced in notebook 01 (data loading).

    Parameters
    ----------
    seed : int, keyword-only
        The same seed always gives byte-identical arrays.
    profile : str
        Scanner profile, one of :data:`PROFILES` (contrast, noise, bias, slice thickness).
        The anatomy and lesions depend on ``seed`` only.
    spacing : 3 floats, optional
        Resample to this voxel size in mm (same field of view), e.g. ``(1, 1, 3)`` for a
        2D-FLAIR-like scan. Default: the 1 mm grid, 182 x 218 x 182.
    t1ce : bool
        Also make a gadolinium-enhanced T1 (a few lesions enhance, some as rings).
    n_lesions : int, optional
        Override the number of lesions drawn (default: drawn from the fitted distribution);
        0 gives a healthy control.

    Returns
    -------
    Case
        Images FLAIR, T1, T2 (and T1CE), lesion ``mask``, ``brain_mask``; ``meta`` holds the
        lesion count and volume (26-connected components) and one entry per drawn lesion.

    Examples
    --------
    >>> case = generate_subject(seed=1)  # doctest: +SKIP
    >>> case.shape, case.spacing  # doctest: +SKIP
    ((182, 218, 182), (1.0, 1.0, 1.0))
    """
    seed, spacing = _check_seed(seed), _check_options(profile, spacing)
    if n_lesions is not None and (isinstance(n_lesions, bool) or not isinstance(n_lesions, (int, np.integer))
                                  or not 0 <= n_lesions <= _MAX_COUNT):
        raise MSToolkitInputError(f"'n_lesions' must be an integer from 0 to {_MAX_COUNT} (or None), got {n_lesions!r}.")
    anatomy, lesions, rng = _scene(seed, n_lesions=n_lesions)
    fraction, owner = _rasterise(lesions)
    tissue = _tissue_with_lesions(anatomy, fraction)
    sequences = ("FLAIR", "T1", "T2") + (("T1CE",) if t1ce else ())
    images = _render(rng, anatomy, tissue, owner, lesions, sequences, profile)
    return _make_case(case_id or f"phantom-{seed}", images, *_masks(tissue), spacing, _meta(seed, profile, lesions, anatomy))


def _masks(tissue: dict, *, stripped: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Lesion and brain fractions as volumes; the brain without the outer CSF rim if ``stripped``."""
    idx = _template()["domain"]
    lesion, brain = np.zeros(MNI_SHAPE, np.float32), np.zeros(MNI_SHAPE, np.float32)
    lesion.flat[idx] = tissue["lesion"]
    brain.flat[idx] = (tissue["gm"] + tissue["wm"] + tissue["csf"] + tissue["lesion"]) * (tissue["strip"] if stripped else 1)
    return lesion, brain


def _meta(seed: int, profile: str, lesions: Sequence[_Lesion], anatomy: dict) -> dict:
    drawn = [{"zone": les.zone, "kind": les.kind, "centre_voxel": [round(float(c), 1) for c in les.centre],
              "volume_mm3": round(float(4 / 3 * np.pi * np.prod(les.axes)), 1)} for les in lesions]
    return {"generator": f"mstoolkit.phantom {__version__}", "seed": seed, "profile": profile,
            "atrophy": round(anatomy["atrophy"], 3), "lesions": drawn}


def _move(anatomy: dict, rigid: tuple[np.ndarray, np.ndarray]) -> dict:
    """Resample the anatomy maps in a frame moved by ``rigid`` (the follow-up's head position)."""
    idx = _template()["domain"]
    rot, shift = rigid
    origin = np.array([91.0, 108.0, 90.0])[:, None]
    vox = np.stack(np.unravel_index(idx, MNI_SHAPE)).astype(float)
    points = (rot @ (vox - origin) + origin + shift[:, None]).astype(np.float32)
    moved = dict(anatomy)
    for name in ("gm", "wm", "csf", "strip"):
        moved[name] = np.zeros(MNI_SHAPE, anatomy[name].dtype)
        moved[name].flat[idx] = ndi.map_coordinates(anatomy[name], points, order=int(name != "strip"), prefilter=False)
    return moved


def generate_longitudinal_pair(*, seed: int, profile: str = "standard", spacing: Sequence[float] | None = None,
                               t1ce: bool = False, misregistration_mm: float = 1.0) -> tuple[Case, Case, np.ndarray]:
    """Baseline and follow-up scans of one subject with new, enlarging and shrinking lesions.

    Introduced in notebook 01; used for change detection. The follow-up head sits slightly
    differently (a rigid shift of ``misregistration_mm`` and a rotation under a degree), as
    in a real second visit, so a naive subtraction shows edges: register first.

    Returns
    -------
    baseline, followup : Case
        Each with its own lesion mask on its own (misregistered) position.
    change_mask : uint8 array
        On the baseline grid: voxels of new or enlarged lesions (follow-up lesion and not
        baseline lesion, lesions placed where they truly are relative to the baseline anatomy).
    """
    seed, spacing = _check_seed(seed), _check_options(profile, spacing)
    if not np.isfinite(misregistration_mm) or misregistration_mm < 0:
        raise MSToolkitInputError(f"'misregistration_mm' must be a non-negative number, got {misregistration_mm!r}.")
    anatomy, lesions, rng = _scene(seed)
    change_rng = np.random.default_rng(np.random.SeedSequence([seed, 2]))
    # About 12 % of lesion parts grow, 12 % shrink, the rest stay; 1 + Poisson(1.5) new lesions.
    factors = np.ones(len(lesions))
    roll = change_rng.random(len(lesions))
    factors[roll < 0.12] = change_rng.uniform(1.2, 1.5, int((roll < 0.12).sum()))
    shrink = (roll >= 0.12) & (roll < 0.24)
    factors[shrink] = change_rng.uniform(0.6, 0.85, int(shrink.sum()))
    followup = [_Lesion(les.centre, les.axes * f, les.rotation, les.waves, les.zone, les.kind, les.brightness)
                for les, f in zip(lesions, factors)]
    new = _sample_lesions(change_rng, anatomy, n_lesions=1 + int(change_rng.poisson(1.5)))
    followup += new
    evolution = {"new": len(new), "enlarging": int((factors > 1).sum()), "shrinking": int((factors < 1).sum())}
    direction = change_rng.standard_normal(3)
    rigid = (_rotation(change_rng.normal(0, np.radians(0.5), 3) * (misregistration_mm > 0)),
             direction / np.linalg.norm(direction) * misregistration_mm)
    sequences = ("FLAIR", "T1", "T2") + (("T1CE",) if t1ce else ())
    cases = []
    for session, lesion_set, frame in (("ses-01", lesions, None), ("ses-02", followup, rigid)):
        subject_anatomy = anatomy if frame is None else _move(anatomy, frame)
        fraction, owner = _rasterise(lesion_set, rigid=frame)
        tissue = _tissue_with_lesions(subject_anatomy, fraction)
        meta = _meta(seed, profile, lesion_set, anatomy) | {"session": session, "evolution": evolution}
        images = _render(rng, subject_anatomy, tissue, owner, lesion_set, sequences, profile)
        cases.append(_make_case(f"phantom-{seed}_{session}", images, *_masks(tissue), spacing, meta))
    true_followup = _tissue_with_lesions(anatomy, _rasterise(followup)[0])
    change = _masks(true_followup)[0]
    if spacing is not None:
        change = _resample(change, spacing)
    change_mask = ((change > 0.5) & (cases[0].mask == 0)).astype(np.uint8)
    return cases[0], cases[1], change_mask


# --------------------------------------------------------------------------- raw scan

# Head layers outside the brain (outer edge in mm from the brain's smooth hull) and their
# signal relative to white matter: CSF, inner table, diploe (marrow), outer table, scalp fat, skin.
_HEAD_LAYERS = ((1.5, "csf"), (3.0, 0.05), (6.0, {"FLAIR": 0.7, "T1": 0.9}), (7.5, 0.05),
                (12.0, {"FLAIR": 1.1, "T1": 1.35}), (14.0, {"FLAIR": 0.8, "T1": 0.6}))


def _head_depth(brain: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Signed distance (mm) from a smooth hull around the brain, with a wavy scalp."""
    coarse = brain[:180, :218, :180].reshape(90, 2, 109, 2, 90, 2).mean((1, 3, 5))
    hull = ndi.gaussian_filter(coarse, 2.0) > 0.3
    depth = (ndi.distance_transform_edt(~hull) - ndi.distance_transform_edt(hull)) * 2.0
    depth = ndi.zoom(depth.astype(np.float32), 2, order=1)
    depth = np.pad(depth, [(0, m - n) for m, n in zip(MNI_SHAPE, depth.shape)], mode="edge")
    return depth + _smooth_field(rng, 15.0, 0.8)


def generate_raw_scan(*, seed: int, profile: str = "standard", spacing: Sequence[float] = (1.0, 1.0, 3.0),
                      tilt_degrees: float = 8.0) -> dict:
    """The same subject as :func:`generate_subject` ``(seed=seed)``, as it leaves the scanner.

    Introduced in notebook 02 (preprocessing): skull and scalp on, a strong bias field,
    thick 2D-FLAIR-like slices, the head tilted by about ``tilt_degrees`` and shifted, and the
    voxel axes stored in LPS order (as DICOM converters often write them). Preprocessing
    (reorient, N4, skull strip, register to MNI) should bring it back to the clean subject.

    Returns
    -------
    dict
        ``images`` ({"FLAIR", "T1"}: float32 arrays in the on-disk LPS voxel order),
        ``affine`` (voxel -> world mm, LPS axes), ``mask`` and ``brain_mask`` (uint8, same grid),
        ``spacing``, ``orientation`` ("LPS"), ``seed``, ``profile``.
    """
    seed, spacing = _check_seed(seed), _check_options(profile, spacing)
    anatomy, lesions, rng = _scene(seed)
    fraction, owner = _rasterise(lesions)
    tissue = _tissue_with_lesions(anatomy, fraction)
    images = _render(rng, anatomy, tissue, owner, lesions, ("FLAIR", "T1"), profile, clean=True)
    lesion, brain = _masks(tissue)
    tissue_fraction = _masks(tissue, stripped=False)[1]
    depth = _head_depth(tissue_fraction, rng)
    outside = 1.0 - tissue_fraction
    for seq, image in images.items():
        wm = _MEANS[seq]["wm"] * PROFILES[profile]["scale"]
        head = np.zeros(MNI_SHAPE, np.float32)
        for edge, value in reversed(_HEAD_LAYERS):
            level = _MEANS[seq]["csf"] / _MEANS[seq]["wm"] if value == "csf" else value
            head[depth < edge] = (level[seq] if isinstance(level, dict) else level) * wm
        images[seq] = image + outside * ndi.gaussian_filter(head, 0.7)
    # The scanner's grid: LPS axis order, thick slices, the head tilted and off-centre.
    spacing = np.asarray(spacing)
    fov = np.array([200.0, 240.0, 180.0])
    shape = tuple(round(n) for n in fov / spacing)
    rotation = _rotation(np.radians([rng.normal(tilt_degrees, 2.0), rng.normal(0, 2.0), rng.normal(0, 2.0)]))
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(spacing * np.array([-1, -1, 1]))
    affine[:3, 3] = np.array([0.0, -18.0, 12.0]) + rng.normal(0, 3.0, 3) - affine[:3, :3] @ (np.array(shape) - 1) / 2
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")).reshape(3, -1)
    to_mni = np.linalg.inv(MNI_AFFINE) @ affine
    points = to_mni[:3, :3].astype(np.float32) @ grid + to_mni[:3, 3:].astype(np.float32)

    def acquire(volume: np.ndarray) -> np.ndarray:
        blurred = ndi.gaussian_filter1d(volume, spacing[2] / 2.355 * 1.3, axis=2) if spacing[2] > 1 else volume
        return ndi.map_coordinates(blurred, points, order=1, prefilter=False).reshape(shape)

    settings = PROFILES[profile]
    unit = np.stack(np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in shape], indexing="ij"))
    raw = {}
    for seq, image in images.items():
        slope = rng.normal(0, 0.25, 3).astype(np.float32)  # receive-coil bias: smooth, strong
        bias = np.exp(np.tensordot(slope, unit, axes=1) - 0.15 * (unit**2).sum(axis=0))
        sigma = _MEANS[seq]["wm"] * settings["scale"] / settings["snr"]
        raw[seq] = _rician(rng, acquire(image) * bias, sigma).astype(np.float32)
    return {"images": raw, "affine": affine, "mask": (acquire(lesion) > 0.5).astype(np.uint8),
            "brain_mask": (acquire(brain) > 0.5).astype(np.uint8), "spacing": tuple(float(s) for s in spacing),
            "orientation": "LPS", "seed": seed, "profile": profile}


# --------------------------------------------------------------------------- dataset on disk


def raw_paths(data_dir: str | os.PathLike, subject: str, session: str | None = None) -> dict[str, Path]:
    """Where the "raw" scan of a subject lives: the BIDS names with ``acq-raw`` added.

    >>> raw_paths("data", "sub-001")["FLAIR"].name
    'sub-001_acq-raw_FLAIR.nii.gz'
    """
    from .datasets import bids_paths

    stem = subject if session is None else f"{subject}_{session}"
    paths = bids_paths(data_dir, subject, session)
    return {key: paths[key].with_name(paths[key].name.replace(f"{stem}_", f"{stem}_acq-raw_", 1))
            for key in ("FLAIR", "T1", "mask", "brain_mask")}


def _save_image(path: Path, image: np.ndarray, affine: np.ndarray) -> None:
    # Whole numbers in int16, as scanners store them: a third of the size of float32 on disk.
    save_image(path, np.rint(np.clip(image, 0, 32767)), affine, dtype=np.int16)


def _save_case(case: Case, paths: dict[str, Path]) -> None:
    for seq, image in case.images.items():
        _save_image(paths[seq], image, case.affine)
    save_mask(paths["mask"], case.mask, case.affine)
    save_mask(paths["brain_mask"], case.brain_mask, case.affine)


def _subject_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def generate_dataset(out_dir: str | os.PathLike, *, n_subjects: int, seed: int, longitudinal: bool = False,
                     profile: str | None = None, spacing: Sequence[float] | None = None, t1ce: bool = False,
                     raw: bool = False, progress: bool = True) -> Path:
    """Write a phantom dataset in the BIDS-like layout of ARCHITECTURE.md.

    Introduced in notebook 01 (data loading); notebooks call it through
    :func:`mstoolkit.datasets.ensure_phantom`.

    Parameters
    ----------
    out_dir : path
        A new (or empty) folder. It is built in a temporary folder beside it and renamed at
        the end, so an interrupted run never leaves a half-written dataset.
    n_subjects, seed : int, keyword-only
        Subject ``i`` (1-based) uses the seed ``SeedSequence([seed, i])``, listed in participants.tsv.
    longitudinal : bool
        Two sessions per subject (``ses-01``, ``ses-02``) and a change mask per subject.
    profile : str, optional
        One scanner profile for all subjects; default None cycles through :data:`PROFILES`.
    spacing, t1ce
        As in :func:`generate_subject`.
    raw : bool
        Also write the "raw" scan of :func:`generate_raw_scan` (files ``*_acq-raw_*``).
    """
    from tqdm.auto import tqdm

    from .datasets import bids_paths

    if isinstance(n_subjects, bool) or not isinstance(n_subjects, (int, np.integer)) or n_subjects < 1:
        raise MSToolkitInputError(f"'n_subjects' must be an integer >= 1, got {n_subjects!r}.")
    seed = _check_seed(seed)
    for name in [profile] if profile is not None else []:
        _check_options(name, None)
    spacing = _check_options("standard", spacing)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MSToolkitInputError(f"'{out}' already exists and is not an empty folder; choose a new output folder.")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out.name}-", dir=out.parent))
    cached_before = _template.cache_info().currsize > 0
    rows = []
    try:
        for i in tqdm(range(1, n_subjects + 1), desc="phantom", unit="subject", disable=not progress):
            subject, subject_seed = f"sub-{i:03d}", _subject_seed(seed, i)
            chosen = profile or list(PROFILES)[(i - 1) % len(PROFILES)]
            row = {"participant_id": subject, "profile": chosen, "seed": subject_seed,
                   "spacing_mm": "x".join(f"{s:g}" for s in (spacing or (1, 1, 1)))}
            options = {"seed": subject_seed, "profile": chosen, "spacing": spacing, "t1ce": t1ce}
            if longitudinal:
                baseline, followup, change = generate_longitudinal_pair(**options)
                _save_case(baseline, bids_paths(tmp, subject, "ses-01"))
                _save_case(followup, bids_paths(tmp, subject, "ses-02"))
                save_mask(tmp / subject / f"{subject}_label-change_mask.nii.gz", change, baseline.affine)
                evolution = baseline.meta["evolution"]
                row.update(n_lesions=baseline.meta["n_lesions"], lesion_volume_ml=baseline.meta["lesion_volume_ml"],
                           n_lesions_followup=followup.meta["n_lesions"],
                           lesion_volume_ml_followup=followup.meta["lesion_volume_ml"],
                           n_new=evolution["new"], n_enlarging=evolution["enlarging"],
                           n_shrinking=evolution["shrinking"],
                           change_volume_ml=round(float(change.sum()) * float(np.prod(baseline.spacing)) / 1000, 3))
            else:
                case = generate_subject(**options)
                _save_case(case, bids_paths(tmp, subject))
                row.update(n_lesions=case.meta["n_lesions"], lesion_volume_ml=case.meta["lesion_volume_ml"])
            if raw:
                scan = generate_raw_scan(seed=subject_seed, profile=chosen)
                paths = raw_paths(tmp, subject, "ses-01" if longitudinal else None)
                for seq, image in scan["images"].items():
                    _save_image(paths[seq], image, scan["affine"])
                save_mask(paths["mask"], scan["mask"], scan["affine"])
                save_mask(paths["brain_mask"], scan["brain_mask"], scan["affine"])
            rows.append(row)
        _write_tables(tmp, rows, seed=seed, longitudinal=longitudinal, raw=raw)
        if not cached_before:  # give the ~400 MB of cached maps back (notebooks train next)
            _template.cache_clear()
            _noise_volume.cache_clear()
        tmp.chmod(0o755)  # mkdtemp makes it private; a dataset is meant to be shared
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_tables(folder: Path, rows: list[dict], *, seed: int, longitudinal: bool, raw: bool) -> None:
    columns = list(rows[0])
    lines = ["\t".join(columns)] + ["\t".join(str(row[c]) for c in columns) for row in rows]
    (folder / "participants.tsv").write_text("\n".join(lines) + "\n")
    description = {
        "Name": "mstoolkit synthetic MS phantom",
        "BIDSVersion": "1.9.0",
        "DatasetType": "raw",
        "GeneratedBy": [{"Name": "mstoolkit.phantom", "Version": __version__}],
        "generator": "mstoolkit.phantom.generate_dataset",
        "version": __version__,
        "seed": seed,
        "n_subjects": len(rows),
        "longitudinal": longitudinal,
        "raw_scans": raw,
        "space": "MNI152 (FSL 1 mm grid, 182x218x182), RAS+",
        "License": ("Synthetic images derived from the MNI ICBM 152 2009a nonlinear symmetric templates, "
                    "Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, Montreal "
                    "Neurological Institute, McGill University; use, copying and distribution permitted "
                    "provided this copyright notice is kept (see nilearn's dataset description). "
                    "Lesion statistics were fitted to the open_ms_data consensus masks (CC-BY)."),
        "References": ["Fonov et al. (2011) NeuroImage 54:313-327; Fonov et al. (2009) NeuroImage 47:S102",
                       "Lesjak et al. (2018) Neuroinformatics 16:51-63 (lesion statistics)"],
    }
    (folder / "dataset_description.json").write_text(json.dumps(description, indent=2) + "\n")


def cli_phantom(args: argparse.Namespace) -> int:
    """``mstoolkit data phantom``: write a phantom dataset and print a one-line summary."""
    start = time.perf_counter()
    out = generate_dataset(args.out, n_subjects=args.n, seed=args.seed, longitudinal=args.longitudinal,
                           profile=args.profile, spacing=args.spacing, t1ce=args.t1ce, raw=args.raw)
    rows = [line.split("\t") for line in (out / "participants.tsv").read_text().splitlines()]
    table = [dict(zip(rows[0], row)) for row in rows[1:]]
    lesions = sum(int(r["n_lesions"]) for r in table)
    volume = sum(float(r["lesion_volume_ml"]) for r in table)
    kind = "longitudinal subjects" if args.longitudinal else "subjects"
    print(f"Wrote {len(table)} {kind} ({lesions} lesions, {volume:.1f} mL in total) to {out} "
          f"in {time.perf_counter() - start:.1f} s.")
    return 0
