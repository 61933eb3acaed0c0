"""DICOM out: the lesion mask as a DICOM Segmentation, the numbers as a TID 1500 report.

A PACS stores DICOM objects, not NIfTI files, and a viewer overlays a segmentation
on the images only when the segmentation says which images it belongs to. Two
objects carry the toolkit's result back into the hospital:

``lesion_seg.dcm``, a **Segmentation** (SEG; DICOM PS3.3 §A.51, Segmentation IOD;
SOP class 1.2.840.10008.5.1.4.1.1.66.4). A binary SEG stores one bit per pixel,
one frame per source image that holds lesion, and for every frame the SOP Instance
UID of the FLAIR image it lies on (Derivation Image / Source Image sequences,
PS3.3 §C.8.20.2 and §C.7.6.16). It shares the FLAIR's study and Frame of Reference
(PS3.3 §C.7.4.1), so a viewer places it exactly over the FLAIR. Its one segment is
described with SNOMED CT codes from CID 7150 / CID 7151 (PS3.16): category
"Morphologically Altered Structure" (SCT 49755003), type "Lesion" (SCT 52988006),
made by an AUTOMATIC algorithm named in an Algorithm Identification Sequence
(PS3.3 §C.8.20.2; family "Artificial Intelligence", DCM 123110).

``report_sr.dcm``, a **Measurement Report** (TID 1500, PS3.16) in a Comprehensive
3D SR document (SOP class 1.2.840.10008.5.1.4.1.1.88.34). It holds:

- one *volumetric ROI* measurement group (TID 1411) tracked as "all lesions" whose
  region is the SEG's lesion segment (a Referenced Segment, which names the SEG's
  SOP Instance UID and the FLAIR series it was drawn on), with the total lesion
  volume in mL and the number of lesions;
- one *measurement* group (TID 1501) per lesion, tracked as "lesion <id>", with its
  volume in mm³ whose measurement points at the lesion's centroid as a 3D point
  (SCOORD3D) in the FLAIR's Frame of Reference.

Why one segment and points rather than one segment per lesion: the segment is the
lesion mask the pipeline produced, so the SEG and the NIfTI mask stay the same
thing, and a viewer shows every lesion in one colour and one toggle (how a
radiologist reads a lesion load). A centroid point places each lesion's
measurement in the viewer's 3D space without a second, labelled copy of the
mask whose lesion numbers would have to be kept in step with the report.

The objects are built with highdicom (Herrmann et al., "Highdicom: a Python
library for standardized encoding of image annotations and machine learning model
outputs in pathology and radiology", J Digit Imaging 2022), which copies the
Patient and Study modules from the source images as the standard requires; nothing
else about the patient is added. Both are marked as research (Content
Qualification RESEARCH, PS3.3 §C.8.13.2) and their series descriptions say the
software is not for clinical use.

Geometry: the mask is on the grid :func:`mstoolkit.clinical.dicom_series.load_series`
gives (RAS+). Each SEG frame is gathered from the mask with the source image's own
ImagePositionPatient, ImageOrientationPatient and PixelSpacing: the world (LPS)
position of every pixel centre, turned to RAS, then to a voxel index with the
inverse affine. No axis order is assumed, so oblique series, reversed slice
orders and LPS storage all map correctly; reading back does the same in reverse.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Mapping

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

import mstoolkit
from mstoolkit.clinical.dicom_series import LPS_TO_RAS, DicomSeries, load_series
from mstoolkit.data.io import MSToolkitInputError, check_binary_mask, check_same_grid, write_atomic

__all__ = [
    "SEGMENTATION_STORAGE",
    "COMPREHENSIVE_3D_SR_STORAGE",
    "write_segmentation",
    "read_segmentation",
    "write_measurement_report",
    "read_measurement_report",
]

log = logging.getLogger(__name__)

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
COMPREHENSIVE_3D_SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.34"

ALGORITHM_NAME = "mstoolkit reference model"
RESEARCH_NOTICE = "research software, not for clinical use"
MANUFACTURER = "mstoolkit"

# Codes (SNOMED CT "SCT", DICOM "DCM", UCUM units), as listed in PS3.16.
MORPHOLOGICALLY_ALTERED_STRUCTURE = Code("49755003", "SCT", "Morphologically Altered Structure")  # CID 7150
LESION = Code("52988006", "SCT", "Lesion")  # CID 7151 (pydicom's codes.SCT.Lesion)
BRAIN = Code("12738006", "SCT", "Brain")  # finding site
ARTIFICIAL_INTELLIGENCE = Code("123110", "DCM", "Artificial Intelligence")  # CID 7162, algorithm family
IMAGING_PROCEDURE = Code("363679005", "SCT", "Imaging procedure")  # CID 100, procedure reported
VOLUME = Code("118565006", "SCT", "Volume")
NUMBER_OF_LESIONS = Code("246206008", "SCT", "Number of lesions")
SUM_OF_SEGMENTED_VOXELS = Code("126030", "DCM", "Sum of segmented voxel method for volume")  # CID 7474
DEVICE = Code("121007", "DCM", "Device")  # CID 270, the observer type of an algorithm
CENTER_OF_MASS = Code("128138", "DCM", "Center of Mass")  # purpose of the centroid point
MILLILITRE = Code("mL", "UCUM", "milliliter")
CUBIC_MILLIMETRE = Code("mm3", "UCUM", "cubic millimeter")
LESIONS_UNIT = Code("{lesions}", "UCUM", "lesions")  # a UCUM annotation: a count of lesions

ALL_LESIONS = "all lesions"
LESION_SEGMENT_NUMBER = 1

#: A pixel centre of the source must fall on a voxel centre of the mask's grid to
#: within this fraction of a voxel (DICOM decimal strings keep about 1e-4 mm).
VOXEL_TOLERANCE = 0.05


def _read_sources(source: DicomSeries) -> tuple[list[Dataset], tuple[int, ...], np.ndarray]:
    """The source images (headers and pixels), and the grid load_series puts them on.

    :func:`load_series` refuses what it cannot stack (objects without pixel data,
    mixed orientations, missing slices) with a message that names the series."""
    image, grid_affine = load_series(source)
    datasets = [pydicom.dcmread(path) for path in source.files]
    return datasets, image.shape, grid_affine


def _voxel_indices(ds: Dataset, affine: np.ndarray, shape: tuple[int, ...], label: str) -> np.ndarray:
    """Mask voxel index (i, j, k) of every pixel of the image ``ds``, shape (rows, columns, 3).

    PS3.3 §C.7.6.2.1.1: the pixel at row r, column c lies at
    ``ImagePositionPatient + c · ΔC · row_direction + r · ΔR · column_direction`` (LPS mm),
    where PixelSpacing = (ΔR, ΔC) is (spacing between rows, spacing between columns)."""
    orientation = np.array([float(v) for v in ds.ImageOrientationPatient])
    row_direction, column_direction = orientation[:3], orientation[3:]
    spacing_between_rows, spacing_between_columns = (float(v) for v in ds.PixelSpacing)
    position = np.array([float(v) for v in ds.ImagePositionPatient])
    rows, columns = np.meshgrid(np.arange(int(ds.Rows)), np.arange(int(ds.Columns)), indexing="ij")
    lps = (position
           + columns[..., None] * spacing_between_columns * row_direction
           + rows[..., None] * spacing_between_rows * column_direction)
    ras = lps * LPS_TO_RAS.diagonal()[:3]
    world_to_voxel = np.linalg.inv(affine)
    voxels = ras @ world_to_voxel[:3, :3].T + world_to_voxel[:3, 3]
    indices = np.rint(voxels)
    if np.abs(voxels - indices).max() > VOXEL_TOLERANCE or (indices < 0).any() or (indices >= np.array(shape[:3])).any():
        raise MSToolkitInputError(
            f"{label}: an image of the series does not lie on the mask's grid. "
            "Pass the mask on the grid load_series(source) gives for this series."
        )
    return indices.astype(np.intp)


def write_segmentation(
    mask: np.ndarray,
    affine: np.ndarray,
    source: DicomSeries,
    path: str | os.PathLike,
    *,
    model_version: str = mstoolkit.__version__,
    series_number: int = 900,
) -> Path:
    """Write ``mask`` as a binary DICOM Segmentation of the FLAIR series ``source``.

    ``mask`` (binary, x y z) and ``affine`` must be the grid ``load_series(source)``
    gives; each frame of the SEG references the source image it lies on, and the SEG
    joins the source's study and Frame of Reference in a new series. A mask without
    lesions still gives a valid SEG (all its frames empty), so "0 lesions" reaches the
    PACS too. Introduced in notebook 08.

    Raises :class:`~mstoolkit.data.io.MSToolkitInputError` for a non-binary mask, a
    mask on another grid, or a source that is not a stackable image series.
    Returns ``path``.
    """
    import highdicom as hd

    if not 0 < len(model_version) <= 40:
        # It goes into Long String (LO) attributes of 64 characters at most.
        raise MSToolkitInputError(f"model_version must be 1 to 40 characters, got {len(model_version)}; pass a short version such as '1.2'.")
    mask = check_binary_mask(mask)
    if mask.ndim != 3:
        raise MSToolkitInputError(f"mask has shape {mask.shape}; expected a 3D volume (x, y, z) on the FLAIR's grid.")
    datasets, grid_shape, grid_affine = _read_sources(source)
    if mask.shape != tuple(grid_shape):
        raise MSToolkitInputError(
            f"mask has shape {mask.shape} but {source.label} stacks to {tuple(grid_shape)}: "
            "pass the mask on the FLAIR's grid, as load_series(source) gives it."
        )
    check_same_grid(mask.shape, np.asarray(affine, dtype=np.float64), grid_shape, grid_affine,
                    names=("mask", f"{source.label} (as load_series gives it)"))

    # Frame k of the SEG lies on source image k: gather each image's pixels from the mask.
    frames = np.stack([mask[tuple(np.moveaxis(_voxel_indices(ds, grid_affine, grid_shape, source.label), -1, 0))]
                       for ds in datasets])
    has_lesions = bool(frames.any())

    algorithm = hd.AlgorithmIdentificationSequence(name=ALGORITHM_NAME, family=ARTIFICIAL_INTELLIGENCE, version=model_version)
    segment = hd.seg.SegmentDescription(
        segment_number=LESION_SEGMENT_NUMBER,
        segment_label="MS lesions",
        segmented_property_category=MORPHOLOGICALLY_ALTERED_STRUCTURE,
        segmented_property_type=LESION,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        tracking_id=ALL_LESIONS,
        tracking_uid=generate_uid(),
        anatomic_regions=[BRAIN],
    )
    segmentation = hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_instance_uid=generate_uid(),
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=ALGORITHM_NAME,
        software_versions=[f"mstoolkit {mstoolkit.__version__}", f"model {model_version}"],  # two values
        device_serial_number="none",
        series_description=f"MS lesions, {RESEARCH_NOTICE}",
        content_label="MS_LESIONS",
        content_description=f"Automatic MS lesions, {RESEARCH_NOTICE}",
        content_qualification=hd.ContentQualificationValues.RESEARCH,
        # Empty frames are left out as usual; a mask without lesions keeps them all, because
        # a SEG must hold at least one frame (highdicom would fall back to that with a warning).
        omit_empty_frames=has_lesions,
    )
    path = write_atomic(path, lambda tmp: segmentation.save_as(tmp))
    log.info("segmentation of %s written: %d frames", source.label, int(segmentation.NumberOfFrames))
    return path


def _read_dicom(path: str | os.PathLike, expected_sop_class: str, writer: str) -> Dataset:
    """The DICOM file at ``path``, refused unless it is of ``expected_sop_class``.

    A missing file or one that is not DICOM is a user's mix-up; the message names the
    function that writes the right file (never the path, which may hold a patient's name)."""
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError) as error:
        raise MSToolkitInputError(f"the file cannot be read as DICOM ({type(error).__name__}); pass the file {writer} wrote.") from None
    found = pydicom.uid.UID(str(ds.get("SOPClassUID", ""))).name or "DICOM object without a SOP class"
    if ds.get("SOPClassUID") != expected_sop_class:
        raise MSToolkitInputError(
            f"the file is a {found}, not a {pydicom.uid.UID(expected_sop_class).name}; pass the file {writer} wrote."
        )
    return ds


