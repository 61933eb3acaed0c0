"""DICOM out: the SEG overlays its FLAIR pixel for pixel, the SR holds the report's numbers."""

from __future__ import annotations

import logging
import warnings

import highdicom as hd
import numpy as np
import pydicom
import pytest

from mstoolkit.clinical.dicom_out import (
    COMPREHENSIVE_3D_SR_STORAGE,
    SEGMENTATION_STORAGE,
    read_measurement_report,
    read_segmentation,
    write_measurement_report,
    write_segmentation,
)
from mstoolkit.clinical.dicom_series import find_series, load_series, write_dicom_series
from mstoolkit.data.io import MSToolkitInputError

SHAPE = (40, 48, 12)


def rotation(degrees_x: float, degrees_z: float) -> np.ndarray:
    ax, az = np.radians([degrees_x, degrees_z])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ rx


def axial_affine() -> np.ndarray:
    affine = np.diag([0.9, 0.9, 3.0, 1.0])
    affine[:3, 3] = [-18.0, -20.0, -15.0]
    return affine


def oblique_affine() -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = rotation(17.0, -25.0) @ np.diag([0.9, 1.1, 3.0])
    affine[:3, 3] = [-40.5, 12.25, 30.0]
    return affine


def lps_reversed_affine() -> np.ndarray:
    # Stored as LPS (rows grow to the left, columns to the posterior) with slices from top to bottom.
    affine = np.diag([-0.8, -0.8, -1.5, 1.0])
    affine[:3, 3] = [50.0, 60.0, 10.0]
    return affine


def sagittal_affine() -> np.ndarray:
    # Tilted sagittal slices: the stored axes run anterior, superior, right, so RAS+ reorders them.
    permutation = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    affine = np.eye(4)
    affine[:3, :3] = rotation(12.0, 8.0) @ permutation @ np.diag([1.0, 1.0, 1.2])
    affine[:3, 3] = [-5.0, -80.0, -60.0]
    return affine


GEOMETRIES = {"axial": axial_affine(), "oblique": oblique_affine(), "LPS-reversed": lps_reversed_affine(),
              "sagittal": sagittal_affine()}


