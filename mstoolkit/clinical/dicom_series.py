"""Read MR series from a folder of DICOM files, and write scanner-like series.

A PACS export or a CD holds files with arbitrary names (often without an
extension), several studies and series side by side, and objects that are not
images (structured reports, presentation states, a DICOMDIR). :func:`find_series`
groups the image files by study and series; :func:`load_series` stacks one series
into the toolkit's convention, the same as :func:`mstoolkit.data.io.load_image`
gives for a NIfTI file: a float32 array in RAS+ orientation and its affine.

Slices are ordered by their position along the slice normal, computed from
ImagePositionPatient and ImageOrientationPatient: InstanceNumber and file names
are not reliable. DICOM world coordinates are LPS; the affine returned is RAS.

:func:`write_dicom_series` writes a volume as one MR Image Storage file per slice,
as a scanner would (opaque file names, InstanceNumbers that do not follow the
slice order, int16 pixels with a rescale slope and intercept, a synthetic
patient), for tests and teaching.

Messages and logs name a series by its number and description, never by patient
identifiers or file paths (folder names of an export often hold the patient's name).
"""

from __future__ import annotations

import logging
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import get_decoder
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

from mstoolkit.data.io import MSToolkitInputError, write_atomic

__all__ = ["DicomSeries", "DicomFolder", "find_series", "load_series", "write_dicom_series", "dcm2niix_executable"]

log = logging.getLogger(__name__)

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"
DICOMDIR_STORAGE = "1.2.840.10008.1.3.10"

#: LPS (DICOM) ↔ RAS (NIfTI, the toolkit): the first two world axes change sign.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

#: Positions and directions from DICOM decimal strings agree to about 1e-4; a missing
#: slice moves the next one by a whole slice gap.
POSITION_TOLERANCE_MM = 0.01
DIRECTION_TOLERANCE = 1e-4

DECODER_PACKAGES = "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg (or: pip install python-gdcm)"


def _text(ds, keyword: str) -> str:
    value = ds.get(keyword, "")
    if value is None:
        return ""
    if isinstance(value, (list, tuple, MultiValue)):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _number(ds, keyword: str) -> float | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class DicomSeries:
    """One series of a DICOM folder: its identifiers, the header fields needed to
    recognise the sequence, and its files. Holds no patient identifiers."""

    study_uid: str
    series_uid: str
    series_number: int | None
    modality: str
    series_description: str
    protocol_name: str
    repetition_time: float | None
    echo_time: float | None
    inversion_time: float | None
    scanning_sequence: str
    sequence_variant: str
    image_type: str
    mr_acquisition_type: str
    contrast_bolus_agent: str
    sop_class_uid: str
    files: tuple[Path, ...] = field(repr=False)
    # Read by mstoolkit.clinical.sequences; defaults keep older constructors working.
    contrast_bolus_ingredient: str = ""
    sequence_name: str = ""
    manufacturer: str = ""
    magnetic_field_strength: float | None = None

    @property
    def n_images(self) -> int:
        return len(self.files)

    @property
    def description(self) -> str:
        """SeriesDescription, or ProtocolName where the scanner left it empty."""
        return self.series_description or self.protocol_name

    @property
    def label(self) -> str:
        """How messages name the series: ``series 3 'AX FLAIR'``."""
        number = "?" if self.series_number is None else str(self.series_number)
        return f"series {number} '{self.description}'"


@dataclass(frozen=True)
class DicomFolder:
    """What :func:`find_series` found: the series, and how many files were not DICOM
    (or were DICOM without a series, such as a DICOMDIR)."""

    series: tuple[DicomSeries, ...]
    n_skipped: int


