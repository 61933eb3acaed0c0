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

The template anatomy lives in :mod:`mstoolkit.phantom.anatomy`, the lesion model in
:mod:`mstoolkit.phantom.lesions`; :mod:`mstoolkit.phantom.dataset` writes whole datasets.

Introduced in notebook 01 (data loading); notebook 02 uses the "raw" scan.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

from mstoolkit import __version__
from mstoolkit.data.io import Case, MSToolkitInputError
from mstoolkit.phantom.anatomy import (
    MNI_AFFINE,
    MNI_CENTRE_VOXEL,
    MNI_SHAPE,
    individual_anatomy,
    load_template,
    noise_volume,
    rotation_matrix,
    smooth_field,
)
from mstoolkit.phantom.lesions import (
    MAX_LESION_COUNT,
    OvoidLesion,
    check_real_mask_name,
    rasterise_lesions,
    real_mask_lesions,
    sample_lesions,
)

__all__ = [
    "PROFILES",
    "clear_cache",
    "generate_longitudinal_pair",
    "generate_raw_scan",
    "generate_subject",
]

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


# --------------------------------------------------------------------------- images


def _tissue_with_lesions(anatomy: dict, fraction: np.ndarray) -> dict:
    """Per-voxel (domain) tissue fractions once lesions replace white (then grey) matter."""
    idx = load_template()["domain"]
    gm, wm, csf = (anatomy[k].flat[idx] for k in ("gm", "wm", "csf"))
    strip = anatomy["strip"].flat[idx]
    lesion = fraction.flat[idx] * np.clip(wm + 0.7 * gm, 0.0, 1.0) * strip
    from_wm = np.minimum(wm, lesion)
    return {"gm": gm - (lesion - from_wm), "wm": wm - from_wm, "csf": csf, "lesion": lesion, "strip": strip}


def _render(rng: np.random.Generator, anatomy: dict, tissue: dict, owner: np.ndarray, lesions: Sequence[OvoidLesion],
            sequences: Sequence[str], profile: str, *, clean: bool = False) -> dict[str, np.ndarray]:
    """Contrast mixture and texture, then (unless ``clean``) thick slices, bias field,
    Rician noise and skull stripping, for each sequence."""
    idx = load_template()["domain"]
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
            signal = volume.flat[inside] * np.exp(smooth_field(rng, 60.0, settings["bias"]).flat[inside])
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


def check_phantom_options(profile: str, spacing: Sequence[float] | None) -> tuple[float, float, float] | None:
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


def _scene(seed: int, *, n_lesions: int | None = None, real_lesions: str | None = None
           ) -> tuple[dict, list[OvoidLesion], tuple[np.ndarray, np.ndarray] | None, np.random.Generator]:
    """Anatomy and lesions of subject ``seed``; rendering gets its own stream, so a profile
    changes how the subject looks, never the subject itself. Real lesions come already
    placed (fraction, owner); drawn ones are rasterised by the caller (maybe moved)."""
    anatomy_rng, lesion_rng, render_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
    anatomy = individual_anatomy(anatomy_rng)
    if real_lesions is not None:
        lesions, fraction, owner = real_mask_lesions(real_lesions, anatomy, lesion_rng)
        return anatomy, lesions, (fraction, owner), render_rng
    return anatomy, sample_lesions(lesion_rng, anatomy, n_lesions=n_lesions), None, render_rng


def check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise MSToolkitInputError(f"'seed' must be a non-negative integer, got {seed!r}.")
    return int(seed)


