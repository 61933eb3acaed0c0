"""`mstoolkit data dicom`: scanner-like DICOM studies with their ground truth kept apart."""

from __future__ import annotations

import datetime
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest

from mstoolkit.clinical import scanner_export
from mstoolkit.clinical.dicom_series import find_series, load_series
from mstoolkit.clinical.scanner_export import write_teaching_studies
from mstoolkit.data.datasets import list_cases, real_sample_dir
from mstoolkit.data.io import MSToolkitInputError, load_image

OPAQUE = re.compile(r"^[0-9A-F]{8}$")


@pytest.fixture(scope="module")
def export(teaching_export):
    """Everything, written once through the command (tests/conftest.py), and what it printed."""
    return teaching_export


def headers(path: Path):
    return pydicom.dcmread(path, stop_before_pixels=True)


def series_of(out: Path, study: dict) -> dict:
    """The series of one study of the truth, found by the reader, by SeriesInstanceUID."""
    found = find_series(out / study["folder"]).series
    return {s.series_uid: s for s in found}


def by_role(study: dict, role: str) -> list[dict]:
    return [s for s in study["series"] if s["role"] == role]


def test_command_prints_each_study_and_the_truth(export):
    out, truth, printed = export
    assert [(s["patient"], s["kind"]) for s in truth["studies"]] == [
        ("phantom", "prior"), ("phantom", "current"), ("patient26", "cross-sectional"),
        ("patient01", "prior"), ("patient01", "current")]
    lines = printed.splitlines()
    assert sum(str(out) in line and "series" in line for line in lines) == 5
    assert any("truth" in line and str(out / "truth" / "truth.json") in line for line in lines)


def test_layout_is_like_a_cd_and_gives_nothing_away(export):
    out, truth, _ = export
    for cd in ("phantom", "patient26", "patient01"):
        files = [p for p in (out / cd).rglob("*") if p.is_file()]
        non_dicom = sorted(p.name for p in files if p.parent == out / cd)
        assert non_dicom == ["AUTORUN.INF", "README.TXT"]
        images = [p for p in files if p.parent != out / cd]
        for path in images:  # DICOM/<study>/<series>/<file>, all opaque, no DICOMDIR, no extension
            parts = path.relative_to(out / cd).parts
            assert parts[0] == "DICOM" and len(parts) == 4 and all(OPAQUE.match(p) for p in parts[1:]), parts
        found = find_series(out / cd)
        assert found.n_skipped == 2 and sum(s.n_images for s in found.series) == len(images)
    # The answers live in truth/ only: no mask or role name anywhere in the DICOM folders.
    assert not any(p.suffix in (".gz", ".nii", ".json") for cd in ("phantom", "patient26", "patient01")
                   for p in (out / cd).rglob("*"))


def test_truth_lists_every_series_with_the_headers_identification_needs(export):
    out, truth, _ = export
    for study in truth["studies"]:
        found = series_of(out, study)
        assert {s["series_uid"] for s in study["series"]} == set(found)
        assert all(found[s["series_uid"]].study_uid == study["study_uid"] for s in study["series"])
        for entry in study["series"]:
            series = found[entry["series_uid"]]
            assert series.series_number == entry["series_number"] and series.n_images == entry["n_images"]
            if entry["role"] == "localizer":
                assert "LOCALIZER" in series.image_type.split("\\")
            if entry["role"] in ("DWI", "ADC"):
                assert "DIFFUSION" in series.image_type.split("\\") and "EP" in series.scanning_sequence
            if entry["role"] == "FLAIR":
                assert "IR" in series.scanning_sequence and series.inversion_time > 1000
        assert len(by_role(study, "FLAIR")) == 1 and by_role(study, "localizer") and by_role(study, "DWI")
        # A T1 after contrast carries the T1's protocol name: only ContrastBolusAgent tells them apart.
        for t1, t1ce in zip(by_role(study, "T1"), by_role(study, "T1CE")):
            before, after = found[t1["series_uid"]], found[t1ce["series_uid"]]
            assert before.protocol_name == after.protocol_name
            assert before.contrast_bolus_agent == "" and after.contrast_bolus_agent != ""
            assert before.contrast_bolus_ingredient == "" and after.contrast_bolus_ingredient == "GADOLINIUM"
    assert {study["vendor"] for study in truth["studies"]} == {"ge", "siemens", "philips"}


def test_localizer_and_diffusion_are_refused_by_the_reader_not_crash_it(export):
    out, truth, _ = export
    current = truth["studies"][1]  # Siemens: one localizer series with three planes
    found = series_of(out, current)
    with pytest.raises(MSToolkitInputError, match="mixes slice orientations"):
        load_series(found[by_role(current, "localizer")[0]["series_uid"]])
    with pytest.raises(MSToolkitInputError, match="several images at one slice position"):
        load_series(found[by_role(current, "DWI")[0]["series_uid"]])  # b=0 and b=1000 at each position
    b_values = {float(headers(p).DiffusionBValue) for p in found[by_role(current, "DWI")[0]["series_uid"]].files}
    assert b_values == {0.0, 1000.0}
    prior = truth["studies"][0]  # GE: one series per plane, each loads as a thin stack
    assert len(by_role(prior, "localizer")) == 3
    for entry in by_role(prior, "localizer"):
        image, _ = load_series(series_of(out, prior)[entry["series_uid"]])
        assert sorted(image.shape)[0] == 3


