"""The structured report: where the lesions are (McDonald 2017 areas), dissemination in space and time, lesion load.

A radiologist reporting an MS scan says how many T2-hyperintense lesions there are, how large
they are, and **where**: the 2017 McDonald criteria (Thompson et al., Lancet Neurol
2018;17:162–173) count the areas of the central nervous system that hold at least one lesion.

* **Dissemination in space (DIS)**: ≥ 1 T2-hyperintense lesion in ≥ 2 of 4 areas:
  periventricular, cortical or juxtacortical, infratentorial, spinal cord. A brain scan
  cannot see the spinal cord, so this report states it as "not imaged".
* **Dissemination in time (DIT)**: a new T2-hyperintense or gadolinium-enhancing lesion on a
  follow-up MRI compared with a baseline scan, irrespective of the timing of the baseline; or
  the simultaneous presence of enhancing and non-enhancing lesions on one scan (that route
  needs a post-contrast analysis, which this toolkit does not do).

MRI alone never makes the diagnosis: the criteria apply to a patient with a typical clinical
syndrome (such as optic neuritis or a brainstem or spinal cord syndrome) for whom there is no
better explanation. Research software: not for clinical use.

**Where a lesion is** comes from anatomy in MNI space. The subject's scan is registered to the
MNI152 2009 template (affine, :func:`mstoolkit.preprocessing.registration.register`); the
template's ventricles, cortex and infratentorial region (brainstem and cerebellum, derived
from nilearn's MNI152 2009 maps as the phantom does, :func:`mstoolkit.phantom.anatomy.load_template`)
are carried onto the subject's grid (nearest neighbour), and each lesion (a 26-connected
component) is classified by the MAGNIMS 2016 definitions (Filippi et al., Lancet Neurol
2016;15:292–303: periventricular and juxtacortical lesions *touch* the ventricles or the
cortex, with no white matter in between) with this rule:

    a lesion whose 1-voxel dilation overlaps a structure touches it; the first match wins in
    the order infratentorial, periventricular, cortical/juxtacortical; a lesion that touches
    none is "deep white matter" (not a McDonald area).

Infratentorial comes first because a brainstem lesion may touch the fourth ventricle and a
cerebellar one the cerebellar cortex, and MAGNIMS counts both as infratentorial.
Periventricular comes before cortical because a lesion reaching from the ventricle to the
cortex (a confluent one) is counted once, in the area that is the hallmark of MS. An affine
registration to an average brain is approximate, so a lesion within a few mm of a boundary
may be misplaced: check the locations on the images.

**Lesion load** is compared with the open_ms_data cross-sectional cohort (Lesjak et al.,
Neuroinformatics 16, 51–63, 2018, CC-BY): 28 MS patients' consensus masks in MNI space.
That cohort is **MS patients, not healthy norms**: the percentile says where the subject lies
among MS patients. Brains differ in size, so volumes are compared in template space: the
subject's volume times the determinant of its subject→MNI affine, and the cohort's volumes
carried into the same template space (``data_download/build_lesion_load_table.py``).

Used by ``mstoolkit study`` (the DICOM pipeline) and notebook 08.
"""

from __future__ import annotations

import base64
import csv
import html
import io
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from mstoolkit.data.io import MSToolkitInputError, check_binary_mask, check_mask_shape, spacing_from_affine, write_atomic
from mstoolkit.phantom.anatomy import MNI_AFFINE, MNI_SHAPE, load_template
from mstoolkit.preprocessing.preprocess import load_mni_template
from mstoolkit.preprocessing.registration import register, resample_to_reference
from mstoolkit.segmentation.inference import lesion_report

__all__ = ["MCDONALD_AREAS", "DEEP_WHITE_MATTER", "LOCATION_RULE", "COHORT_TABLE", "RESEARCH_WARNING", "mni_anatomy",
           "register_to_mni", "lesion_locations", "dissemination_in_space", "dissemination_in_time", "load_cohort_table",
           "lesion_load_percentile", "build_report", "model_card_limitations", "write_report_html"]