def _series_from(ds, files: list[Path]) -> DicomSeries:
    number = _number(ds, "SeriesNumber")
    return DicomSeries(
        study_uid=_text(ds, "StudyInstanceUID"),
        series_uid=_text(ds, "SeriesInstanceUID"),
        series_number=None if number is None else int(number),
        modality=_text(ds, "Modality"),
        series_description=_text(ds, "SeriesDescription"),
        protocol_name=_text(ds, "ProtocolName"),
        repetition_time=_number(ds, "RepetitionTime"),
        echo_time=_number(ds, "EchoTime"),
        inversion_time=_number(ds, "InversionTime"),
        scanning_sequence=_text(ds, "ScanningSequence"),
        sequence_variant=_text(ds, "SequenceVariant"),
        image_type=_text(ds, "ImageType"),
        mr_acquisition_type=_text(ds, "MRAcquisitionType"),
        contrast_bolus_agent=_text(ds, "ContrastBolusAgent"),
        sop_class_uid=_text(ds, "SOPClassUID"),
        files=tuple(sorted(files)),
        contrast_bolus_ingredient=_text(ds, "ContrastBolusIngredient"),
        sequence_name=_text(ds, "SequenceName"),
        manufacturer=_text(ds, "Manufacturer"),
        magnetic_field_strength=_number(ds, "MagneticFieldStrength"),
    )


