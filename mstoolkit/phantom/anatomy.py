"""The phantom's anatomy: the MNI152 2009 templates, lesion zones, and one individual brain per seed.

The templates ship inside nilearn's wheel (T1, grey and white matter at 1 mm). They are
cropped to the FSL MNI152 1 mm grid (:data:`MNI_SHAPE`, :data:`MNI_AFFINE`, RAS+: the grid
of the real ``open_ms_data`` MNI sample), the sulci that averaging blurred away are given
back to CSF, and the brain is divided into the zones where MS puts lesions
(periventricular, juxtacortical, deep white matter, infratentorial). Each subject deforms
the template (a small affine plus a smooth random warp) and sharpens it into its own grey
matter, white matter and CSF, with its own sulci and ventricle size.

Part of the phantom of notebook 01 (data loading): :mod:`mstoolkit.phantom.generator` builds every
subject on this anatomy, :mod:`mstoolkit.phantom.lesions` places the lesions in its zones.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

__all__ = ["MNI_AFFINE", "MNI_SHAPE"]

#: The FSL MNI152 1 mm grid (RAS+) of the real open_ms_data MNI sample.
MNI_SHAPE = (182, 218, 182)
MNI_AFFINE = np.array([[1.0, 0, 0, -91], [0, 1, 0, -126], [0, 0, 1, -72], [0, 0, 0, 1]])

# Centre of the head on the grid (voxels): each subject's pose and size vary about this point.
MNI_CENTRE_VOXEL = np.array([91.0, 108.0, 90.0])
# Mean head size relative to the template: the real MNI-registered sample (affine registration)
# keeps brains ~9 % smaller than the template.
HEAD_SCALE = 0.91

# Lesion zones, in the order of their labels in the template's zone map (0 = outside the brain).
LESION_ZONES = ("periventricular", "juxtacortical", "deep", "infratentorial")


# --------------------------------------------------------------------------- template


def _template_dir() -> Path:
    import nilearn.datasets

    return Path(nilearn.datasets.__file__).parent / "data"


@lru_cache(maxsize=1)
def load_template() -> dict:
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
    def down(a: np.ndarray) -> np.ndarray:  # 1 mm → 2 mm by averaging 2×2×2 blocks
        return a[: 2 * 91, : 2 * 109, : 2 * 91].reshape(91, 2, 109, 2, 91, 2).mean((1, 3, 5))

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
    candidates = {name: np.flatnonzero((zone == k + 1) & (wm2 > 0.65)) for k, name in enumerate(LESION_ZONES)}
    domain = np.flatnonzero(domain).astype(np.int32)
    voxels = np.stack(np.unravel_index(domain, MNI_SHAPE))
    padded = np.ravel_multi_index(tuple(voxels), tuple(n + _NOISE_MARGIN for n in MNI_SHAPE)).astype(np.int32)
    return {"gm": gm, "wm": wm, "brain": brain, "strip": strip, "zone": zone, "candidates": candidates,
            "away": away.astype(np.float32), "domain": domain, "voxels": voxels.astype(np.float32),
            "padded_domain": padded}



# --------------------------------------------------------------------------- anatomy


def smooth_field(rng: np.random.Generator, step_mm: float, amplitude: float) -> np.ndarray:
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


def rotation_matrix(angles: Sequence[float]) -> np.ndarray:
    """Rotation matrix from three small angles (radians) about x, y, z."""
    from scipy.spatial.transform import Rotation

    return Rotation.from_euler("xyz", angles).as_matrix()


def individual_anatomy(rng: np.random.Generator) -> dict:
    """One individual brain: deformed, sharpened GM/WM/CSF fractions on the MNI grid."""
    t = load_template()
    idx, vox = t["domain"], t["voxels"]
    centre = MNI_CENTRE_VOXEL.astype(np.float32)[:, None]
    # Output voxel -> template voxel: a small affine (head size and pose) plus a smooth warp.
    scale = rng.normal(HEAD_SCALE, 0.04) * rng.normal(1.0, 0.02, 3)
    matrix = (rotation_matrix(rng.normal(0, np.radians(2.0), 3)) @ np.diag(1.0 / scale)).astype(np.float32)
    coords = matrix @ (vox - centre)
    coords += centre + rng.normal(0, 1.5, (3, 1)).astype(np.float32)
    for axis in range(3):
        coords[axis] += smooth_field(rng, 18.0, 2.0).ravel()[idx]
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
    t = load_template()
    volume = noise_volume(scale)
    offset = rng.integers(0, _NOISE_MARGIN, 3)
    flat = int(np.ravel_multi_index(tuple(offset), volume.shape))
    return volume.ravel()[t["padded_domain"] + flat]


_NOISE_MARGIN = 40


@lru_cache(maxsize=2)
def noise_volume(scale: str) -> np.ndarray:
    sigma = {"fine": 0.8, "coarse": 2.0}[scale]
    rng = np.random.default_rng(20091)
    shape = tuple(n + _NOISE_MARGIN for n in MNI_SHAPE)
    volume = ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma)
    return volume / volume.std()