#: The McDonald 2017 areas a brain MRI can show (the fourth, the spinal cord, needs a spine scan).
MCDONALD_AREAS = ("periventricular", "cortical_juxtacortical", "infratentorial")
#: The location of a lesion in none of the McDonald areas.
DEEP_WHITE_MATTER = "deep_white_matter"
#: How a lesion's location is decided (printed in every report).
LOCATION_RULE = ("A lesion whose 1-voxel dilation overlaps a structure (template anatomy carried onto the scan by an "
                 "affine registration to MNI152 2009) touches it; the first match wins in the order infratentorial "
                 "(brainstem, cerebellum), periventricular (lateral and third ventricles), cortical/juxtacortical (cortex); "
                 "a lesion touching none is deep white matter. Definitions: MAGNIMS 2016 (Filippi et al., Lancet Neurol "
                 "2016;15:292-303) and McDonald 2017 (Thompson et al., Lancet Neurol 2018;17:162-173).")
#: The shipped lesion-load table of the open_ms_data cohort (built by data_download/build_lesion_load_table.py).
#: It is derived data, so it lives here and not in data/sample_data/, which holds upstream files byte for byte.
COHORT_TABLE = Path(__file__).resolve().parent / "reference" / "open_ms_data_lesion_load.csv"
RESEARCH_WARNING = "Research software: not for clinical use."
MCDONALD_2017 = ("McDonald 2017 (Thompson et al., Lancet Neurol 2018;17:162-173): dissemination in space needs >= 1 "
                 "T2-hyperintense lesion in >= 2 of 4 areas: periventricular, cortical or juxtacortical, infratentorial, spinal cord.")
DIAGNOSIS_NOTE = ("The criteria apply only to a patient with a typical clinical syndrome and no better explanation; "
                  "MRI alone never makes the diagnosis of MS.")
COHORT_CITATION = ("Lesjak Z, Galimzianova A, Koren A, Lukin M, Pernus F, Likar B, Spiclin Z. A novel public MR image dataset "
                   "of multiple sclerosis patients with lesion segmentations based on multi-rater consensus. "
                   "Neuroinformatics 16, 51-63 (2018). CC-BY.")
SEQUENCES = ("FLAIR", "T1", "T1CE", "T2")
# Below this Dice of the subject's brain (in MNI space) with the template's, the locations are not trusted.
POOR_REGISTRATION = 0.8
# Fallback when the model card is not beside the package (an installed wheel has no MODEL_CARD.md).
LIMITATIONS_SUMMARY = ("Trained on a synthetic phantom and evaluated on one real scan: expect lower accuracy on real data. "
                       "Small lesions are often missed; bright non-lesion FLAIR regions can be false positives. Needs FLAIR "
                       "and T1, skull-stripped and co-registered; spinal cord and paediatric scans were not tested. "
                       "Check every output visually.")


# --------------------------------------------------------------------------- anatomy and registration


@lru_cache(maxsize=1)
def mni_anatomy() -> dict[str, np.ndarray]:
    """Ventricles, cortex, infratentorial region and brain as bool masks on the 1 mm MNI grid (``MNI_AFFINE``).

    Derived from the phantom's template maps the way :func:`mstoolkit.phantom.anatomy.load_template`
    derives its lesion zones, at 1 mm instead of 2: ventricles are CSF deep inside the brain near
    the midline, the cortex is grey matter near the brain's surface (which leaves out the deep
    grey nuclei), and the infratentorial region is the brainstem and cerebellum, below and behind
    the tentorium. Cached per process.
    """
    was_cached = load_template.cache_info().currsize > 0
    template = load_template()
    brain = template["brain"] > 0.5
    csf = np.clip(template["brain"] - template["gm"] - template["wm"], 0.0, 1.0)
    depth = ndi.distance_transform_edt(brain)  # mm from the brain's surface (1 mm voxels)
    x, y, z = (np.arange(n, dtype=np.float32)[tuple(slice(None) if k == axis else None for k in range(3))] + MNI_AFFINE[axis, 3]
               for axis, n in enumerate(MNI_SHAPE))
    ventricles = (csf > 0.5) & (depth > 14) & (np.abs(x) < 30)
    cortex = (template["gm"] > 0.4) & (depth < 12)
    infratentorial = brain & (((y < -35) & (z < -12 - 0.35 * np.maximum(np.abs(x) - 10, 0))) | ((np.abs(x) < 14) & (y < -8) & (z < -14)))
    if not was_cached:  # keep four masks (30 MB), not the phantom's maps (about 800 MB) it was built from
        load_template.cache_clear()
    return {"ventricles": ventricles, "cortex": cortex, "infratentorial": infratentorial, "brain": brain}


