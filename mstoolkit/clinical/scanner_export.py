"""Scanner-like DICOM studies for tests and teaching: ``mstoolkit data dicom``.

What arrives from a hospital is not a tidy folder of NIfTI files named ``FLAIR.nii.gz``.
It is a CD or a PACS export: nested folders with opaque names, one file per slice, a
localizer, diffusion series, a T1 before and after gadolinium that carry the same
protocol name, and a README.TXT that is not DICOM at all. Which series is the FLAIR has
to be read from the headers: the names a vendor gives its protocols, and the physics
behind them (DICOM PS3.3 C.8.3.1, MR Image Module: ScanningSequence ``SE\\IR`` with an
inversion time for FLAIR, ``GR\\IR`` for an MPRAGE-like T1, ``EP`` for diffusion;
C.7.6.1.1.2 ImageType, whose third value says LOCALIZER or, by vendor convention,
DIFFUSION/TRACEW/ADC; ContrastBolusAgent, C.7.6.4, for the scan after contrast).

:func:`write_teaching_studies` writes such exports from data the package ships:

- **phantom**: one synthetic patient with a prior and a current study
  (:func:`mstoolkit.phantom.generator.generate_longitudinal_pair`), the prior as from a GE
  scanner (2D axial FLAIR, thick slices), the current as from a Siemens scanner (3D sagittal
  FLAIR and MPRAGE), each with a three-plane localizer, T2, diffusion (trace and ADC) and a T1
  after contrast;
- **real**: open_ms_data patient26 (FLAIR, T1, T1 after gadolinium, T2; preprocessed, in MNI
  space) as one study, and longitudinal patient01 (two FLAIRs as acquired) as a prior and a
  current study, with Philips-style headers. The images are the published ones; the headers,
  dates, localizers and diffusion series are synthetic (made from the published images), as
  the published data carry no DICOM headers. Cite Lesjak et al., Neuroinformatics 2018
  (cross-sectional) and 2016 (longitudinal), CC-BY.

Patients are synthetic or pseudonymous (PatientIdentityRemoved ``YES``, PS3.15 Annex E,
with DeidentificationMethod naming the source). The answers (which series is which, the
lesion masks) go to ``OUT/truth/``, never into the DICOM folders, so the series
identification and the pipeline can be checked against them.

The vendor protocol names and parameters are typical of each vendor's brain protocols
(e.g. Siemens ``t2_spc_da-fl_sag_p2_iso``: SPACE dark-fluid, TR 5000 ms, TE 388 ms,
TI 1800 ms), not copies of any site's protocol.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from pydicom.uid import generate_uid

from mstoolkit.clinical.dicom_series import write_dicom_series
from mstoolkit.data.datasets import list_cases, real_longitudinal_patient, real_sample_dir
from mstoolkit.data.io import MSToolkitInputError, load_image, save_mask, write_atomic
from mstoolkit.phantom.generator import check_seed, generate_longitudinal_pair

__all__ = ["SOURCES", "PHANTOM_SPACING_MM", "VENDORS", "write_teaching_studies", "cli_data_dicom"]

#: What ``--source`` may name.
SOURCES = ("phantom", "real", "all")

#: The phantom's voxel size: 1.5 mm keeps the whole export to seconds (1 mm is four times the work).
PHANTOM_SPACING_MM = (1.5, 1.5, 1.5)

#: A 2D acquisition with thick slices is made by averaging this many phantom slices (4.5 mm).
THICK_SLICE_BLOCK = 3

#: Diffusion weighting of the DWI-like series (s/mm²).
B_VALUE = 1000.0

_SIEMENS_DWI = dict(description="ep2d_diff_3scan_trace_p2", tr=4000, te=89, scanning_sequence="EP",
                    sequence_variant="SK\\SP", mr_acquisition_type="2D", plane="ax",
                    image_type=("ORIGINAL", "PRIMARY", "DIFFUSION", "TRACEW", "ND", "NORM"),
                    extra={"SequenceName": "*ep_b1000t", "FlipAngle": "90"})

#: Header sets of three vendors, by role. Each entry holds keyword arguments of
#: :func:`~mstoolkit.clinical.dicom_series.write_dicom_series` and ``plane`` (how the series is
#: sliced: ``sag`` or ``ax``). ``T1CE`` is the T1 protocol run again after contrast: same
#: protocol name, ContrastBolusAgent set. GE writes the site's protocol (``MS BRAIN``) into
#: ProtocolName of every series and the sequence into SeriesDescription.
VENDORS: dict[str, dict] = {
    "siemens": {
        "manufacturer": "SIEMENS", "model_name": "Prisma", "magnetic_field_strength": 3.0,
        "software": "syngo MR XA30", "localizer_as": "one series", "contrast_agent": "Gadovist",
        "series": {
            "localizer": dict(description="localizer", tr=8.6, te=4.0, scanning_sequence="GR", sequence_variant="SP",
                              mr_acquisition_type="2D", image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
                              extra={"SequenceName": "*fl2d1", "FlipAngle": "20"}),
            "T2": dict(description="t2_tse_tra_p2", tr=6000, te=95, scanning_sequence="SE", sequence_variant="SK\\SP\\OSP",
                       mr_acquisition_type="2D", plane="ax", extra={"SequenceName": "*tse2d1_15", "FlipAngle": "150"}),
            "FLAIR": dict(description="t2_spc_da-fl_sag_p2_iso", tr=5000, te=388, ti=1800, scanning_sequence="SE\\IR",
                          sequence_variant="SK\\SP\\MP", mr_acquisition_type="3D", plane="sag",
                          extra={"SequenceName": "*spcir_278ns", "FlipAngle": "120"}),
            "DWI": _SIEMENS_DWI,
            "ADC": dict(_SIEMENS_DWI, description="ep2d_diff_3scan_trace_p2_ADC",
                        image_type=("DERIVED", "PRIMARY", "DIFFUSION", "ADC", "ND", "NORM")),
            "T1": dict(description="t1_mprage_sag_p2_iso", tr=2300, te=2.5, ti=900, scanning_sequence="GR\\IR",
                       sequence_variant="SK\\SP\\MP", mr_acquisition_type="3D", plane="sag",
                       extra={"SequenceName": "*tfl3d1_16ns", "FlipAngle": "8"}),
        },
    },
    "ge": {
        "manufacturer": "GE MEDICAL SYSTEMS", "model_name": "SIGNA Premier", "magnetic_field_strength": 3.0,
        "software": "29\\LX\\MR ABCD.0", "localizer_as": "three series", "contrast_agent": "Dotarem",
        "protocol": "MS BRAIN",
        "series": {
            "localizer": dict(description="3-Plane Loc", tr=5.0, te=1.6, scanning_sequence="GR", sequence_variant="SS",
                              mr_acquisition_type="2D", image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")),
            "T2": dict(description="Ax T2 FSE", tr=4500, te=102, scanning_sequence="SE", sequence_variant="SK",
                       mr_acquisition_type="2D", plane="ax"),
            "FLAIR": dict(description="Ax T2 FLAIR", tr=9000, te=141, ti=2250, scanning_sequence="SE\\IR",
                          sequence_variant="SK\\SP\\MP\\OSP", mr_acquisition_type="2D", plane="ax", thick=True),
            "DWI": dict(description="Ax DWI 1000b", tr=6000, te=75, scanning_sequence="EP\\SE", sequence_variant="SK",
                        mr_acquisition_type="2D", plane="ax", image_type=("ORIGINAL", "PRIMARY", "DIFFUSION", "TRACEW")),
            "ADC": dict(description="Apparent Diffusion Coefficient (mm2/s)", tr=6000, te=75, scanning_sequence="EP\\SE",
                        sequence_variant="SK", mr_acquisition_type="2D", plane="ax",
                        image_type=("DERIVED", "PRIMARY", "DIFFUSION", "ADC")),
            "T1": dict(description="Sag 3D BRAVO", tr=8.2, te=3.2, ti=450, scanning_sequence="GR\\IR",
                       sequence_variant="SS\\SK", mr_acquisition_type="3D", plane="sag", extra={"FlipAngle": "12"}),
        },
    },
    "philips": {
        "manufacturer": "Philips Medical Systems", "model_name": "Achieva", "magnetic_field_strength": 3.0,
        "software": "5.7.1\\5.7.1.2", "localizer_as": "one series", "contrast_agent": "Gadovist",
        "series": {
            "localizer": dict(description="Survey", tr=11, te=4.6, scanning_sequence="GR", sequence_variant="SP",
                              mr_acquisition_type="2D", image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")),
            "T2": dict(description="T2W_TSE", tr=3000, te=80, scanning_sequence="SE", sequence_variant="SK",
                       mr_acquisition_type="2D", plane="ax"),
            "FLAIR": dict(description="3D_Brain_VIEW_FLAIR", tr=4800, te=280, ti=1650, scanning_sequence="SE\\IR",
                          sequence_variant="SK\\MP", mr_acquisition_type="3D", plane="sag"),
            "FLAIR_2D": dict(description="T2W_FLAIR_tra", tr=11000, te=125, ti=2800, scanning_sequence="SE\\IR",
                             sequence_variant="SK\\MP", mr_acquisition_type="2D", plane="ax"),
            "DWI": dict(description="DWI_SSh", tr=4000, te=70, scanning_sequence="SE\\EP", sequence_variant="SK",
                        mr_acquisition_type="2D", plane="ax", image_type=("ORIGINAL", "PRIMARY", "DIFFUSION", "TRACEW")),
            "ADC": dict(description="dADC", tr=4000, te=70, scanning_sequence="SE\\EP", sequence_variant="SK",
                        mr_acquisition_type="2D", plane="ax", image_type=("DERIVED", "PRIMARY", "DIFFUSION", "ADC")),
            "T1": dict(description="T1W_3D_TFE", tr=8.1, te=3.7, scanning_sequence="GR", sequence_variant="SK\\SP\\MP",
                       mr_acquisition_type="3D", plane="sag", extra={"FlipAngle": "8"}),
        },
    },
}

#: Voxel axes of each plane as a scanner stores them (nibabel axis codes of rows, columns,
#: slices): axial images with the patient's left on the right of the screen and anterior up;
#: sagittal and coronal ones with superior up (DICOM PS3.3 C.7.6.2.1.1).
PLANE_AXES = {"ax": ("L", "P", "S"), "sag": ("P", "I", "L"), "cor": ("L", "I", "A")}

CITATION = """\
Lesjak Z, Galimzianova A, Koren A, Lukin M, Pernus F, Likar B, Spiclin Z. A novel public MR image
dataset of multiple sclerosis patients with lesion segmentations based on multi-rater consensus.
Neuroinformatics 16, 51-63 (2018). doi:10.1007/s12021-017-9348-7 (cross-sectional data, patient26)
Lesjak Z, Pernus F, Likar B, Spiclin Z. Validation of white-matter lesion change detection methods
on a novel publicly available MRI image database. Neuroinformatics 14, 403-420 (2016).
(longitudinal data, patient01)
Licence: Creative Commons Attribution (CC-BY). Repackaged by github.com/muschellij2/open_ms_data.
"""


# --------------------------------------------------------------------------- geometry helpers

def _reorient(image: np.ndarray, affine: np.ndarray, axcodes: tuple[str, str, str]) -> tuple[np.ndarray, np.ndarray]:
    """The same voxels with their axes permuted and flipped to ``axcodes`` (closest axes of an oblique grid)."""
    transform = nib.orientations.ornt_transform(nib.orientations.io_orientation(affine),
                                                nib.orientations.axcodes2ornt(axcodes))
    moved = nib.orientations.apply_orientation(image, transform)
    return moved, affine @ nib.orientations.inv_ornt_aff(transform, image.shape)


def _block_average(volume: np.ndarray, affine: np.ndarray, factors: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Average blocks of ``factors`` voxels: coarser voxels on the same field of view (a thick-slice
    or low-resolution acquisition); the edge that does not fill a block is dropped."""
    shape = [n // f * f for n, f in zip(volume.shape, factors)]
    cropped = np.asarray(volume, dtype=np.float32)[: shape[0], : shape[1], : shape[2]]
    blocks = cropped.reshape(shape[0] // factors[0], factors[0], shape[1] // factors[1], factors[1],
                             shape[2] // factors[2], factors[2]).mean(axis=(1, 3, 5))
    scale = np.diag([*factors, 1.0])
    scale[:3, 3] = (np.asarray(factors) - 1) / 2  # a block's centre, in old voxels
    return blocks, affine @ scale


def _spacing(affine: np.ndarray) -> np.ndarray:
    return np.linalg.norm(affine[:3, :3], axis=0)


def _localizer_planes(volume: np.ndarray, affine: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Three tiny slices in each of the three planes through the middle of ``volume`` (RAS+), about
    4 mm pixels and 15 mm apart, as a scout scan: sagittal, coronal, axial."""
    spacing = _spacing(affine)
    planes = []
    for axis, plane in ((0, "sag"), (1, "cor"), (2, "ax")):
        stride = np.maximum(1, np.rint(4.0 / spacing)).astype(int)
        gap = max(1, int(round(15.0 / spacing[axis])))
        first = volume.shape[axis] // 2 - gap
        stride[axis] = gap
        index = [slice(None, None, s) for s in stride]
        index[axis] = slice(first, first + 3 * gap, gap)
        scale = np.diag([*stride.astype(float), 1.0])
        scale[axis, 3] = first
        planes.append(_reorient(volume[tuple(index)], affine @ scale, PLANE_AXES[plane]))
    return planes


def _diffusion_like(t2: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A b=0 image, a b=1000 trace image and an ADC map made from a T2-weighted volume, on a 2 mm-ish,
    thick-slice grid. Water diffuses freely in CSF (bright on T2): a high ADC and a dark trace image,
    as S_b = S_0 · exp(-b · ADC) says (Le Bihan et al., Radiology 1986). A distractor, not physics."""
    factors = tuple(int(f) for f in np.maximum(1, np.rint(np.array([2.0, 2.0, 4.5]) / _spacing(affine))))
    b0, grid = _block_average(t2, affine, factors)
    bright = np.percentile(b0[b0 > 0], 99) if (b0 > 0).any() else 1.0
    adc = 0.0007 + 0.0023 * np.clip(b0 / bright, 0, 1)  # mm²/s: white matter ≈ 0.7e-3, CSF ≈ 3e-3
    trace = b0 * np.exp(-B_VALUE * adc)
    adc_map = np.where(b0 > 0.02 * bright, adc * 1e6, 0.0)  # stored in 1e-6 mm²/s, as scanners do
    return b0, trace, adc_map, grid


# --------------------------------------------------------------------------- one study

class _StudyWriter:
    """Writes the series of one study into ``cd/DICOM/<study>/<series>/``, numbering the series in
    acquisition order and keeping, apart from the DICOM files, the list of which is which."""

    def __init__(self, cd: Path, rng: np.random.Generator, *, vendor: str, date: datetime.date, patient: dict,
                 description: str, names: set[str]):
        self.cd, self.rng, self.vendor, self.headers = cd, rng, vendor, VENDORS[vendor]
        self.names = names
        self.study_uid, self.frame_uid = generate_uid(), generate_uid()
        self.folder = cd / "DICOM" / self._opaque_name()
        self.date, self.patient, self.description = date.strftime("%Y%m%d"), patient, description
        self.clock = datetime.datetime.combine(date, datetime.time(8, 0)) + datetime.timedelta(
            minutes=int(rng.integers(0, 9 * 60)))
        self.study_time = self.clock.strftime("%H%M%S")
        self.series: list[dict] = []

    def _opaque_name(self) -> str:
        while True:  # 8 hex digits, as CD burners name folders; unique on this CD
            name = f"{int(self.rng.integers(16**8)):08X}"
            if name not in self.names:
                self.names.add(name)
                return name

    def _write(self, image, affine, folder: Path, role_headers: dict, *, number: int, series_uid: str,
               first_instance: int = 1, extra: dict | None = None, contrast: str | None = None) -> int:
        settings = {k: v for k, v in role_headers.items() if k not in ("plane", "thick", "extra", "description")}
        more = {"SoftwareVersions": self.headers["software"], "PatientPosition": "HFS", **role_headers.get("extra", {}),
                **(extra or {})}
        if contrast:  # the agent is free text (a brand name); the ingredient is what a reader can rely on
            more["ContrastBolusIngredient"] = "GADOLINIUM"
        paths = write_dicom_series(
            image, affine, folder, description=role_headers["description"],
            protocol=self.headers.get("protocol", role_headers["description"]), contrast_bolus_agent=contrast,
            series_number=number, study_uid=self.study_uid, seed=int(self.rng.integers(2**31)),
            series_uid=series_uid, frame_of_reference_uid=self.frame_uid, first_instance_number=first_instance,
            manufacturer=self.headers["manufacturer"], model_name=self.headers["model_name"],
            magnetic_field_strength=self.headers["magnetic_field_strength"], study_date=self.date,
            study_time=self.study_time, series_time=self.clock.strftime("%H%M%S"),
            study_description=self.description, patient=self.patient, extra=more, **settings)
        return len(paths)

    def add(self, role: str, image: np.ndarray, affine: np.ndarray, *, header_role: str | None = None,
            contrast: bool = False, parts: list[tuple[np.ndarray, np.ndarray, dict]] | None = None) -> dict:
        """One series of ``role``: ``image`` on ``affine`` (RAS+), or several ``parts`` of one series
        (image, affine, extra attributes each). Returns its entry of the truth."""
        role_headers = self.headers["series"][header_role or role]
        number = len(self.series) + 1
        series_uid, folder = generate_uid(), self.folder / self._opaque_name()
        plane = role_headers.get("plane")
        first = 1
        for part_image, part_affine, extra in parts or [(image, affine, {})]:
            if plane:
                part_image, part_affine = _reorient(part_image, part_affine, PLANE_AXES[plane])
            first += self._write(part_image, part_affine, folder, role_headers, number=number, series_uid=series_uid,
                                 first_instance=first, extra=extra,
                                 contrast=self.headers["contrast_agent"] if contrast else None)
        self.clock += datetime.timedelta(minutes=int(self.rng.integers(3, 7)), seconds=int(self.rng.integers(60)))
        entry = {"role": role, "series_number": number, "series_uid": series_uid,
                 "description": role_headers["description"], "n_images": first - 1}
        self.series.append(entry)
        return entry

    def add_localizer(self, volume: np.ndarray, affine: np.ndarray) -> None:
        """The three-plane scout: one series with mixed orientations (Siemens, Philips), which a reader
        must skip rather than stack, or one series per plane (as here for GE)."""
        planes = [(image, plane_affine, {}) for image, plane_affine in _localizer_planes(volume, affine)]
        if self.headers["localizer_as"] == "one series":
            self.add("localizer", None, None, parts=planes)
        else:
            for image, plane_affine, _ in planes:
                self.add("localizer", image, plane_affine)

    def add_diffusion(self, t2: np.ndarray, affine: np.ndarray) -> None:
        """A trace series holding b=0 and b=1000 images at the same positions (so it cannot be stacked
        as one volume), then its ADC map."""
        b0, trace, adc_map, grid = _diffusion_like(t2, affine)
        self.add("DWI", None, None, parts=[(b0, grid, {"DiffusionBValue": 0.0}),
                                           (trace, grid, {"DiffusionBValue": B_VALUE})])
        self.add("ADC", adc_map, grid)

    def truth(self, patient: str, kind: str) -> dict:
        return {"patient": patient, "kind": kind, "folder": self.folder.relative_to(self.cd.parent).as_posix(),
                "study_uid": self.study_uid, "study_date": self.date, "vendor": self.vendor,
                "series": self.series}


def _readme(cd: Path, text: str) -> None:
    """The non-DICOM files a CD carries next to the images (a reader must skip them)."""
    write_atomic(cd / "README.TXT", text)
    write_atomic(cd / "AUTORUN.INF", "[autorun]\nopen=VIEWER\\VIEWER.EXE\nlabel=MR STUDY\n")


def _save_truth_mask(truth_dir: Path, name: str, mask: np.ndarray, affine: np.ndarray) -> str:
    save_mask(truth_dir / name, (np.asarray(mask) > 0.5).astype(np.uint8), affine)
    return name


def _synthetic_dates(rng: np.random.Generator, gap_days: int) -> tuple[datetime.date, datetime.date]:
    current = datetime.date(2025, 1, 6) + datetime.timedelta(days=int(rng.integers(0, 365)))
    return current - datetime.timedelta(days=gap_days), current


# --------------------------------------------------------------------------- the sources

def _phantom_studies(out: Path, truth_dir: Path, rng: np.random.Generator, seed: int) -> list[dict]:
    """The phantom patient: a prior study (GE, 2D axial FLAIR) and a current one (Siemens, 3D sagittal)."""
    baseline, followup, change = generate_longitudinal_pair(seed=seed, spacing=PHANTOM_SPACING_MM, t1ce=True)
    cd, names = out / "phantom", set()
    patient = {"PatientName": "PHANTOM^SYNTHETIC", "PatientID": f"MSTK{int(rng.integers(16**6)):06X}",
               "PatientSex": "O", "PatientIdentityRemoved": "YES",
               "DeidentificationMethod": f"Synthetic phantom (mstoolkit, seed {seed}); no real patient"}
    dates = _synthetic_dates(rng, int(rng.integers(182, 366)))
    studies = []
    for case, kind, vendor, date in ((baseline, "prior", "ge", dates[0]), (followup, "current", "siemens", dates[1])):
        study = _StudyWriter(cd, rng, vendor=vendor, date=date, patient=patient, description="MRI BRAIN MS W/WO", names=names)
        images, affine = case.images, case.affine
        study.add_localizer(images["T1"], affine)
        study.add("T2", images["T2"], affine)
        mask, mask_affine = case.mask, affine
        if VENDORS[vendor]["series"]["FLAIR"].get("thick"):
            flair, flair_affine = _block_average(images["FLAIR"], affine, (1, 1, THICK_SLICE_BLOCK))
            mask, mask_affine = _block_average(case.mask, affine, (1, 1, THICK_SLICE_BLOCK))
        else:
            flair, flair_affine = images["FLAIR"], affine
        study.add("FLAIR", flair, flair_affine)
        study.add_diffusion(images["T2"], affine)
        study.add("T1", images["T1"], affine)
        study.add("T1CE", images["T1CE"], affine, header_role="T1", contrast=True)
        entry = study.truth("phantom", kind)
        entry["lesion_mask"] = _save_truth_mask(truth_dir, f"phantom_{kind}_lesion_mask.nii.gz", mask, mask_affine)
        entry["lesion_mask_grid"] = "the FLAIR series, as load_series stacks it"
        studies.append(entry)
    change_name = _save_truth_mask(truth_dir, "phantom_change_mask.nii.gz", change, baseline.affine)
    for entry in studies:
        entry["change_mask"] = change_name
        entry["change_mask_grid"] = (f"the phantom baseline at {PHANTOM_SPACING_MM[0]} mm (the prior's anatomy "
                                     "before its thick slices): new and enlarging lesion voxels")
    _readme(cd, "MR STUDIES - SYNTHETIC PHANTOM PATIENT (mstoolkit)\r\n"
                f"Generated by mstoolkit data dicom, seed {seed}. No real patient.\r\n"
                "Two studies: a prior and a current one. Open the DICOM folder in any DICOM viewer.\r\n")
    return studies


def _real_studies(out: Path, truth_dir: Path, rng: np.random.Generator) -> list[dict]:
    """open_ms_data patient26 (one study) and longitudinal patient01 (prior and current FLAIR)."""
    studies = []
    sample = next((c for c in list_cases(real_sample_dir()) if c.case_id == "patient26"), None)
    if sample is None:
        raise MSToolkitInputError("The real sample patient26 is not in the shipped sample (or in $MSTOOLKIT_REAL_SAMPLE); "
                                  "reinstall mstoolkit or unset $MSTOOLKIT_REAL_SAMPLE, or use --source phantom.")
    images = {name: load_image(path) for name, path in sample.images.items()}
    cd, names = out / "patient26", set()
    patient = {"PatientName": "OPEN_MS_DATA^PATIENT26", "PatientID": "OPENMS-CS-26", "PatientIdentityRemoved": "YES",
               "DeidentificationMethod": "open_ms_data patient26, Lesjak 2018, CC-BY; synthetic headers"}
    study = _StudyWriter(cd, rng, vendor="philips", date=_synthetic_dates(rng, 0)[1], patient=patient,
                         description="MR HEAD MS", names=names)
    flair, affine = images["FLAIR"]
    study.add_localizer(images["T1"][0], images["T1"][1])
    study.add("T2", *images["T2"])
    study.add("FLAIR", flair, affine)
    study.add_diffusion(*images["T2"])
    study.add("T1", *images["T1"])
    study.add("T1CE", *images["T1CE"], header_role="T1", contrast=True)
    entry = study.truth("patient26", "cross-sectional")
    mask, mask_affine = load_image(sample.mask)
    entry["lesion_mask"] = _save_truth_mask(truth_dir, "patient26_lesion_mask.nii.gz", mask, mask_affine)
    entry["lesion_mask_grid"] = "the FLAIR series, as load_series stacks it (and every series of this study: MNI space)"
    studies.append(entry)
    _readme(cd, "MR STUDY - open_ms_data patient26 (pseudonymous)\r\n"
                "Images: the published, preprocessed images (MNI space). Headers, date, localizer and diffusion\r\n"
                "series are synthetic. Please cite:\r\n" + CITATION.replace("\n", "\r\n"))

    folder = real_longitudinal_patient("patient01")
    cd, names = out / "patient01", set()
    patient = {"PatientName": "OPEN_MS_DATA^PATIENT01", "PatientID": "OPENMS-LG-01", "PatientIdentityRemoved": "YES",
               "DeidentificationMethod": "open_ms_data patient01, Lesjak 2016, CC-BY; synthetic headers"}
    dates = _synthetic_dates(rng, 203)  # the days between the two studies, from patient_info.csv
    for name, kind, date in (("study1_FLAIR.nii.gz", "prior", dates[0]), ("study2_FLAIR.nii.gz", "current", dates[1])):
        flair, affine = load_image(folder / name)
        study = _StudyWriter(cd, rng, vendor="philips", date=date, patient=patient, description="MR HEAD MS FOLLOW-UP",
                             names=names)
        study.add_localizer(flair, affine)
        study.add("FLAIR", flair, affine, header_role="FLAIR_2D")
        study.add_diffusion(flair, affine)
        studies.append(study.truth("patient01", kind) | {"source_file": f"longitudinal/raw/patient01/{name}"})
    change, change_affine = load_image(folder / "gt.nii.gz")
    change_name = _save_truth_mask(truth_dir, "patient01_change_mask.nii.gz", change, change_affine)
    for entry, number in zip(studies[-2:], (1, 2)):
        transform = f"patient01_study{number}_FLAIR_to_common_space.txt"
        write_atomic(truth_dir / transform, (folder / f"study{number}_FLAIR_to_common_space.txt").read_bytes())
        entry.update(change_mask=change_name, change_mask_grid="open_ms_data's common space of patient01 (not a FLAIR grid)",
                     transform_to_change_mask_grid=transform)
    _readme(cd, "MR STUDIES - open_ms_data longitudinal patient01 (pseudonymous)\r\n"
                "Images: the published FLAIRs as acquired. Headers, dates, localizers and diffusion series are\r\n"
                "synthetic. Please cite:\r\n" + CITATION.replace("\n", "\r\n"))
    return studies


# --------------------------------------------------------------------------- public API

def _folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def write_teaching_studies(out_dir: str | os.PathLike, *, source: str = "all", seed: int = 0) -> dict:
    """Write scanner-like DICOM studies (phantom and/or the shipped real sample) into ``out_dir``.

    ``out_dir`` must be new or empty; everything is written into a temporary folder next to it
    and renamed at the end, so an interrupted run leaves no half export. Layout::

        OUT/phantom/README.TXT, AUTORUN.INF           (not DICOM: readers skip them)
        OUT/phantom/DICOM/<8 hex>/<8 hex>/<8 hex>      (study / series / one file per slice)
        OUT/patient26/..., OUT/patient01/...           (with --source real or all)
        OUT/truth/truth.json                           (which series is which; lesion masks as NIfTI)

    Introduced in notebook 08 (a DICOM study in, a report out).

    Returns
    -------
    dict
        ``{"studies": [{"folder", "patient" ("phantom", "patient26", "patient01"), "kind" ("prior",
        "current", "cross-sectional"), "study_uid", "series" (how many)}], "truth": path of
        truth.json, "seconds": time taken, "bytes": size on disk}``.
    """
    if source not in SOURCES:
        raise MSToolkitInputError(f"'source' must be one of {', '.join(SOURCES)}, got {source!r}.")
    seed = check_seed(seed)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MSToolkitInputError(f"'{out}' already exists and is not an empty folder; choose a new folder for the export.")
    start = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.parent / f".{out.name}.partial-{os.getpid()}-{int(time.time() * 1000) % 10**8}"
    partial.mkdir()
    try:
        truth_dir = partial / "truth"
        truth_dir.mkdir()
        rng = np.random.default_rng(np.random.SeedSequence([seed, 8]))
        studies = []
        if source in ("phantom", "all"):
            studies += _phantom_studies(partial, truth_dir, rng, seed)
        if source in ("real", "all"):
            studies += _real_studies(partial, truth_dir, rng)
        truth = {"description": "Ground truth of `mstoolkit data dicom`: which series of each study is which role, "
                                "and the lesion masks (NIfTI, in this folder). Folders are relative to the export.",
                 "generator": "mstoolkit.clinical.scanner_export", "seed": seed, "source": source,
                 "roles": ["localizer", "FLAIR", "T1", "T1CE", "T2", "DWI", "ADC"], "studies": studies,
                 "citation": CITATION if source != "phantom" else None}
        write_atomic(truth_dir / "truth.json", json.dumps(truth, indent=2) + "\n")
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return {"studies": [{"folder": str(out / s["folder"]), "patient": s["patient"], "kind": s["kind"],
                         "study_uid": s["study_uid"], "series": len(s["series"])} for s in studies],
            "truth": str(out / "truth" / "truth.json"), "seconds": round(time.perf_counter() - start, 2),
            "bytes": _folder_size(out)}


def cli_data_dicom(args) -> int:
    """``mstoolkit data dicom --out DIR [--source phantom|real|all] [--seed N]``: print one line per study."""
    summary = write_teaching_studies(args.out, source=getattr(args, "source", "all"), seed=getattr(args, "seed", 0))
    for study in summary["studies"]:
        print(f"{study['patient']:<10} {study['kind']:<16} {study['series']:>2} series  {study['folder']}")
    print(f"ground truth (kept apart from the DICOM folders): {summary['truth']}")
    print(f"{summary['bytes'] / 1e6:.0f} MB in {summary['seconds']:.1f} s")
    return 0