def test_instance_numbers_do_not_follow_the_slices(export):
    out, truth, _ = export
    study = truth["studies"][2]
    flair = series_of(out, study)[by_role(study, "FLAIR")[0]["series_uid"]]
    datasets = [headers(p) for p in flair.files]
    by_position = sorted(datasets, key=lambda ds: float(ds.SliceLocation))
    numbers = [int(ds.InstanceNumber) for ds in by_position]
    assert sorted(numbers) == list(range(1, len(numbers) + 1)) and numbers != sorted(numbers)
    assert abs(float(datasets[0].ImageOrientationPatient[1])) > 0.99  # a sagittal acquisition: rows run A-P


def test_one_patient_two_studies_with_dates_months_apart(export):
    out, truth, _ = export
    for patient, name, gap in (("phantom", "PHANTOM^SYNTHETIC", None), ("patient01", "OPEN_MS_DATA^PATIENT01", 203)):
        prior, current = [s for s in truth["studies"] if s["patient"] == patient]
        first = [headers(series_of(out, s)[s["series"][0]["series_uid"]].files[0]) for s in (prior, current)]
        assert first[0].StudyInstanceUID != first[1].StudyInstanceUID
        assert first[0].PatientID == first[1].PatientID and str(first[0].PatientName) == str(first[1].PatientName) == name
        assert all(ds.PatientIdentityRemoved == "YES" and ds.DeidentificationMethod for ds in first)
        days = (datetime.datetime.strptime(first[1].StudyDate, "%Y%m%d")
                - datetime.datetime.strptime(first[0].StudyDate, "%Y%m%d")).days
        assert (182 <= days <= 366) if gap is None else days == gap
    patient26 = headers(next((out / "patient26" / "DICOM").rglob("*/*/*")))
    assert "CC-BY" in patient26.DeidentificationMethod and "Lesjak" in (out / "patient26" / "README.TXT").read_text()


def test_no_patient_identifier_in_any_path_or_printed_line(export):
    out, truth, printed = export
    identifiers = set()
    for study in truth["studies"]:
        ds = headers(series_of(out, study)[study["series"][0]["series_uid"]].files[0])
        identifiers |= {ds.PatientID, str(ds.PatientName)}
    text = printed + "\n".join(str(p) for p in out.rglob("*"))
    assert identifiers and not any(identifier in text for identifier in identifiers)


def test_real_flair_and_mask_come_back_as_published(export):
    out, truth, _ = export
    study = truth["studies"][2]
    found = series_of(out, study)
    sample = next(c for c in list_cases(real_sample_dir()) if c.case_id == "patient26")
    for role in ("FLAIR", "T1CE"):
        entry = by_role(study, role)[0]
        image, affine = load_series(found[entry["series_uid"]])
        published, published_affine = load_image(sample.images[role])
        step = float(headers(found[entry["series_uid"]].files[0]).RescaleSlope)
        np.testing.assert_allclose(affine, published_affine, atol=1e-3)
        np.testing.assert_allclose(image, published, atol=step / 2 + 1e-3)
    mask, mask_affine = load_image(out / "truth" / study["lesion_mask"])
    np.testing.assert_array_equal(mask, load_image(sample.mask)[0])
    np.testing.assert_allclose(mask_affine, affine, atol=1e-3)


def test_phantom_masks_lie_on_their_flair_grid(export):
    out, truth, _ = export
    for study in truth["studies"][:2]:
        flair = series_of(out, study)[by_role(study, "FLAIR")[0]["series_uid"]]
        image, affine = load_series(flair)
        mask, mask_affine = load_image(out / "truth" / study["lesion_mask"])
        assert mask.shape == image.shape and mask.sum() > 0
        np.testing.assert_allclose(mask_affine, affine, atol=1e-3)
        # Lesions are bright on FLAIR: the masked voxels are brighter than the brain around them.
        assert image[mask > 0].mean() > 1.2 * image[image > 0].mean()
    prior_flair = series_of(out, truth["studies"][0])[by_role(truth["studies"][0], "FLAIR")[0]["series_uid"]]
    assert prior_flair.mr_acquisition_type == "2D" and float(headers(prior_flair.files[0]).SliceThickness) == 4.5


def test_bad_options_and_a_used_folder_are_refused_and_nothing_is_written(tmp_path, monkeypatch):
    with pytest.raises(MSToolkitInputError, match="'source' must be one of phantom, real, all"):
        write_teaching_studies(tmp_path / "a", source="phantoms")
    with pytest.raises(MSToolkitInputError, match="'seed' must be a non-negative integer"):
        write_teaching_studies(tmp_path / "a", seed=-1)
    used = tmp_path / "used"
    used.mkdir()
    (used / "keep.txt").write_text("mine")
    with pytest.raises(MSToolkitInputError, match="not an empty folder; choose a new folder"):
        write_teaching_studies(used)
    assert [p.name for p in used.iterdir()] == ["keep.txt"]

    def interrupted(**_):
        raise KeyboardInterrupt

    monkeypatch.setattr(scanner_export, "generate_longitudinal_pair", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_teaching_studies(tmp_path / "new", source="phantom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["used"]  # no half export, no temporary folder