def register_to_mni(image: np.ndarray, affine: np.ndarray, *, brain_mask: np.ndarray | None = None,
                    working_spacing: float = 2.0, iterations: int = 100) -> dict:
    """Affine registration of a skull-stripped scan to the MNI152 2009 template, with a quality figure.

    Returns ``{"to_mni": 4x4 list (subject world mm -> MNI world mm), "quality": float, "quality_measure": str,
    "warning": str | None, "mni_volume_scale": float}``. Quality is the Dice overlap of the subject's brain
    (``brain_mask``, or the non-zero voxels of a skull-stripped ``image``) carried into MNI space with the
    template's brain mask: unlike an intensity correlation it does not depend on the contrast (a FLAIR
    against a T1 template). Below 0.8 the report warns. ``mni_volume_scale`` is the determinant of the
    transform's linear part: a volume in the subject's space times it is the volume in template space.
    """
    template, template_mask, template_affine = load_mni_template(resolution=2)
    brain = (np.asarray(image) > 0) if brain_mask is None else check_binary_mask(check_mask_shape(brain_mask, image.shape, "brain_mask"), "brain_mask") > 0
    if not brain.any():
        raise MSToolkitInputError("the image is empty (no brain voxels): pass the FLAIR (or T1) of the study, skull-stripped, or a brain_mask.")
    # The template is brain only: a skull around the subject's brain would pull the registration outwards.
    moving = np.where(brain, image, 0).astype(np.float32)
    to_mni = register(moving, affine, template, template_affine, kind="affine", reference_mask=template_mask,
                      working_spacing=working_spacing, iterations=iterations, initial_scales=(1.0, 1.2))
    brain_in_mni = resample_to_reference(brain.astype(np.uint8), affine, template.shape, template_affine, transform=to_mni, is_mask=True)
    overlap = 2.0 * float(np.logical_and(brain_in_mni, template_mask).sum()) / float(brain_in_mni.sum() + template_mask.sum())
    warning = None
    if overlap < POOR_REGISTRATION:
        warning = (f"Registration to MNI is poor (brain overlap Dice {overlap:.2f} < {POOR_REGISTRATION}): lesion locations and the "
                   "MNI-space volume are unreliable. Check that the scan is skull-stripped and covers the whole brain.")
    return {"to_mni": np.round(to_mni, 6).tolist(), "quality": round(overlap, 4),
            "quality_measure": "Dice of the subject's brain in MNI space with the MNI152 2009 template's brain mask",
            "warning": warning, "mni_volume_scale": round(float(abs(np.linalg.det(to_mni[:3, :3]))), 6)}