def generate_subject(*, seed: int, profile: str = "standard", spacing: Sequence[float] | None = None,
                     t1ce: bool = False, n_lesions: int | None = None, real_lesions: str | None = None,
                     case_id: str | None = None) -> Case:
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
    real_lesions : str, optional
        Instead of drawing ovoid lesions, carry the lesions of a real patient's consensus mask
        into this subject's anatomy, e.g. ``"patient01"`` (one of
        :data:`mstoolkit.phantom.lesions.REAL_LESION_MASKS`,
        shipped with the package: open_ms_data, Lesjak et al. 2018, CC-BY; cite it). The seed
        still decides the anatomy, a left-right mirror and each lesion's kind and brightness.

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
    seed, spacing = check_seed(seed), check_phantom_options(profile, spacing)
    if n_lesions is not None and (isinstance(n_lesions, bool) or not isinstance(n_lesions, (int, np.integer))
                                  or not 0 <= n_lesions <= MAX_LESION_COUNT):
        raise MSToolkitInputError(f"'n_lesions' must be an integer from 0 to {MAX_LESION_COUNT} (or None), got {n_lesions!r}.")
    if real_lesions is not None:
        check_real_mask_name(real_lesions)
        if n_lesions is not None:
            raise MSToolkitInputError("Give 'n_lesions' or 'real_lesions', not both: a real mask brings its own lesions.")
    anatomy, lesions, placed, rng = _scene(seed, n_lesions=n_lesions, real_lesions=real_lesions)
    fraction, owner = placed or rasterise_lesions(lesions)
    tissue = _tissue_with_lesions(anatomy, fraction)
    sequences = ("FLAIR", "T1", "T2") + (("T1CE",) if t1ce else ())
    images = _render(rng, anatomy, tissue, owner, lesions, sequences, profile)
    meta = _meta(seed, profile, lesions, anatomy) | ({"real_lesions": real_lesions} if real_lesions else {})
    return _make_case(case_id or f"phantom-{seed}", images, *_masks(tissue), spacing, meta)