def read_segmentation(path: str | os.PathLike, source: DicomSeries) -> np.ndarray:
    """The SEG's mask (uint8) on the grid load_series(source) gives.

    Reads the SEG with highdicom, takes the frames for each source image by its SOP
    Instance UID (images without a frame are empty) and puts their pixels back at the
    voxels they came from. Refuses a SEG that was not made on ``source``.
    Introduced in notebook 08.
    """
    import highdicom as hd

    segmentation = hd.seg.Segmentation.from_dataset(_read_dicom(path, SEGMENTATION_STORAGE, "write_segmentation"), copy=False)
    referenced_series = {item.SeriesInstanceUID for item in segmentation.get("ReferencedSeriesSequence", [])}
    if source.series_uid not in referenced_series or segmentation.StudyInstanceUID != source.study_uid:
        raise MSToolkitInputError(
            f"the segmentation was not made on {source.label}: it references another series. "
            "Pass the series the segmentation was drawn on."
        )
    datasets, grid_shape, grid_affine = _read_sources(source)
    pixels = segmentation.get_pixels_by_source_instance(
        [ds.SOPInstanceUID for ds in datasets],
        segment_numbers=[LESION_SEGMENT_NUMBER],
        assert_missing_frames_are_empty=True,  # frames without lesion were left out when writing
        dtype=np.uint8,
    )[..., 0]
    mask = np.zeros(grid_shape, dtype=np.uint8)
    for ds, frame in zip(datasets, pixels):
        indices = _voxel_indices(ds, grid_affine, grid_shape, source.label)
        mask[tuple(np.moveaxis(indices, -1, 0))] = frame
    return mask


