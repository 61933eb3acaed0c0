"""The phantom's lesion model: counts, sizes, places and shapes fitted to real consensus masks.

Each lesion is an ovoid with an irregular border (a few random waves on its surface).
How many lesions a subject has, and how large they are, follow lognormal fits to the 28
consensus masks of the real ``open_ms_data`` sample (Lesjak et al. 2018); their centres
fall in the zones of :mod:`mstoolkit.phantom.anatomy` with the real masks' shares.
Periventricular lesions point away from the ventricles (Dawson's fingers), large plaques
are several overlapping ovoids along the ventricle wall, and some lesions are T1 black
holes or enhance with gadolinium. :func:`rasterise_lesions` turns the drawn lesions into
partial-volume fractions on the MNI grid.

Ovoids are still ovoids: real lesions are more varied, and many are tiny. So a subject can
instead carry the lesions of one real consensus mask shipped in ``real_lesions/``
(:data:`REAL_LESION_MASKS`), carried into its own anatomy by :func:`real_mask_lesions`.

Part of the phantom of notebook 01 (data loading): :mod:`mstoolkit.phantom.generator` draws and
renders these lesions for every subject; nothing here is called from the notebooks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mstoolkit.data.io import MSToolkitInputError
from mstoolkit.phantom.anatomy import (
    HEAD_SCALE,
    LESION_ZONES,
    MNI_AFFINE,
    MNI_CENTRE_VOXEL,
    MNI_SHAPE,
    load_template,
)

__all__ = ["REAL_LESION_DIR", "REAL_LESION_MASKS"]

#: Where the real masks are (``patientNN.nii.gz``, with a README that cites them).
REAL_LESION_DIR = Path(__file__).parent / "real_lesions"

#: The real consensus masks shipped in ``mstoolkit/phantom/real_lesions/`` (open_ms_data, Lesjak et al.
#: 2018, CC-BY), split once by patient number: ``heldout`` (multiples of 4) only for choosing
#: models, ``train`` for training. patient26, the real evaluation case, is not shipped.
REAL_LESION_MASKS: dict[str, tuple[str, ...]] = {
    "train": tuple(f"patient{n:02d}" for n in (1, 2, 3, 5, 6, 9, 10, 11, 13, 14, 15, 17, 18, 21, 22, 23, 25, 27, 29, 30)),
    "heldout": tuple(f"patient{n:02d}" for n in (4, 8, 12, 16, 20, 24, 28)),
}

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
MAX_LESION_COUNT, _MAX_VOLUME = 400, 40000.0


@dataclass
class OvoidLesion:
    """One ovoid lesion in the subject's frame (output voxel = mm coordinates)."""

    centre: np.ndarray  # (3,) voxel coordinates
    axes: np.ndarray  # (3,) semi-axes in mm
    rotation: np.ndarray  # (3, 3) columns = ovoid axes; the first is the long one
    waves: np.ndarray  # (k, 5) border irregularity: direction (3), phase, amplitude
    zone: str
    kind: str  # "lesion", "black_hole" or "enhancing"
    brightness: float  # per-lesion intensity factor