def lesion_locations(mask: np.ndarray, affine: np.ndarray, anatomy_image: np.ndarray, *, brain_mask: np.ndarray | None = None,
                     sequence: str = "FLAIR", to_mni: np.ndarray | None = None, working_spacing: float = 2.0,
                     iterations: int = 100) -> tuple[np.ndarray, list[str], dict]:
    """Lesion labels, the location of each lesion (McDonald area or deep white matter), and the registration.

    Parameters
    ----------
    mask : binary lesion mask on the grid of ``anatomy_image``
    affine : their voxel -> world matrix
    anatomy_image : the scan registered to MNI (skull-stripped FLAIR or T1)
    brain_mask : optional brain mask on the same grid (else the image's non-zero voxels)
    sequence : which sequence ``anatomy_image`` is (recorded in the registration info)
    to_mni : optional subject -> MNI world transform already computed (skips the registration)
    working_spacing, iterations : registration settings (:func:`register_to_mni`)

    Returns
    -------
    labels : int32 array, lesion ``k`` is label ``k``: the 26-connected components ordered by volume,
        largest first (the order of :func:`mstoolkit.segmentation.inference.lesion_report`)
    locations : one name per lesion (index 0 = lesion 1), from :data:`MCDONALD_AREAS` or ``"deep_white_matter"``
    registration : ``{"to_mni", "quality", "warning", "mni_volume_scale", ...}`` (:func:`register_to_mni`)

    The rule is :data:`LOCATION_RULE` (module docstring).
    """
    import cc3d

    if sequence not in SEQUENCES:
        raise MSToolkitInputError(f"'sequence' must be one of {', '.join(SEQUENCES)}, got {sequence!r}.")
    anatomy_image = np.asarray(anatomy_image)
    if anatomy_image.ndim != 3:
        raise MSToolkitInputError(f"'anatomy_image' must be a 3D image, got shape {anatomy_image.shape}.")
    mask = check_binary_mask(check_mask_shape(mask, anatomy_image.shape, "mask"), "mask")
    if to_mni is None:
        registration = register_to_mni(anatomy_image, affine, brain_mask=brain_mask, working_spacing=working_spacing, iterations=iterations)
    else:
        to_mni = np.asarray(to_mni, dtype=float)
        registration = {"to_mni": np.round(to_mni, 6).tolist(), "quality": None, "quality_measure": "transform given, not measured",
                        "warning": None, "mni_volume_scale": round(float(abs(np.linalg.det(to_mni[:3, :3]))), 6)}
    registration["sequence"] = sequence

    components = cc3d.connected_components(mask.astype(np.uint8), connectivity=26).astype(np.int32)
    n = int(components.max())
    # Renumber by volume, largest first; a stable sort keeps lesion_report's order for equal volumes.
    counts = np.bincount(components.ravel(), minlength=n + 1)
    order = np.argsort(-counts[1:], kind="stable") + 1
    renumber = np.zeros(n + 1, np.int32)
    renumber[order] = np.arange(1, n + 1, dtype=np.int32)
    labels = renumber[components]
    if n == 0:
        return labels, [], registration

    # Anatomy onto the subject's grid (MNI world -> subject world is the inverse transform).
    from_mni = np.linalg.inv(np.asarray(registration["to_mni"], dtype=float))
    touches = {}
    for name in ("infratentorial", "ventricles", "cortex"):
        structure = resample_to_reference(mni_anatomy()[name].astype(np.uint8), MNI_AFFINE, anatomy_image.shape, affine,
                                          transform=from_mni, is_mask=True).astype(bool)
        # Dilating the structure by one voxel and asking which lesions overlap it is the same as
        # dilating each lesion, in one pass for all lesions.
        near = ndi.binary_dilation(structure, structure=np.ones((3, 3, 3), bool))
        touches[name] = np.bincount(labels[near], minlength=n + 1) > 0
    locations = []
    for lesion in range(1, n + 1):
        if touches["infratentorial"][lesion]:
            locations.append("infratentorial")
        elif touches["ventricles"][lesion]:
            locations.append("periventricular")
        elif touches["cortex"][lesion]:
            locations.append("cortical_juxtacortical")
        else:
            locations.append(DEEP_WHITE_MATTER)
    return labels, locations, registration


# --------------------------------------------------------------------------- McDonald 2017