def _lps_point(centroid_ras) -> np.ndarray:
    """A RAS millimetre point as DICOM's LPS, shape (1, 3) as SCOORD3D needs."""
    return (np.asarray(centroid_ras, dtype=np.float64)[:3] * LPS_TO_RAS.diagonal()[:3])[None, :]


def write_measurement_report(
    report: Mapping,
    segmentation_path: str | os.PathLike,
    source: DicomSeries,
    path: str | os.PathLike,
    *,
    series_number: int = 901,
) -> Path:
    """Write the lesion numbers of ``report`` as a TID 1500 Measurement Report (Comprehensive 3D SR).

    ``report`` is the pipeline's report: ``total_lesion_volume_ml``, ``lesion_count`` and
    ``lesions`` (each with ``id``, ``volume_mm3`` and ``centroid_mm`` in RAS); other keys are
    ignored. The whole lesion load is one volumetric ROI group (tracking identifier
    "all lesions") whose region is the SEG at ``segmentation_path``; each lesion is a
    measurement group tracked as "lesion <id>", its volume referencing its centroid as a
    3D point in the FLAIR's Frame of Reference. The SR lists the SEG and the FLAIR images
    as its evidence. Introduced in notebook 08.
    """
    import highdicom as hd

    for key in ("total_lesion_volume_ml", "lesion_count", "lesions"):
        if key not in report:
            raise MSToolkitInputError(f"report has no '{key}'; pass the report dict the pipeline makes (total_lesion_volume_ml, lesion_count, lesions).")
    lesions = list(report["lesions"])
    for lesion in lesions:
        missing = [key for key in ("id", "volume_mm3", "centroid_mm") if key not in lesion]
        if missing:
            raise MSToolkitInputError(f"a lesion of the report has no {', '.join(missing)}; each lesion needs id, volume_mm3 and centroid_mm (RAS).")
    if int(report["lesion_count"]) != len(lesions):
        raise MSToolkitInputError(
            f"report says lesion_count {report['lesion_count']} but lists {len(lesions)} lesions; pass a consistent report."
        )
    segmentation = _read_dicom(segmentation_path, SEGMENTATION_STORAGE, "write_segmentation")
    referenced_series = {item.SeriesInstanceUID for item in segmentation.get("ReferencedSeriesSequence", [])}
    if source.series_uid not in referenced_series:
        raise MSToolkitInputError(
            f"the segmentation was not made on {source.label}; pass the series the segmentation was drawn on."
        )
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in source.files]
    frame_of_reference = segmentation.FrameOfReferenceUID

    segment = segmentation.SegmentSequence[0]
    model_version = str(segment.SegmentationAlgorithmIdentificationSequence[0].AlgorithmVersion)
    algorithm = hd.sr.AlgorithmIdentification(name=ALGORITHM_NAME, version=model_version, family=ARTIFICIAL_INTELLIGENCE)
    device = hd.sr.ObserverContext(
        observer_type=DEVICE,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(), name=ALGORITHM_NAME, manufacturer_name=MANUFACTURER, model_name=ALGORITHM_NAME),
    )
    # Built from the SEG's UIDs: highdicom 0.28's ReferencedSegment.from_segmentation looks for the
    # segment number in each frame, where a one-segment SEG keeps it in the shared functional groups.
    lesion_segment = hd.sr.ReferencedSegment(
        sop_class_uid=SEGMENTATION_STORAGE,
        sop_instance_uid=segmentation.SOPInstanceUID,
        segment_number=LESION_SEGMENT_NUMBER,
        source_series=hd.sr.SourceSeriesForSegmentation(source.series_uid),
    )
    lesion_load = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        # The segment's own tracking UID: a viewer links the measurements to the segment it shows.
        tracking_identifier=hd.sr.TrackingIdentifier(uid=segment.get("TrackingUID") or generate_uid(), identifier=ALL_LESIONS),
        referenced_segment=lesion_segment,
        finding_type=LESION,
        finding_sites=[hd.sr.FindingSite(BRAIN)],
        algorithm_id=algorithm,
        measurements=[
            hd.sr.Measurement(name=VOLUME, value=float(report["total_lesion_volume_ml"]), unit=MILLILITRE,
                              method=SUM_OF_SEGMENTED_VOXELS, algorithm_id=algorithm),
            hd.sr.Measurement(name=NUMBER_OF_LESIONS, value=len(lesions), unit=LESIONS_UNIT, algorithm_id=algorithm),
        ],
    )
    per_lesion = []
    for lesion in lesions:
        centroid = hd.sr.CoordinatesForMeasurement3D(
            graphic_type=hd.sr.GraphicTypeValues3D.POINT,
            graphic_data=_lps_point(lesion["centroid_mm"]),
            frame_of_reference_uid=frame_of_reference,
            purpose=CENTER_OF_MASS,
        )
        per_lesion.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=f"lesion {int(lesion['id'])}"),
            finding_type=LESION,
            finding_sites=[hd.sr.FindingSite(BRAIN)],
            algorithm_id=algorithm,
            measurements=[hd.sr.Measurement(name=VOLUME, value=float(lesion["volume_mm3"]), unit=CUBIC_MILLIMETRE,
                                            method=SUM_OF_SEGMENTED_VOXELS, algorithm_id=algorithm,
                                            referenced_coordinates=[centroid])],
        ))
    measurement_report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=IMAGING_PROCEDURE,
        imaging_measurements=[lesion_load, *per_lesion],
    )
    document = hd.sr.Comprehensive3DSR(
        evidence=[*sources, segmentation],
        content=measurement_report,
        series_instance_uid=generate_uid(),
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        series_description=f"MS lesion report, {RESEARCH_NOTICE}",
        content_qualification=hd.ContentQualificationValues.RESEARCH,
        is_complete=True,
    )
    path = write_atomic(path, lambda tmp: document.save_as(tmp))
    log.info("measurement report of %s written: %d lesions", source.label, len(lesions))
    return path