def _zone_of(points: np.ndarray) -> list[str]:
    """Zone name of each (n, 3) voxel point of the MNI grid ("outside" outside the brain)."""
    t = load_template()
    idx = np.clip((np.asarray(points) // 2).astype(int), 0, np.array(t["zone"].shape) - 1)
    labels = t["zone"][idx[:, 0], idx[:, 1], idx[:, 2]]
    return [(("outside",) + LESION_ZONES)[int(k)] for k in labels]



# --------------------------------------------------------------------------- lesions


def _lesion_volume(rng: np.random.Generator) -> float:
    if rng.random() < _PLAQUE_SHARE:
        return float(np.clip(np.exp(rng.normal(*_PLAQUE_LOGNORMAL)), 1500.0, _MAX_VOLUME))
    weights, means, sds = np.array(_VOLUME_MIXTURE).T
    k = rng.choice(len(weights), p=weights / weights.sum())
    return float(np.clip(np.exp(rng.normal(means[k], sds[k])), 1.0, 1500.0))


def _lesion_kind(rng: np.random.Generator, volume: float) -> str:
    """"lesion", "black_hole" (T1-dark, mostly larger lesions) or "enhancing" (gadolinium)."""
    kind = "black_hole" if rng.random() < (0.35 if volume > 100 else 0.05) else "lesion"
    return "enhancing" if kind == "lesion" and volume > 20 and rng.random() < 0.1 else kind


def _frame(direction: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Orthonormal axes whose first column is ``direction``."""
    helper = rng.standard_normal(3)
    if np.linalg.norm(direction) < 0.5:  # no preferred direction (e.g. exactly at the ventricle wall)
        direction = helper / np.linalg.norm(helper)
        helper = rng.standard_normal(3)
    second = np.cross(direction, helper)
    second /= np.linalg.norm(second)
    return np.stack([direction, second, np.cross(direction, second)], axis=1)


def sample_lesions(rng: np.random.Generator, anatomy: dict, *, n_lesions: int | None = None) -> list[OvoidLesion]:
    """Draw lesion count, sizes, zones, shapes and kinds (fitted to real masks, see top)."""
    t = load_template()
    if n_lesions is None:
        n_lesions = int(np.clip(round(np.exp(rng.normal(*_COUNT_LOGNORMAL))), 1, MAX_LESION_COUNT))
    wm = anatomy["wm"].flat[t["domain"]]
    candidates = {z: np.flatnonzero((anatomy["zone"] == k + 1) & (wm > 0.6)) for k, z in enumerate(LESION_ZONES)}
    weights = np.array([_ZONE_WEIGHTS[z] for z in LESION_ZONES])
    lesions: list[OvoidLesion] = []
    for _ in range(n_lesions):
        lesions += _one_lesion(rng, anatomy, candidates, weights / weights.sum())
    return lesions


def _one_lesion(rng: np.random.Generator, anatomy: dict, candidates: dict, weights: np.ndarray) -> list[OvoidLesion]:
    t = load_template()
    volume = _lesion_volume(rng)
    zone = "periventricular" if volume > 1500 else str(rng.choice(LESION_ZONES, p=weights))
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
    kind = _lesion_kind(rng, volume)
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
        parts.append(OvoidLesion(centre + offset, axes, rotation, waves, zone, kind, brightness))
    return parts


def check_real_mask_name(name: object) -> None:
    names = REAL_LESION_MASKS["train"] + REAL_LESION_MASKS["heldout"]
    if name not in names:
        raise MSToolkitInputError(f"Unknown real lesion mask {name!r}; allowed: {', '.join(names)} "
                                  "(patient26 is kept out: it is the reference model's real test case).")


def _real_mask(name: str) -> np.ndarray:
    """A shipped real consensus mask as a boolean array on the phantom's RAS grid."""
    import nibabel as nib

    image = nib.as_closest_canonical(nib.load(REAL_LESION_DIR / f"{name}.nii.gz"))
    if image.shape != MNI_SHAPE or not np.allclose(image.affine, MNI_AFFINE):  # a damaged installation
        raise MSToolkitInputError(f"The shipped mask {name} is not on the MNI grid; reinstall mstoolkit.")
    return np.asarray(image.dataobj) > 0


def real_mask_lesions(name: str, anatomy: dict, rng: np.random.Generator) -> tuple[list[OvoidLesion], np.ndarray, np.ndarray]:
    """The lesions of real mask ``name`` carried into this subject's anatomy (randomly mirrored).

    Returns the lesions (one per connected component, with a kind and brightness drawn as for
    ovoids), the lesion fraction and the index+1 of each voxel's lesion, like :func:`rasterise_lesions`.
    """
    import cc3d
    from scipy import ndimage as ndi

    mask = _real_mask(name)
    if rng.random() < 0.5:  # left-right mirror: the MNI template is symmetric, so this is another plausible patient
        mask = mask[::-1]
    components = cc3d.connected_components(mask, connectivity=26)
    # The subject's anatomy maps each of its voxels to template coordinates; real MNI-registered
    # brains are smaller than the template by HEAD_SCALE, so shrink back by that much.
    # Lesions then follow this subject's warp and stay where they were relative to its ventricles.
    centre = MNI_CENTRE_VOXEL.astype(np.float32)[:, None]
    points = centre + HEAD_SCALE * (anatomy["coords"] - centre)
    idx = load_template()["domain"]
    fraction, owner = np.zeros(MNI_SHAPE, np.float32), np.zeros(MNI_SHAPE, np.int16)
    fraction.flat[idx] = ndi.map_coordinates(mask.astype(np.float32), points, order=1, prefilter=False)
    owner.flat[idx] = ndi.map_coordinates(components, points, order=0, prefilter=False)
    lesions = []
    centroids = ndi.center_of_mass(mask, components, range(1, int(components.max()) + 1))
    volumes = np.bincount(components.ravel())[1:]
    for centroid, volume in zip(centroids, volumes):
        kind = _lesion_kind(rng, volume)
        radius = (3 * volume / (4 * np.pi)) ** (1 / 3)  # the ovoid of the same volume (used for enhancing rings)
        centroid = np.array(centroid)
        lesions.append(OvoidLesion(centroid, np.full(3, radius), np.eye(3), np.zeros((0, 5)), _zone_of(centroid[None])[0],
                               kind, float(rng.normal(1.0, 0.07))))
    return lesions, fraction, owner


def rasterise_lesions(lesions: Sequence[OvoidLesion], *, rigid: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Lesion fraction (partial volume, max over lesions) and index+1 of the dominant lesion.

    ``rigid = (R, t)`` rasterises them in a frame moved by ``p = R (x - c) + c + t``.
    """
    fraction = np.zeros(MNI_SHAPE, np.float32)
    owner = np.zeros(MNI_SHAPE, np.int16)
    origin = MNI_CENTRE_VOXEL
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