def dissemination_in_space(location_counts: Mapping[str, int]) -> dict:
    """Dissemination in space by McDonald 2017 from lesion counts per area (spinal cord: not imaged).

    ``location_counts`` maps area names (:data:`MCDONALD_AREAS`; others, such as deep white matter, are
    ignored) to lesion counts. Met when >= 2 of the 4 areas hold a lesion. Returns
    ``{"met", "areas", "reason", "criteria", "note"}``.

    >>> dissemination_in_space({"periventricular": 3, "infratentorial": 1})["met"]
    True
    """
    for area, count in location_counts.items():
        if not isinstance(count, (int, np.integer)) or count < 0:
            raise MSToolkitInputError(f"lesion count of {area!r} must be a whole number >= 0, got {count!r}.")
    areas = [area for area in MCDONALD_AREAS if location_counts.get(area, 0) > 0]
    shown = ", ".join(area.replace("_", "/") for area in areas) or "none"
    if len(areas) >= 2:
        reason = f"{len(areas)} of 4 areas hold >= 1 T2-hyperintense lesion ({shown}); the spinal cord was not imaged."
    else:
        reason = (f"only {len(areas)} of 4 areas holds a lesion ({shown}); 2 are needed. The spinal cord was not imaged: "
                  "a cord lesion on a spine MRI could still fulfil dissemination in space.")
    return {"met": len(areas) >= 2, "areas": areas, "spinal_cord": "not imaged", "reason": reason, "criteria": MCDONALD_2017,
            "note": DIAGNOSIS_NOTE}