def _value(group, name: Code) -> float | None:
    for measurement in group.get_measurements(name=name):
        return float(measurement.value)
    return None


def read_measurement_report(path: str | os.PathLike) -> dict:
    """The numbers of a report written by :func:`write_measurement_report`.

    Returns ``{"total_lesion_volume_ml": float, "lesion_count": int,
    "lesion_volumes_mm3": [...] (by lesion id), "lesion_ids": [...],
    "segmentation_uid": SOP Instance UID of the referenced SEG, "study_uid": ...}``.
    Introduced in notebook 08.
    """
    import highdicom as hd

    document = hd.sr.Comprehensive3DSR.from_dataset(_read_dicom(path, COMPREHENSIVE_3D_SR_STORAGE, "write_measurement_report"), copy=False)
    content = hd.sr.MeasurementReport.from_sequence([document])  # the document is the root container
    loads = [g for g in content.get_volumetric_roi_measurement_groups() if g.tracking_identifier == ALL_LESIONS]
    if len(loads) != 1:
        raise MSToolkitInputError("the report holds no 'all lesions' measurement group; pass a report write_measurement_report wrote.")
    lesion_load = loads[0]
    total_ml, count = _value(lesion_load, VOLUME), _value(lesion_load, NUMBER_OF_LESIONS)
    if total_ml is None or count is None:
        raise MSToolkitInputError("the report's 'all lesions' group lacks the total volume or the lesion count; pass a report write_measurement_report wrote.")
    lesions = []
    for group in content.get_image_measurement_groups():
        identifier = group.tracking_identifier or ""
        if identifier.startswith("lesion "):
            lesions.append((int(identifier.split()[1]), _value(group, VOLUME)))
    lesions.sort()
    return {
        "total_lesion_volume_ml": total_ml,
        "lesion_count": int(count),
        "lesion_volumes_mm3": [volume for _, volume in lesions],
        "lesion_ids": [lesion_id for lesion_id, _ in lesions],
        "segmentation_uid": lesion_load.referenced_segment.referenced_sop_instance_uid,
        "study_uid": str(document.StudyInstanceUID),
    }