def _masks(tissue: dict, *, stripped: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Lesion and brain fractions as volumes; the brain without the outer CSF rim if ``stripped``."""
    idx = load_template()["domain"]
    lesion, brain = np.zeros(MNI_SHAPE, np.float32), np.zeros(MNI_SHAPE, np.float32)
    lesion.flat[idx] = tissue["lesion"]
    brain.flat[idx] = (tissue["gm"] + tissue["wm"] + tissue["csf"] + tissue["lesion"]) * (tissue["strip"] if stripped else 1)
    return lesion, brain


def _meta(seed: int, profile: str, lesions: Sequence[OvoidLesion], anatomy: dict) -> dict:
    drawn = [{"zone": les.zone, "kind": les.kind, "centre_voxel": [round(float(c), 1) for c in les.centre],
              "volume_mm3": round(float(4 / 3 * np.pi * np.prod(les.axes)), 1)} for les in lesions]
    return {"generator": f"mstoolkit.phantom.generator {__version__}", "seed": seed, "profile": profile,
            "atrophy": round(anatomy["atrophy"], 3), "lesions": drawn}


def _move(anatomy: dict, rigid: tuple[np.ndarray, np.ndarray]) -> dict:
    """Resample the anatomy maps in a frame moved by ``rigid`` (the follow-up's head position)."""
    idx = load_template()["domain"]
    rot, shift = rigid
    origin = MNI_CENTRE_VOXEL[:, None]
    vox = np.stack(np.unravel_index(idx, MNI_SHAPE)).astype(float)
    points = (rot @ (vox - origin) + origin + shift[:, None]).astype(np.float32)
    moved = dict(anatomy)
    for name in ("gm", "wm", "csf", "strip"):
        moved[name] = np.zeros(MNI_SHAPE, anatomy[name].dtype)
        moved[name].flat[idx] = ndi.map_coordinates(anatomy[name], points, order=int(name != "strip"), prefilter=False)
    return moved


def generate_longitudinal_pair(*, seed: int, profile: str = "standard", spacing: Sequence[float] | None = None,
                               t1ce: bool = False, misregistration_mm: float = 1.0,
                               followup_profile: str | None = None) -> tuple[Case, Case, np.ndarray]:
    """Baseline and follow-up scans of one subject with new, enlarging and shrinking lesions.

    Introduced in notebook 01; used for change detection. The follow-up head sits slightly
    differently (a rigid shift of ``misregistration_mm`` and a rotation under a degree), as
    in a real second visit, so a naive subtraction shows edges: register first.
    ``followup_profile`` renders the follow-up with another scanner profile (a scanner or
    protocol change between visits); by default both visits use ``profile``.

    Returns
    -------
    baseline, followup : Case
        Each with its own lesion mask on its own (misregistered) position.
    change_mask : uint8 array
        On the baseline grid: voxels of new or enlarged lesions (follow-up lesion and not
        baseline lesion, lesions placed where they truly are relative to the baseline anatomy).
    """
    seed, spacing = check_seed(seed), check_phantom_options(profile, spacing)
    followup_profile = profile if followup_profile is None else followup_profile
    check_phantom_options(followup_profile, spacing)
    if not np.isfinite(misregistration_mm) or misregistration_mm < 0:
        raise MSToolkitInputError(f"'misregistration_mm' must be a non-negative number, got {misregistration_mm!r}.")
    anatomy, lesions, _, rng = _scene(seed)
    change_rng = np.random.default_rng(np.random.SeedSequence([seed, 2]))
    # About 12 % of lesion parts grow, 12 % shrink, the rest stay; 1 + Poisson(1.5) new lesions.
    factors = np.ones(len(lesions))
    roll = change_rng.random(len(lesions))
    factors[roll < 0.12] = change_rng.uniform(1.2, 1.5, int((roll < 0.12).sum()))
    shrink = (roll >= 0.12) & (roll < 0.24)
    factors[shrink] = change_rng.uniform(0.6, 0.85, int(shrink.sum()))
    followup = [OvoidLesion(les.centre, les.axes * f, les.rotation, les.waves, les.zone, les.kind, les.brightness)
                for les, f in zip(lesions, factors)]
    new = sample_lesions(change_rng, anatomy, n_lesions=1 + int(change_rng.poisson(1.5)))
    followup += new
    evolution = {"new": len(new), "enlarging": int((factors > 1).sum()), "shrinking": int((factors < 1).sum())}
    direction = change_rng.standard_normal(3)
    rigid = (rotation_matrix(change_rng.normal(0, np.radians(0.5), 3) * (misregistration_mm > 0)),
             direction / np.linalg.norm(direction) * misregistration_mm)
    sequences = ("FLAIR", "T1", "T2") + (("T1CE",) if t1ce else ())
    cases = []
    for session, lesion_set, frame, session_profile in (("ses-01", lesions, None, profile),
                                                        ("ses-02", followup, rigid, followup_profile)):
        subject_anatomy = anatomy if frame is None else _move(anatomy, frame)
        fraction, owner = rasterise_lesions(lesion_set, rigid=frame)
        tissue = _tissue_with_lesions(subject_anatomy, fraction)
        meta = _meta(seed, session_profile, lesion_set, anatomy) | {"session": session, "evolution": evolution}
        images = _render(rng, subject_anatomy, tissue, owner, lesion_set, sequences, session_profile)
        cases.append(_make_case(f"phantom-{seed}_{session}", images, *_masks(tissue), spacing, meta))
    true_followup = _tissue_with_lesions(anatomy, rasterise_lesions(followup)[0])
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
    return depth + smooth_field(rng, 15.0, 0.8)


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
    seed, spacing = check_seed(seed), check_phantom_options(profile, spacing)
    anatomy, lesions, _, rng = _scene(seed)
    fraction, owner = rasterise_lesions(lesions)
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
    rotation = rotation_matrix(np.radians([rng.normal(tilt_degrees, 2.0), rng.normal(0, 2.0), rng.normal(0, 2.0)]))
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


def clear_cache() -> None:
    """Free the templates and noise volumes kept for fast generation (about 400 MB).

    The next subject loads them again (a few seconds). Notebooks call this after
    generating, before training, to stay within 2 GB.
    """
    from mstoolkit.runtime import release_memory

    load_template.cache_clear()
    noise_volume.cache_clear()
    release_memory()