def dissemination_in_time(new_lesions: int, enlarging_lesions: int) -> dict:
    """Dissemination in time by McDonald 2017 from a follow-up compared with its baseline scan.

    Met when the follow-up shows >= 1 new T2-hyperintense lesion (irrespective of the timing of the
    baseline). Enlarging lesions are reported but do not count: the 2017 criteria name new lesions
    only. The other route (enhancing and non-enhancing lesions at the same time) needs a
    post-contrast analysis the toolkit does not do. Returns ``{"met", "new_lesions",
    "enlarging_lesions", "reason", "criteria", "note"}``.

    >>> dissemination_in_time(1, 0)["met"]
    True
    """
    for name, value in (("new_lesions", new_lesions), ("enlarging_lesions", enlarging_lesions)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise MSToolkitInputError(f"'{name}' must be a whole number >= 0, got {value!r}.")
    met = new_lesions >= 1
    if met:
        reason = f"{new_lesions} new T2-hyperintense lesion(s) on the follow-up compared with the baseline scan."
    else:
        reason = "no new T2-hyperintense lesion on the follow-up compared with the baseline scan"
        reason += f" ({enlarging_lesions} enlarging, which do not count)." if enlarging_lesions else "."
    return {"met": met, "new_lesions": int(new_lesions), "enlarging_lesions": int(enlarging_lesions), "reason": reason,
            "criteria": ("McDonald 2017 (Thompson et al., Lancet Neurol 2018;17:162-173): a new T2-hyperintense or gadolinium-"
                         "enhancing lesion on follow-up MRI, with reference to a baseline scan, irrespective of its timing; or "
                         "enhancing and non-enhancing lesions at the same time."),
            "note": ("Not assessed: gadolinium enhancement (the simultaneous enhancing and non-enhancing route needs a "
                     "post-contrast analysis this toolkit does not do). " + DIAGNOSIS_NOTE)}


# --------------------------------------------------------------------------- lesion load


@lru_cache(maxsize=1)
def load_cohort_table() -> tuple[dict, ...]:
    """The shipped open_ms_data lesion-load table: one dict per patient (lines starting with ``#`` are comments)."""
    if not COHORT_TABLE.is_file():
        raise MSToolkitInputError(f"the cohort table {COHORT_TABLE} is missing: reinstall mstoolkit, or rebuild it with "
                                  "`python data_download/build_lesion_load_table.py`.")
    with open(COHORT_TABLE, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(line for line in handle if not line.startswith("#")))
    return tuple(rows)


def lesion_load_percentile(volume_ml_mni: float, *, sex: str | None = None) -> dict:
    """Where a lesion volume (mL, in MNI template space) lies among the 28 MS patients of open_ms_data.

    The percentile is the share of cohort patients with a smaller volume, ties counted half
    (``scipy.stats.percentileofscore(kind="mean")``): 0 below the smallest, 100 above the largest.
    The cohort is MS patients, not healthy people. With ``sex`` ("F" or "M", DICOM PatientSex) the
    result also holds the percentile among the cohort patients of that sex, and how many they are
    (MS is about three times as common in women, so the two groups differ in size); any other value
    (e.g. "O", unknown) gives no second figure. Age is not used: 28 patients are too few for bands.

    >>> lesion_load_percentile(0.0)["percentile"]
    0.0
    >>> same_sex = lesion_load_percentile(5.0, sex="F")["same_sex"]
    >>> same_sex["sex"], same_sex["cohort_size"] < 28
    ('F', True)
    """
    from scipy.stats import percentileofscore

    if not np.isfinite(volume_ml_mni) or volume_ml_mni < 0:
        raise MSToolkitInputError(f"'volume_ml_mni' must be a volume in mL >= 0, got {volume_ml_mni!r}.")
    table = load_cohort_table()
    cohort = np.array([float(row["lesion_volume_ml_mni"]) for row in table])
    same_sex = None
    if sex in ("F", "M"):
        group = np.array([float(row["lesion_volume_ml_mni"]) for row in table if row["sex"] == sex])
        same_sex = {"sex": sex, "cohort_size": int(group.size),
                    "percentile": round(float(percentileofscore(group, float(volume_ml_mni), kind="mean")), 1)}
    return {"percentile": round(float(percentileofscore(cohort, float(volume_ml_mni), kind="mean")), 1),
            "same_sex": same_sex,
            "cohort_size": int(cohort.size), "volume_ml_mni": round(float(volume_ml_mni), 3),
            "cohort_median_ml_mni": round(float(np.median(cohort)), 3),
            "cohort": ("open_ms_data cross-sectional cohort: 28 MS patients (patients 07 and 19 have no consensus mask), "
                       "consensus lesion masks of 3 raters. These are MS patients, not healthy norms: the percentile says "
                       "where this lesion load lies among people with MS."),
            "uses": "the lesion volume in MNI template space (native volume x determinant of the subject->MNI affine)",
            "citation": COHORT_CITATION}


# --------------------------------------------------------------------------- report.json


def build_report(mask: np.ndarray, probability: np.ndarray, affine: np.ndarray, flair: np.ndarray, *,
                 brain_mask: np.ndarray | None = None, changes: Mapping | None = None, model: Mapping | None = None,
                 to_mni: np.ndarray | None = None, working_spacing: float = 2.0, iterations: int = 100,
                 patient_sex: str | None = None) -> dict:
    """The whole report.json content of one study (lesions, McDonald areas, DIS, DIT with a prior, lesion load).

    ``patient_sex`` (DICOM PatientSex) adds the lesion-load percentile among patients of that sex.

    ``changes``, when the study has a prior, is ``{"new_lesions": int, "enlarging_lesions": int,
    "shrinking_lesions": int, ...}`` from :mod:`mstoolkit.longitudinal.change`: passed through, and
    dissemination in time derived from it. ``model`` (name, version, threshold, ...) is passed through.
    ``to_mni``, ``working_spacing``, ``iterations``: see :func:`lesion_locations`.
    """
    flair = np.asarray(flair)
    mask = check_binary_mask(check_mask_shape(mask, flair.shape, "mask"), "mask")
    probability = np.asarray(probability, dtype=np.float32)
    if probability.shape != flair.shape:
        raise MSToolkitInputError(f"'probability' has shape {probability.shape} but the FLAIR has {flair.shape}; pass both on one grid.")
    lesions = lesion_report(probability, mask, affine)
    labels, locations, registration = lesion_locations(mask, affine, flair, brain_mask=brain_mask, to_mni=to_mni,
                                                       working_spacing=working_spacing, iterations=iterations)
    del labels
    rows = [{**row, "location": location} for row, location in zip(lesions["lesions"], locations)]
    counts = {area: locations.count(area) for area in (*MCDONALD_AREAS, DEEP_WHITE_MATTER)}
    volume_ml = lesions["total_volume_ml"]
    volume_ml_mni = volume_ml * registration["mni_volume_scale"]
    warnings = [registration["warning"]] if registration["warning"] else []
    report: dict[str, Any] = {
        "disclaimer": RESEARCH_WARNING + " " + DIAGNOSIS_NOTE,
        "lesion_count": lesions["lesion_count"],
        "total_lesion_volume_ml": round(volume_ml, 3),
        "total_lesion_volume_ml_mni": round(volume_ml_mni, 3),
        "voxel_spacing_mm": [round(s, 4) for s in spacing_from_affine(affine)],
        "lesions": rows,
        "locations": {**counts, "spinal_cord": "not imaged"},
        "location_rule": LOCATION_RULE,
        "registration": registration,
        "dissemination_in_space": dissemination_in_space({area: counts[area] for area in MCDONALD_AREAS}),
        "lesion_load": lesion_load_percentile(volume_ml_mni, sex=patient_sex),
    }
    if changes is not None:
        for key in ("new_lesions", "enlarging_lesions"):
            if key not in changes:
                raise MSToolkitInputError(f"'changes' has no {key!r}: pass the result of the longitudinal comparison.")
        report["changes"] = dict(changes)
        report["new_lesions"] = int(changes["new_lesions"])
        report["enlarging_lesions"] = int(changes["enlarging_lesions"])
        report["dissemination_in_time"] = dissemination_in_time(int(changes["new_lesions"]), int(changes["enlarging_lesions"]))
        if changes.get("warning"):  # e.g. prior and current acquired with different protocols
            warnings.append(str(changes["warning"]))
    else:
        report["dissemination_in_time"] = {"met": None, "reason": "not assessed: no prior scan to compare with.",
                                           "note": "Dissemination in time needs a follow-up compared with a baseline scan."}
    if model is not None:
        report["model"] = dict(model)
    report["warnings"] = warnings
    report["references"] = [MCDONALD_2017.split(":")[0], "MAGNIMS 2016 (Filippi et al., Lancet Neurol 2016;15:292-303)", COHORT_CITATION]
    return report


# --------------------------------------------------------------------------- report.html


def model_card_limitations() -> str:
    """The "## Limitations" section of MODEL_CARD.md when it sits beside the package (a source checkout), else a short summary."""
    card = Path(__file__).resolve().parents[2] / "MODEL_CARD.md"
    if card.is_file():
        text = card.read_text(encoding="utf-8")
        if "## Limitations" in text:
            section = text.split("## Limitations", 1)[1].split("\n## ", 1)[0].strip()
            if section:
                return section
    return LIMITATIONS_SUMMARY


def key_slices(mask: np.ndarray, n: int = 3) -> list[int]:
    """The ``n`` axial slices with the most lesion voxels, from bottom to top (the middle slice when there are none)."""
    per_slice = np.count_nonzero(np.asarray(mask).reshape(-1, mask.shape[2]), axis=0).astype(np.int64)
    if not per_slice.any():
        return [mask.shape[2] // 2]
    busiest = np.argsort(-per_slice, kind="stable")[:n]
    return sorted(int(z) for z in busiest if per_slice[z] > 0)


def slice_png(flair: np.ndarray, mask: np.ndarray, affine: np.ndarray, index: int) -> str:
    """One axial slice, bare and with the lesion overlay (radiological convention), as base64 PNG text."""
    from mstoolkit.display.plots import overlay_figure

    figure = overlay_figure(flair, mask.astype(np.float32), plane="axial", index=index, spacing=spacing_from_affine(affine),
                            title=f"FLAIR and lesion mask, axial slice {index}")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def table(header: list[str], rows: list[list[Any]]) -> str:
    """An HTML table; every cell is escaped."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def yes_no(value: Any) -> str:
    """A criterion's result in words: yes, no, or not assessed (None)."""
    return {True: "yes", False: "no", None: "not assessed"}.get(value, str(value))


def write_report_html(report: Mapping, flair: np.ndarray, mask: np.ndarray, affine: np.ndarray, path, *,
                      limitations: str | None = None) -> Path:
    """Write report.html: one self-contained page (images inline as base64 PNG, nothing loaded from elsewhere).

    It shows the research-use warning, the key axial slices (the three with the most lesion voxels)
    with the lesion overlay, the tables of lesions, McDonald areas, DIS/DIT and lesion load, any
    warnings, and the model's limitations (``limitations``, else :func:`model_card_limitations`).
    Every text is escaped. The file is written atomically; its folder must exist.
    """
    flair = np.asarray(flair)
    mask = check_binary_mask(check_mask_shape(mask, flair.shape, "mask"), "mask")
    path = Path(path)
    if not path.parent.is_dir():
        raise MSToolkitInputError(f"the folder {path.parent} does not exist: create it first or choose another path.")
    for key in ("lesions", "locations", "dissemination_in_space", "dissemination_in_time", "lesion_load"):
        if key not in report:
            raise MSToolkitInputError(f"the report has no {key!r}: pass the result of build_report().")
    text = limitations if limitations is not None else model_card_limitations()
    esc = html.escape
    images = "".join(f'<img alt="axial slice {z}" src="data:image/png;base64,{slice_png(flair, mask, affine, z)}">' for z in key_slices(mask))
    lesion_rows = [[row["id"], row["volume_mm3"], ", ".join(f"{c:.1f}" for c in row["centroid_mm"]), row.get("max_probability", ""),
                    row["location"].replace("_", " ")] for row in report["lesions"]]
    locations = report["locations"]
    area_rows = [[area.replace("_", " / " if area == "cortical_juxtacortical" else " "), locations.get(area, 0)] for area in MCDONALD_AREAS]
    area_rows += [["spinal cord", locations.get("spinal_cord", "not imaged")],
                  ["deep white matter (not a McDonald area)", locations.get(DEEP_WHITE_MATTER, 0)]]
    dis, dit, load = report["dissemination_in_space"], report["dissemination_in_time"], report["lesion_load"]
    criteria_rows = [["dissemination in space", yes_no(dis["met"]), dis["reason"]],
                     ["dissemination in time", yes_no(dit["met"]), dit["reason"] + " " + dit.get("note", "")]]
    load_rows = [["lesion count", report.get("lesion_count", len(report["lesions"]))],
                 ["total lesion volume, native (mL)", report.get("total_lesion_volume_ml", "")],
                 ["total lesion volume, MNI template space (mL)", report.get("total_lesion_volume_ml_mni", "")],
                 ["percentile among MS patients (uses the MNI-space volume)", load["percentile"]],
                 ["cohort size", load["cohort_size"]]]
    if load.get("same_sex"):
        load_rows.append([f"percentile among the {load['same_sex']['cohort_size']} patients of sex {load['same_sex']['sex']}",
                          load["same_sex"]["percentile"]])
    registration = report.get("registration", {})
    warnings = [RESEARCH_WARNING] + list(report.get("warnings", []))
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>MS lesion report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:auto}} table{{border-collapse:collapse;margin:0.5em 0}}
td,th{{border:1px solid #999;padding:2px 8px;text-align:left}} .warning{{background:#D55E00;color:white;font-size:1.4em;padding:0.5em}}
img{{max-width:100%}}</style></head><body>
<div class="warning"><strong>{esc(RESEARCH_WARNING)}</strong></div>
<h1>MS lesion report</h1>
{"".join(f'<p class="warning">{esc(w)}</p>' for w in warnings[1:])}
<p>{esc(report.get("disclaimer", DIAGNOSIS_NOTE))}</p>
<h2>Key slices</h2>{images}
<h2>Lesions</h2>{table(["id", "volume (mm³)", "centroid (world mm, RAS)", "max probability", "location"], lesion_rows)}
<p>{esc(report.get("location_rule", LOCATION_RULE))}</p>
<p>Registration to MNI: quality {esc(str(registration.get("quality")))} ({esc(str(registration.get("quality_measure", "")))}).</p>
<h2>McDonald 2017 areas</h2>{table(["area", "lesions"], area_rows)}
<h2>Dissemination in space and time</h2>{table(["criterion", "met", "why"], criteria_rows)}
<p>{esc(dis["criteria"])} {esc(dis["note"])}</p>
<h2>Lesion load</h2>{table(["measure", "value"], load_rows)}
<p>{esc(load["cohort"])} Percentile: {esc(load["uses"])}. Data: {esc(load["citation"])}</p>
<h2>Model</h2>{table(["field", "value"], [[k, v] for k, v in report.get("model", {}).items()])}
<h2>Limitations</h2><pre>{esc(text)}</pre>
</body></html>
"""
    return write_atomic(path, page)