def _read(path: Path, *, pixels: bool):
    """The dataset of ``path``, or None if it is not DICOM.

    Old CDs hold files without the 128-byte preamble and file meta; they are read
    with ``force`` and kept only if they carry a SOP class and a series, which a
    text or random file does not."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=not pixels)
    except InvalidDicomError:
        pass
    except (OSError, EOFError, ValueError, TypeError, KeyError, AttributeError):
        return None
    try:
        with warnings.catch_warnings():  # a text file read with force makes pydicom warn about its "VR"
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=not pixels, force=True)
    except Exception:  # anything a non-DICOM file makes the parser raise
        return None
    try:
        if "SOPClassUID" not in ds or "SeriesInstanceUID" not in ds:
            return None
    except Exception:
        return None
    if "TransferSyntaxUID" not in ds.file_meta:
        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        )
    return ds


def find_series(folder: str | os.PathLike) -> DicomFolder:
    """Group the DICOM files under ``folder`` (any depth, any file names) by study and series.

    Files that are not DICOM are skipped and counted. Series come sorted by study,
    then series number.
    """
    folder = Path(folder)
    if not folder.is_dir():
        # The path is not echoed: export folders are often named after the patient.
        raise MSToolkitInputError("find_series needs a folder and the path given is not one: pass the folder of a DICOM export or CD.")
    groups: dict[tuple[str, str], list[Path]] = {}
    first: dict[tuple[str, str], object] = {}
    n_skipped = 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        ds = _read(path, pixels=False)
        if ds is None:
            n_skipped += 1
            continue
        key = (_text(ds, "StudyInstanceUID"), _text(ds, "SeriesInstanceUID"))
        if not key[1] or _text(ds, "SOPClassUID") == DICOMDIR_STORAGE:
            n_skipped += 1
            continue
        groups.setdefault(key, []).append(path)
        first.setdefault(key, ds)
    series = [_series_from(first[key], files) for key, files in groups.items()]
    series.sort(key=lambda s: (s.study_uid, s.series_number if s.series_number is not None else -1, s.series_uid))
    log.info("%d series in %d studies; %d files skipped (not DICOM)", len(series), len({s.study_uid for s in series}), n_skipped)
    return DicomFolder(series=tuple(series), n_skipped=n_skipped)


def _check_image(ds, series: DicomSeries) -> None:
    """Refuse what :func:`load_series` cannot stack, with the reason and the fix."""
    sop_class = _text(ds, "SOPClassUID")
    n_frames = _number(ds, "NumberOfFrames")
    if sop_class == ENHANCED_MR_IMAGE_STORAGE or (n_frames is not None and n_frames > 1):
        raise MSToolkitInputError(
            f"{series.label} is an enhanced multi-frame MR object, which is not supported. "
            "Export the series as classic single-frame MR images (scanners and PACS offer it) or convert it with dcm2niix."
        )
    missing = [k for k in ("Rows", "Columns", "PixelSpacing", "ImagePositionPatient", "ImageOrientationPatient") if k not in ds]
    if missing or "PixelData" not in ds:
        kind = UID(sop_class).name if sop_class else "an object without a SOP class"
        raise MSToolkitInputError(
            f"{series.label} holds a non-image object ({kind}, without {', '.join(missing) or 'PixelData'}). "
            "Pick an image series (see DicomSeries.sop_class_uid), or remove that object from the folder."
        )
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if syntax is not None and syntax.is_compressed:
        try:
            available = get_decoder(syntax).is_available
        except NotImplementedError:
            available = False
        if not available:
            raise MSToolkitInputError(
                f"{series.label} is compressed ({syntax.name}) and no installed decoder reads it. "
                f"Install one: {DECODER_PACKAGES}."
            )


def load_series(series: DicomSeries) -> tuple[np.ndarray, np.ndarray]:
    """Stack one series into a float32 array in RAS+ orientation and its affine.

    Slices are ordered along the slice normal; the slice step comes from the
    positions of the first and last slice (so a tilted stack keeps its shear);
    RescaleSlope and RescaleIntercept are applied.

    Returns
    -------
    image : numpy.ndarray, float32, shape (x, y, z), RAS+ as :func:`mstoolkit.data.io.load_image`
    affine : numpy.ndarray, float64, shape (4, 4), voxel → RAS world millimetres
    """
    datasets = [_read(path, pixels=True) for path in series.files]
    if any(ds is None for ds in datasets):
        raise MSToolkitInputError(f"{series.label}: some of its files can no longer be read as DICOM. Run find_series again.")
    for ds in datasets:
        _check_image(ds, series)

    orientations = np.array([[float(v) for v in ds.ImageOrientationPatient] for ds in datasets])
    if np.abs(orientations - orientations[0]).max() > DIRECTION_TOLERANCE:
        raise MSToolkitInputError(
            f"{series.label} mixes slice orientations (e.g. a localizer with three planes). "
            "Load a series acquired in one orientation."
        )
    sizes = {(int(ds.Rows), int(ds.Columns)) for ds in datasets}
    pixel_spacings = np.array([[float(v) for v in ds.PixelSpacing] for ds in datasets])
    if len(sizes) > 1 or np.abs(pixel_spacings - pixel_spacings[0]).max() > DIRECTION_TOLERANCE:
        raise MSToolkitInputError(
            f"{series.label} mixes image sizes or pixel spacings ({sorted(sizes)}). "
            "Load a series whose images share one grid."
        )

    row_direction, column_direction = orientations[0, :3], orientations[0, 3:]
    normal = np.cross(row_direction, column_direction)
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
    along_normal = positions @ normal
    order = np.argsort(along_normal, kind="stable")
    positions, along_normal = positions[order], along_normal[order]
    datasets = [datasets[i] for i in order]

    gaps = np.diff(along_normal)
    if gaps.size and gaps.min() < POSITION_TOLERANCE_MM:
        where = along_normal[1:][gaps < POSITION_TOLERANCE_MM][0]
        raise MSToolkitInputError(
            f"{series.label} has several images at one slice position ({where:.2f} mm along the normal): "
            "duplicated slices, e.g. several echoes or time points in one series. "
            "Export each echo or time point as its own series, or remove the duplicates."
        )
    n = len(datasets)
    if n > 1:
        step = (positions[-1] - positions[0]) / (n - 1)
        expected = positions[0] + np.arange(n)[:, None] * step
        # A missing slice moves its neighbours off the line by about half a gap or more.
        tolerance = max(POSITION_TOLERANCE_MM, 0.1 * float(np.linalg.norm(step)))
        if np.abs(positions - expected).max() > tolerance:
            raise MSToolkitInputError(
                f"{series.label} has uneven slice gaps ({gaps.min():.2f} to {gaps.max():.2f} mm): "
                "slices are missing. Export the complete series again."
            )
    else:
        thickness = _number(datasets[0], "SpacingBetweenSlices") or _number(datasets[0], "SliceThickness") or 1.0
        step = normal * thickness

    row_spacing, column_spacing = pixel_spacings[0]
    affine_lps = np.eye(4)
    affine_lps[:3, 0] = row_direction * column_spacing  # along a row: the column index
    affine_lps[:3, 1] = column_direction * row_spacing  # down a column: the row index
    affine_lps[:3, 2] = step
    affine_lps[:3, 3] = positions[0]

    image = np.empty((sizes.pop()[::-1]) + (n,), dtype=np.float32)
    for k, ds in enumerate(datasets):
        pixels = ds.pixel_array.astype(np.float64)
        slope = _number(ds, "RescaleSlope")
        intercept = _number(ds, "RescaleIntercept")
        pixels = pixels * (1.0 if slope is None else slope) + (0.0 if intercept is None else intercept)
        image[:, :, k] = pixels.T  # pixel_array is (row, column); the toolkit indexes (x, y, z)

    canonical = nib.as_closest_canonical(nib.Nifti1Image(image, LPS_TO_RAS @ affine_lps))
    return np.ascontiguousarray(canonical.get_fdata(dtype=np.float32)), canonical.affine.astype(np.float64)


def _decimal(value: float) -> str:
    """``value`` as a DICOM decimal string (16 characters at most)."""
    return format_number_as_ds(float(value))


def write_dicom_series(
    image: np.ndarray,
    affine: np.ndarray,
    out_dir: str | os.PathLike,
    *,
    description: str,
    protocol: str | None = None,
    tr: float | None = None,
    te: float | None = None,
    ti: float | None = None,
    scanning_sequence: str = "SE",
    sequence_variant: str = "SP",
    mr_acquisition_type: str = "3D",
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "M", "ND"),
    contrast_bolus_agent: str | None = None,
    series_number: int = 1,
    study_uid: str | None = None,
    seed: int = 0,
    series_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    first_instance_number: int = 1,
    manufacturer: str = "mstoolkit",
    model_name: str | None = None,
    magnetic_field_strength: float | None = None,
    study_date: str = "20000101",
    study_time: str = "120000",
    series_time: str | None = None,
    study_description: str | None = None,
    patient: dict | None = None,
    extra: dict | None = None,
) -> list[Path]:
    """Write ``image`` (x, y, z) on ``affine`` (voxel → RAS mm) as one MR Image Storage file per slice.

    Like a scanner export: opaque file names without extension, InstanceNumbers in an
    order unrelated to the slice positions, int16 pixels with RescaleSlope and
    RescaleIntercept, fresh UIDs, a synthetic patient. Pass the ``study_uid`` of an
    earlier call to put several series in one study. Slice k of the file set is the
    plane ``image[:, :, k]``; the first array axis runs along the image rows.

    Scanner-like headers (used by :mod:`mstoolkit.clinical.scanner_export`): ``manufacturer``,
    ``model_name``, ``magnetic_field_strength`` (tesla), ``study_date``/``study_time``/``series_time``
    (DICOM DA ``YYYYMMDD`` and TM ``HHMMSS``), ``study_description``; ``patient`` replaces the
    synthetic patient's attributes (keywords such as ``PatientName``, ``PatientID``,
    ``PatientIdentityRemoved``); ``extra`` sets further attributes by keyword on every file
    (``{"FlipAngle": "9"}``), and a callable value is called with the slice index (a value that
    changes per file, such as ``DiffusionBValue``). Several calls with one ``series_uid`` (and
    ``first_instance_number`` past the earlier call's) build one series in parts, e.g. a
    three-plane localizer or the b-values of a diffusion series; a ``frame_of_reference_uid``
    shared by the series of one study says they were acquired in one session.

    Returns the paths written, in slice order.
    """
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 3:
        raise MSToolkitInputError(f"image has shape {image.shape}; expected a 3D volume (x, y, z).")
    if not np.isfinite(image).all():
        raise MSToolkitInputError("image contains NaN or infinite voxels; replace them first (e.g. numpy.nan_to_num).")
    affine_lps = LPS_TO_RAS @ np.asarray(affine, dtype=np.float64)
    column_spacing, row_spacing = np.linalg.norm(affine_lps[:3, :2], axis=0)
    row_direction = affine_lps[:3, 0] / column_spacing
    column_direction = affine_lps[:3, 1] / row_spacing
    if abs(row_direction @ column_direction) > DIRECTION_TOLERANCE:
        raise MSToolkitInputError(
            "affine has sheared in-plane axes; DICOM needs orthogonal rows and columns. Resample the image first."
        )
    step = affine_lps[:3, 2]

    low, high = float(image.min()), float(image.max())
    # Quantise with the values as the files store them, so reading back is exact to half a step.
    intercept = float(_decimal((high + low) / 2))
    slope = float(_decimal((high - low) / 65000)) if high > low else 1.0
    stored = np.clip(np.rint((image - intercept) / slope), -32768, 32767).astype("<i2")

    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_slices = image.shape[2]
    instance_numbers = rng.permutation(n_slices) + first_instance_number
    names: set[str] = set()
    while len(names) < n_slices:
        name = f"{int(rng.integers(16**8)):08X}"
        if not (out_dir / name).exists():  # several series may share one folder
            names.add(name)
    file_names = sorted(names, key=lambda _: rng.random())

    study_uid = study_uid or generate_uid()
    series_uid, frame_uid = series_uid or generate_uid(), frame_of_reference_uid or generate_uid()
    paths = []
    for k in range(n_slices):
        sop_uid = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MR_IMAGE_STORAGE, sop_uid
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        # A synthetic patient: no real identifiers ever enter these files.
        ds.PatientName, ds.PatientID = "PHANTOM^SYNTHETIC", "PHANTOM0001"
        ds.PatientBirthDate, ds.PatientSex = "", "O"
        for keyword, value in (patient or {}).items():
            setattr(ds, keyword, value)
        ds.StudyID, ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "1", study_date, study_time, ""
        ds.SeriesDate, ds.SeriesTime = study_date, series_time or study_time
        ds.ReferringPhysicianName = ""
        if study_description:
            ds.StudyDescription = study_description
        ds.Modality, ds.Manufacturer = "MR", manufacturer
        if model_name:
            ds.ManufacturerModelName = model_name
        if magnetic_field_strength is not None:
            ds.MagneticFieldStrength = _decimal(magnetic_field_strength)
        ds.SeriesNumber, ds.InstanceNumber = series_number, int(instance_numbers[k])
        ds.SeriesDescription, ds.ProtocolName = description, protocol or description
        ds.ImageType = list(image_type)
        ds.ScanningSequence, ds.SequenceVariant = scanning_sequence, sequence_variant
        ds.MRAcquisitionType = mr_acquisition_type
        for keyword, value in (("RepetitionTime", tr), ("EchoTime", te), ("InversionTime", ti)):
            if value is not None:
                setattr(ds, keyword, _decimal(value))
        if contrast_bolus_agent:
            ds.ContrastBolusAgent = contrast_bolus_agent
        position = affine_lps[:3, :3] @ [0.0, 0.0, k] + affine_lps[:3, 3]
        ds.ImagePositionPatient = [_decimal(v) for v in position]
        ds.ImageOrientationPatient = [_decimal(v) for v in (*row_direction, *column_direction)]
        ds.PixelSpacing = [_decimal(row_spacing), _decimal(column_spacing)]
        ds.SliceThickness = ds.SpacingBetweenSlices = _decimal(np.linalg.norm(step))
        ds.SliceLocation = _decimal(position @ np.cross(row_direction, column_direction))
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = image.shape[1], image.shape[0]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = _decimal(slope), _decimal(intercept), "US"
        for keyword, value in (extra or {}).items():
            setattr(ds, keyword, value(k) if callable(value) else value)
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()  # (row, column) order
        path = out_dir / file_names[k]
        write_atomic(path, lambda tmp, ds=ds: pydicom.dcmwrite(tmp, ds, enforce_file_format=True))
        paths.append(path)
    return paths


def dcm2niix_executable() -> str | None:
    """The dcm2niix program (Li et al. 2016), the converter most research pipelines use, to check ours against.

    The one in its PyPI wheel (a dependency of the toolkit) comes first: a virtual environment's
    ``bin/`` is often not on PATH (``.venv/bin/python -m pytest``, a Jupyter kernel). Then one on
    PATH; None when there is neither.
    """
    try:
        import dcm2niix

        if Path(dcm2niix.bin).is_file():
            return str(dcm2niix.bin)
    except (ImportError, AttributeError):
        pass
    return shutil.which("dcm2niix")