def lesion_blobs(shape=SHAPE, seed: int = 0) -> np.ndarray:
    """A few boxes of different sizes: a mask whose layout shows any axis mix-up."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(shape, dtype=np.uint8)
    for _ in range(5):
        corner = [int(rng.integers(0, n - 3)) for n in shape]
        size = [int(rng.integers(1, 4)) for _ in shape]
        mask[tuple(slice(c, c + s) for c, s in zip(corner, size))] = 1
    mask[0, 0, 0] = 1  # a corner voxel: an off-by-one shift would lose it
    return mask


def flair_series(tmp_path, affine, *, truth=None, name="flair", study_uid=None, series_number=3):
    """Write a FLAIR-like series whose bright voxels are ``truth`` (on the stored grid); give the series."""
    rng = np.random.default_rng(1)
    truth = lesion_blobs() if truth is None else truth
    image = rng.normal(300.0, 20.0, truth.shape) + 1000.0 * truth
    write_dicom_series(image, affine, tmp_path / name, description="AX FLAIR", tr=9000, te=90, ti=2500,
                       series_number=series_number, study_uid=study_uid)
    return find_series(tmp_path / name).series[0]


def mask_on_grid(series):
    """The lesion mask on the grid load_series gives, taken from the bright voxels of the image."""
    image, affine = load_series(series)
    return (image > 800).astype(np.uint8), affine


@pytest.fixture
def written(tmp_path):
    """A FLAIR series, its SEG and its SR (two lesions)."""
    series = flair_series(tmp_path, oblique_affine())
    mask, affine = mask_on_grid(series)
    seg_path = write_segmentation(mask, affine, series, tmp_path / "lesion_seg.dcm", model_version="test-1")
    report = {
        "total_lesion_volume_ml": 0.1234,
        "lesion_count": 2,
        "lesions": [
            {"id": 2, "volume_mm3": 12.5, "centroid_mm": [1.0, -2.0, 3.5], "location": "juxtacortical"},
            {"id": 1, "volume_mm3": 110.9, "centroid_mm": [-10.25, 20.0, 5.0], "location": "periventricular"},
        ],
        "model": "ignored extra key",
    }
    sr_path = write_measurement_report(report, seg_path, series, tmp_path / "report_sr.dcm")
    return series, mask, seg_path, sr_path, report


@pytest.mark.parametrize("affine", GEOMETRIES.values(), ids=GEOMETRIES.keys())
def test_segmentation_round_trip_is_voxel_exact(tmp_path, affine):
    series = flair_series(tmp_path, affine)
    mask, grid_affine = mask_on_grid(series)
    assert 0 < mask.sum() < mask.size
    path = write_segmentation(mask, grid_affine, series, tmp_path / "lesion_seg.dcm")
    back = read_segmentation(path, series)
    assert back.dtype == np.uint8 and back.shape == mask.shape
    np.testing.assert_array_equal(back, mask)


@pytest.mark.parametrize("affine", GEOMETRIES.values(), ids=GEOMETRIES.keys())
def test_each_frame_overlays_the_source_image_it_references(tmp_path, affine):
    # Independent of the toolkit's own mapping: the lesion pixels of each FLAIR image (bright)
    # must be the SEG's pixels for that image, as highdicom gives them by SOP Instance UID.
    series = flair_series(tmp_path, affine)
    mask, grid_affine = mask_on_grid(series)
    path = write_segmentation(mask, grid_affine, series, tmp_path / "lesion_seg.dcm")
    segmentation = hd.seg.segread(path)
    for file in series.files:
        source = pydicom.dcmread(file)
        bright = (source.pixel_array * float(source.RescaleSlope) + float(source.RescaleIntercept)) > 800
        frame = segmentation.get_pixels_by_source_instance([source.SOPInstanceUID], segment_numbers=[1],
                                                           assert_missing_frames_are_empty=True)[0, :, :, 0]
        np.testing.assert_array_equal(frame, bright)


def test_seg_and_sr_join_the_source_study_in_new_series(written):
    series, _, seg_path, sr_path, _ = written
    source = pydicom.dcmread(series.files[0], stop_before_pixels=True)
    seg = pydicom.dcmread(seg_path)
    sr = pydicom.dcmread(sr_path)
    assert seg.StudyInstanceUID == sr.StudyInstanceUID == series.study_uid
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert len({seg.SeriesInstanceUID, sr.SeriesInstanceUID, series.series_uid}) == 3
    # Patient identifiers are the source's, copied as the standard requires, not made up.
    assert seg.PatientID == sr.PatientID == source.PatientID
    assert seg.PatientName == source.PatientName


def test_pydicom_sees_the_sop_classes_modalities_and_references(written):
    series, _, seg_path, sr_path, _ = written
    seg = pydicom.dcmread(seg_path)
    sr = pydicom.dcmread(sr_path)
    source_uids = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in series.files}

    assert seg.SOPClassUID == SEGMENTATION_STORAGE == "1.2.840.10008.5.1.4.1.1.66.4"
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == series.series_uid
    assert {item.ReferencedSOPInstanceUID for item in referenced.ReferencedInstanceSequence} == source_uids
    segment = seg.SegmentSequence[0]
    assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "52988006"
    assert segment.SegmentAlgorithmType == "AUTOMATIC"
    algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "mstoolkit reference model" and algorithm.AlgorithmVersion == "test-1"
    assert algorithm.AlgorithmFamilyCodeSequence[0].CodeMeaning == "Artificial Intelligence"
    assert "not for clinical use" in seg.SeriesDescription and seg.ContentQualification == "RESEARCH"

    assert sr.SOPClassUID == COMPREHENSIVE_3D_SR_STORAGE == "1.2.840.10008.5.1.4.1.1.88.34"
    assert sr.Modality == "SR"
    assert "not for clinical use" in sr.SeriesDescription and sr.ContentQualification == "RESEARCH"
    evidence = {item.ReferencedSOPInstanceUID
                for study in sr.CurrentRequestedProcedureEvidenceSequence
                for series_item in study.ReferencedSeriesSequence
                for item in series_item.ReferencedSOPSequence}
    assert evidence == source_uids | {seg.SOPInstanceUID}
    # The lesion load's region is the SEG's segment 1 (a SEG reference somewhere in the content tree).
    text = str(sr)
    assert seg.SOPInstanceUID in text and "Referenced Segment Number" in text
    # ... and it carries the segment's tracking UID, so a viewer links the numbers to the segment.
    assert segment.TrackingUID in text


def test_report_numbers_come_back(written):
    series, _, seg_path, sr_path, report = written
    back = read_measurement_report(sr_path)
    assert back["total_lesion_volume_ml"] == pytest.approx(report["total_lesion_volume_ml"])
    assert back["lesion_count"] == 2
    assert back["lesion_ids"] == [1, 2]
    assert back["lesion_volumes_mm3"] == pytest.approx([110.9, 12.5])  # by lesion id
    assert back["segmentation_uid"] == pydicom.dcmread(seg_path).SOPInstanceUID
    assert back["study_uid"] == series.study_uid


def test_lesion_centroids_are_stored_as_lps_points(written):
    _, _, seg_path, sr_path, _ = written
    document = hd.sr.srread(sr_path)
    content = hd.sr.MeasurementReport.from_sequence([document])
    points = {}
    for group in content.get_image_measurement_groups():
        (measurement,) = group.get_measurements()
        (coordinates,) = measurement.referenced_coordinates
        assert coordinates.ReferencedFrameOfReferenceUID == pydicom.dcmread(seg_path).FrameOfReferenceUID
        points[group.tracking_identifier] = list(coordinates.value[0])
    assert points["lesion 1"] == pytest.approx([10.25, -20.0, 5.0])  # RAS (-10.25, 20, 5) in LPS
    assert points["lesion 2"] == pytest.approx([-1.0, 2.0, 3.5])


def test_no_lesions_still_gives_a_valid_seg_and_sr(tmp_path, caplog):
    series = flair_series(tmp_path, axial_affine(), truth=np.zeros(SHAPE, dtype=np.uint8))
    _, affine = load_series(series)
    empty = np.zeros(SHAPE, dtype=bool)
    # "No lesions" is a normal result: no warning for the user, from us or from highdicom.
    with warnings.catch_warnings(), caplog.at_level(logging.WARNING):
        warnings.simplefilter("error")
        seg_path = write_segmentation(empty, affine, series, tmp_path / "lesion_seg.dcm")
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]
    # Every frame is there (empty), each on its FLAIR image: a viewer shows "nothing" on every slice.
    assert pydicom.dcmread(seg_path, stop_before_pixels=True).NumberOfFrames == SHAPE[2]
    assert read_segmentation(seg_path, series).sum() == 0
    report = {"total_lesion_volume_ml": 0.0, "lesion_count": 0, "lesions": []}
    sr_path = write_measurement_report(report, seg_path, series, tmp_path / "report_sr.dcm")
    back = read_measurement_report(sr_path)
    assert back["lesion_count"] == 0 and back["total_lesion_volume_ml"] == 0.0 and back["lesion_volumes_mm3"] == []
    assert back["segmentation_uid"] == pydicom.dcmread(seg_path).SOPInstanceUID


def test_mask_on_another_grid_is_refused_naming_both_shapes(tmp_path):
    series = flair_series(tmp_path, axial_affine())
    mask, affine = mask_on_grid(series)
    target = tmp_path / "lesion_seg.dcm"
    with pytest.raises(MSToolkitInputError, match=r"\(40, 48, 11\).*\(40, 48, 12\).*FLAIR's grid"):
        write_segmentation(mask[:, :, :11], affine, series, target)
    assert not target.exists()


def test_mask_from_another_series_is_refused(tmp_path):
    # Same shape, other position in space: a mask made on another scan of the patient.
    flair = flair_series(tmp_path, axial_affine())
    mask, _ = mask_on_grid(flair)
    other_affine = axial_affine()
    other_affine[:3, 3] += [5.0, 0.0, 0.0]
    with pytest.raises(MSToolkitInputError, match="different affines"):
        write_segmentation(mask, other_affine, flair, tmp_path / "lesion_seg.dcm")


def test_overlong_model_version_is_refused(tmp_path):
    series = flair_series(tmp_path, axial_affine())
    mask, affine = mask_on_grid(series)
    with pytest.raises(MSToolkitInputError, match="model_version must be 1 to 40 characters, got 41"):
        write_segmentation(mask, affine, series, tmp_path / "lesion_seg.dcm", model_version="x" * 41)


def test_non_binary_mask_is_refused(tmp_path):
    series = flair_series(tmp_path, axial_affine())
    _, affine = mask_on_grid(series)
    probability = np.random.default_rng(0).random(SHAPE)
    with pytest.raises(MSToolkitInputError, match="not binary.*prob >= 0.5"):
        write_segmentation(probability, affine, series, tmp_path / "lesion_seg.dcm")


def test_source_without_pixel_data_is_refused(tmp_path):
    series = flair_series(tmp_path, axial_affine())
    mask, affine = mask_on_grid(series)
    for file in series.files:
        ds = pydicom.dcmread(file)
        del ds.PixelData
        ds.save_as(file)
    with pytest.raises(MSToolkitInputError, match="series 3 'AX FLAIR'.*non-image object"):
        write_segmentation(mask, affine, series, tmp_path / "lesion_seg.dcm")


def test_reading_a_seg_against_another_series_is_refused(written, tmp_path):
    series, mask, seg_path, _, report = written
    other = flair_series(tmp_path, oblique_affine(), name="other", study_uid=series.study_uid, series_number=4)
    with pytest.raises(MSToolkitInputError, match="not made on series 4 'AX FLAIR'"):
        read_segmentation(seg_path, other)
    with pytest.raises(MSToolkitInputError, match="not made on series 4 'AX FLAIR'"):
        write_measurement_report(report, seg_path, other, tmp_path / "report_sr.dcm")


def test_wrong_files_and_inconsistent_reports_are_refused(written, tmp_path):
    series, _, seg_path, sr_path, report = written
    with pytest.raises(MSToolkitInputError, match="is a Comprehensive 3D SR.*not a Segmentation Storage"):
        read_segmentation(sr_path, series)
    with pytest.raises(MSToolkitInputError, match="not a Comprehensive 3D SR"):
        read_measurement_report(seg_path)
    (tmp_path / "notes.txt").write_text("not DICOM")
    with pytest.raises(MSToolkitInputError, match="cannot be read as DICOM"):
        read_segmentation(tmp_path / "notes.txt", series)
    with pytest.raises(MSToolkitInputError, match="lesion_count 3 but lists 2 lesions"):
        write_measurement_report({**report, "lesion_count": 3}, seg_path, series, tmp_path / "again.dcm")
    with pytest.raises(MSToolkitInputError, match="no 'lesions'"):
        write_measurement_report({"total_lesion_volume_ml": 1.0, "lesion_count": 0}, seg_path, series, tmp_path / "again.dcm")
    with pytest.raises(MSToolkitInputError, match="has no centroid_mm"):
        write_measurement_report({**report, "lesions": [{"id": 1, "volume_mm3": 1.0}, report["lesions"][0]]},
                                 seg_path, series, tmp_path / "again.dcm")
    assert not (tmp_path / "again.dcm").exists()


def test_logs_name_the_series_not_the_patient(tmp_path, caplog):
    series = flair_series(tmp_path, axial_affine())
    mask, affine = mask_on_grid(series)
    patient = pydicom.dcmread(series.files[0], stop_before_pixels=True)
    with caplog.at_level(logging.DEBUG, logger="mstoolkit"):
        seg_path = write_segmentation(mask, affine, series, tmp_path / "lesion_seg.dcm")
        write_measurement_report({"total_lesion_volume_ml": 0.0, "lesion_count": 0, "lesions": []}, seg_path, series,
                                 tmp_path / "report_sr.dcm")
    assert "series 3 'AX FLAIR'" in caplog.text
    assert str(patient.PatientName) not in caplog.text and patient.PatientID not in caplog.text
