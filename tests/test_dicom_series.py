"""DICOM series in: grouping a folder, stacking a series in RAS+, and each refusal."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import generate_uid

from mstoolkit.clinical.dicom_series import dcm2niix_executable, find_series, load_series, write_dicom_series
from mstoolkit.data.io import MSToolkitInputError, load_image

SHAPE = (12, 10, 8)


def rotation(degrees_x: float, degrees_z: float) -> np.ndarray:
    ax, az = np.radians([degrees_x, degrees_z])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ rx


def oblique_affine() -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = rotation(17.0, -25.0) @ np.diag([0.9, 1.1, 3.0])
    affine[:3, 3] = [-40.5, 12.25, 30.0]
    return affine


def sagittal_affine() -> np.ndarray:
    # Sagittal slices, tilted: the array axes run anterior, superior, right, so RAS+ reorders them.
    permutation = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    affine = np.eye(4)
    affine[:3, :3] = rotation(12.0, 8.0) @ permutation @ np.diag([1.0, 1.0, 1.2])
    affine[:3, 3] = [-5.0, -80.0, -60.0]
    return affine


def las_affine() -> np.ndarray:
    # A radiological (LAS) grid: the first axis grows towards the left.
    affine = np.diag([-1.0, 1.2, 2.0, 1.0])
    affine[:3, 3] = [60.0, -70.0, -20.0]
    return affine


def lps_affine() -> np.ndarray:
    affine = np.diag([-0.8, -0.8, 1.5, 1.0])
    affine[:3, 3] = [50.0, 60.0, -10.0]
    return affine


def volume(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(300.0, 80.0, SHAPE) + np.arange(SHAPE[2])[None, None, :] * 50.0).astype(np.float32)


def rescale_step(path) -> float:
    return float(pydicom.dcmread(path, stop_before_pixels=True).RescaleSlope)


def nifti_to_dicom(tmp_path, affine, **kwargs):
    """Save a NIfTI on ``affine``, write its raw (not reoriented) grid as DICOM; give both folders."""
    nifti = tmp_path / "image.nii.gz"
    nib.save(nib.Nifti1Image(volume(), affine), nifti)
    raw = nib.load(nifti)
    out = tmp_path / "dicom"
    kwargs.setdefault("description", "AX FLAIR")
    paths = write_dicom_series(raw.get_fdata(), raw.affine, out, tr=9000, te=90, ti=2500, **kwargs)
    return nifti, out, paths


def the_series(folder):
    found = find_series(folder)
    assert len(found.series) == 1
    return found.series[0]


@pytest.mark.parametrize(
    "affine", [oblique_affine(), sagittal_affine(), las_affine(), lps_affine()], ids=["oblique", "sagittal", "LAS", "LPS"]
)
def test_round_trip_keeps_geometry_and_values(tmp_path, affine):
    nifti, out, paths = nifti_to_dicom(tmp_path, affine)
    expected_image, expected_affine = load_image(nifti)
    image, image_affine = load_series(the_series(out))
    assert image.dtype == np.float32 and image_affine.dtype == np.float64
    assert image.shape == expected_image.shape
    np.testing.assert_allclose(image_affine, expected_affine, atol=1e-4)
    # int16 pixels with a rescale slope: exact to half a step (plus float32 rounding).
    step = rescale_step(paths[0])
    assert np.abs(image - expected_image).max() <= step / 2 + 1e-3


@pytest.mark.parametrize("affine", [oblique_affine(), sagittal_affine(), las_affine()], ids=["oblique", "sagittal", "LAS"])
def test_simpleitk_gdcm_reader_agrees(tmp_path, affine):
    _, out, paths = nifti_to_dicom(tmp_path, affine)
    series = the_series(out)
    image, image_affine = load_series(series)

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(out), series.series_uid))
    itk = reader.Execute()
    direction = np.array(itk.GetDirection()).reshape(3, 3)
    affine_lps = np.eye(4)
    affine_lps[:3, :3] = direction * np.array(itk.GetSpacing())
    affine_lps[:3, 3] = itk.GetOrigin()
    itk_array = sitk.GetArrayFromImage(itk).transpose(2, 1, 0)  # (z, y, x) → (x, y, z)
    canonical = nib.as_closest_canonical(nib.Nifti1Image(itk_array.astype(np.float32), np.diag([-1, -1, 1, 1]) @ affine_lps))

    np.testing.assert_allclose(image_affine, canonical.affine, atol=1e-4)
    np.testing.assert_allclose(nib.affines.voxel_sizes(image_affine), nib.affines.voxel_sizes(canonical.affine), atol=1e-4)
    assert np.abs(image - canonical.get_fdata()).max() <= rescale_step(paths[0]) / 2 + 1e-3


def test_order_comes_from_positions_not_instance_numbers_or_names(tmp_path):
    nifti, out, paths = nifti_to_dicom(tmp_path, oblique_affine())
    instance_numbers = [int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber) for p in paths]
    assert instance_numbers != sorted(instance_numbers), "the writer should give unreliable InstanceNumbers"
    assert [p.name for p in paths] != sorted(p.name for p in paths), "the writer should give opaque file names"
    assert all(p.suffix == "" for p in paths)
    expected, _ = load_image(nifti)
    # Rename the files once more, in reverse slice order: nothing changes.
    for k, path in enumerate(paths):
        path.rename(out / f"{k:04d}"[::-1])
    image, _ = load_series(the_series(out))
    assert np.abs(image - expected).max() <= rescale_step(out / "0000") / 2 + 1e-3


def test_folder_with_two_series_and_other_files_groups_correctly(tmp_path):
    export = tmp_path / "export"
    flair = write_dicom_series(volume(1), oblique_affine(), export / "A" / "B", description="AX FLAIR",
                               protocol="flair_3d", tr=5000, te=390, ti=1800, series_number=3, seed=1)
    study = pydicom.dcmread(flair[0], stop_before_pixels=True).StudyInstanceUID
    t1 = write_dicom_series(volume(2)[:, :, :5], np.diag([1.0, 1.0, 1.0, 1.0]), export / "A" / "C",
                            description="T1 MPRAGE", tr=2300, te=2.98, ti=900, series_number=5,
                            contrast_bolus_agent="Gadobutrol", study_uid=study, seed=2)
    (export / "README.TXT").write_text("Viewer: run the program on this CD.\n")
    (export / "A" / "DATA").write_bytes(np.random.default_rng(0).bytes(2048))

    found = find_series(export)
    assert found.n_skipped == 2
    assert [s.description for s in found.series] == ["AX FLAIR", "T1 MPRAGE"]
    first, second = found.series
    assert first.study_uid == second.study_uid == study and first.series_uid != second.series_uid
    assert (first.n_images, second.n_images) == (len(flair), len(t1))
    assert set(first.files) == set(flair) and set(second.files) == set(t1)
    assert (first.repetition_time, first.echo_time, first.inversion_time) == (5000.0, 390.0, 1800.0)
    assert first.protocol_name == "flair_3d" and first.modality == "MR" and first.series_number == 3
    assert second.contrast_bolus_agent == "Gadobutrol" and first.contrast_bolus_agent == ""
    assert second.image_type == "ORIGINAL\\PRIMARY\\M\\ND" and second.mr_acquisition_type == "3D"
    assert load_series(second)[0].shape == (SHAPE[0], SHAPE[1], 5)
    assert "PHANTOM" not in repr(found)


def test_files_without_preamble_and_file_meta_are_read(tmp_path):
    # As on old CDs: the bare data set, implicit VR little endian, no "DICM" marker.
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    nifti, out, paths = nifti_to_dicom(tmp_path, las_affine())
    for path in paths[::2]:
        bare = pydicom.Dataset(pydicom.dcmread(path))
        buffer = DicomBytesIO()
        buffer.is_little_endian, buffer.is_implicit_VR = True, True
        write_dataset(buffer, bare)
        path.write_bytes(buffer.getvalue())
    (out / "NOTES").write_text("Viewer: run the program on this CD.\n")
    found = find_series(out)
    assert found.n_skipped == 1 and found.series[0].n_images == SHAPE[2]
    image, _ = load_series(found.series[0])
    assert np.abs(image - load_image(nifti)[0]).max() <= rescale_step(paths[1]) / 2 + 1e-3


def test_two_series_written_into_one_folder_stay_apart(tmp_path):
    first = write_dicom_series(volume(1), las_affine(), tmp_path, description="AX FLAIR", series_number=1)
    second = write_dicom_series(volume(2), las_affine(), tmp_path, description="AX T2", series_number=2)
    assert not set(first) & set(second)
    found = find_series(tmp_path)
    # Two studies: their order follows the random study UIDs.
    assert sorted((s.description, s.n_images) for s in found.series) == [("AX FLAIR", SHAPE[2]), ("AX T2", SHAPE[2])]


# --------------------------------------------------------------------------- refusals


def rewrite(path, change) -> None:
    ds = pydicom.dcmread(path)
    change(ds)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)


def refusal(tmp_path, series) -> str:
    with pytest.raises(MSToolkitInputError) as caught:
        load_series(series)
    message = str(caught.value)
    assert "\n" not in message and "PHANTOM" not in message and str(tmp_path) not in message
    assert "series 1 'AX FLAIR'" in message
    return message


@pytest.fixture
def series_files(tmp_path):
    _, out, paths = nifti_to_dicom(tmp_path, las_affine())
    return out, paths


def test_missing_slice_is_refused(tmp_path, series_files):
    out, paths = series_files
    paths[3].unlink()
    assert "uneven slice gaps" in refusal(tmp_path, the_series(out))


def test_duplicated_slice_is_refused(tmp_path, series_files):
    out, paths = series_files
    copy = out / "COPY"
    shutil.copy(paths[2], copy)
    uid = generate_uid()

    def new_instance(ds):
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.EchoTime = 180

    rewrite(copy, new_instance)
    assert "duplicated slices" in refusal(tmp_path, the_series(out))


def test_mixed_orientations_are_refused(tmp_path, series_files):
    out, paths = series_files

    def sagittal(ds):
        ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]

    rewrite(paths[4], sagittal)
    assert "mixes slice orientations" in refusal(tmp_path, the_series(out))


def test_mixed_sizes_are_refused(tmp_path, series_files):
    out, paths = series_files

    def cropped(ds):
        pixels = ds.pixel_array[:-2, :]
        ds.Rows = pixels.shape[0]
        ds.PixelData = pixels.tobytes()

    rewrite(paths[1], cropped)
    assert "mixes image sizes" in refusal(tmp_path, the_series(out))


def test_non_image_object_is_refused(tmp_path, series_files):
    out, paths = series_files
    reference = pydicom.dcmread(paths[0], stop_before_pixels=True)
    report = pydicom.Dataset()
    report.file_meta = pydicom.dataset.FileMetaDataset()
    report.file_meta.MediaStorageSOPClassUID = report.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    report.file_meta.MediaStorageSOPInstanceUID = report.SOPInstanceUID = generate_uid()
    report.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SeriesNumber", "SeriesDescription", "Modality"):
        setattr(report, keyword, reference.get(keyword))
    pydicom.dcmwrite(out / "SR0001", report, enforce_file_format=True)
    message = refusal(tmp_path, the_series(out))
    assert "non-image object" in message and "Basic Text SR" in message


def test_compressed_without_decoder_is_refused(tmp_path, series_files, monkeypatch):
    import types

    from pydicom.uid import JPEGLSLossless

    from mstoolkit.clinical import dicom_series

    # highdicom brings JPEG-LS decoders along, so the missing decoder is simulated: pydicom says none is available.
    monkeypatch.setattr(dicom_series, "get_decoder", lambda syntax: types.SimpleNamespace(is_available=False))
    out, paths = series_files

    def jpeg_ls(ds):
        ds.file_meta.TransferSyntaxUID = JPEGLSLossless
        ds.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8\xff\xf7 not decoded here \xff\xd9"])

    rewrite(paths[0], jpeg_ls)
    message = refusal(tmp_path, the_series(out))
    assert "JPEG-LS" in message and "pylibjpeg" in message and "gdcm" in message


def test_enhanced_multi_frame_is_refused(tmp_path, series_files):
    out, paths = series_files

    def enhanced(ds):
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4.1"
        ds.NumberOfFrames = 1

    rewrite(paths[0], enhanced)
    assert "not supported" in refusal(tmp_path, the_series(out))


def axial_thick_affine() -> np.ndarray:
    affine = np.diag([0.9, 0.9, 4.0, 1.0])
    affine[:3, 3] = [-30.0, -40.0, -20.0]
    return affine


@pytest.mark.parametrize("affine", [oblique_affine(), axial_thick_affine()], ids=["oblique", "axial"])
def test_dcm2niix_reference_converter_agrees(tmp_path, affine):
    # dcm2niix (Li et al., J Neurosci Methods 2016) is the converter most pipelines use; our
    # stacking must give the same grid and voxels as it does on the same files.
    dcm2niix = dcm2niix_executable()
    if dcm2niix is None:
        pytest.skip("dcm2niix is not installed (pip install dcm2niix); the cross-check needs it")
    import subprocess

    _, folder, paths = nifti_to_dicom(tmp_path, affine)
    converted = tmp_path / "dcm2niix"
    converted.mkdir()
    result = subprocess.run([dcm2niix, "-z", "y", "-b", "n", "-f", "out", "-o", str(converted), str(folder)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    reference, reference_affine = load_image(converted / "out.nii.gz")
    image, image_affine = load_series(the_series(folder))
    assert reference.shape == image.shape
    np.testing.assert_allclose(reference_affine, image_affine, atol=1e-3)
    np.testing.assert_allclose(reference, image, atol=rescale_step(paths[0]) / 2 + 1e-3)
