"""`mstoolkit study` and `mstoolkit listen` end to end: scanner-like DICOM studies in, the real
segmentation pipeline, report, DICOM SEG and SR out, and a real PACS (Orthanc on loopback).

The studies are those of `mstoolkit data dicom` (the shipped real patient26, and the phantom
patient with a prior study), written once per module; their truth lies apart from the DICOM.
"""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pydicom
import pytest

from mstoolkit.cli import main
from mstoolkit.clinical.dicom_out import read_measurement_report, read_segmentation
from mstoolkit.clinical.dicom_series import find_series, write_dicom_series
from mstoolkit.clinical.pacs import StudyListener, send, study_folder_name
from mstoolkit.clinical.study import run_study
from mstoolkit.data.io import MSToolkitInputError, load_image, load_mask
from mstoolkit.segmentation.inference import segment_files

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
OUTPUTS = ("series.json", "inputs/FLAIR.nii.gz", "inputs/T1.nii.gz", "lesion_mask.nii.gz", "lesion_probability.nii.gz",
           "lesion_seg.dcm", "report_sr.dcm", "report.json", "report.html")


@pytest.fixture(scope="module")
def teaching(teaching_export):
    """The teaching studies (tests/conftest.py) and their truth: {(patient, kind): folder}, truth.json, truth folder."""
    out, truth, _ = teaching_export
    return {(s["patient"], s["kind"]): out / s["folder"] for s in truth["studies"]}, truth, out / "truth"


def truth_of(truth: dict, patient: str, kind: str) -> dict:
    return next(s for s in truth["studies"] if s["patient"] == patient and s["kind"] == kind)


@pytest.fixture(scope="module")
def ingested(teaching, orthanc, tmp_path_factory):
    """patient26 sent to `listen`'s receiver by a "scanner"; the pipeline runs and sends SEG and SR to Orthanc."""
    studies, _, _ = teaching
    folder = studies[("patient26", "cross-sectional")]
    out = tmp_path_factory.mktemp("listen")
    results = out / "results"
    reports = []

    def on_study(received):
        reports.append(run_study(received, results / received.name, pacs=str(orthanc.address), device="cpu"))

    images = [path for series in find_series(folder).series for path in series.files]
    with StudyListener(out / "incoming", idle_seconds=1.0, on_study=on_study) as listener:
        send(listener.address, images)
        finished = listener.wait_for_studies(1, timeout=600)
    assert listener.failed == [], listener.failed
    (received,) = finished
    return received, results / received.name, reports[0]


def test_listener_runs_the_pipeline_and_the_pacs_holds_seg_and_sr(ingested, teaching, orthanc):
    received, out, report = ingested
    study_uid = truth_of(teaching[1], "patient26", "cross-sectional")["study_uid"]
    assert received.name == study_folder_name(study_uid)
    for name in OUTPUTS:
        assert (out / name).is_file(), name
    assert report["pacs"]["stored"] == 2
    arrived = {i["SOPClassUID"]: i for i in orthanc.instances() if i["StudyInstanceUID"] == study_uid}
    assert {SEGMENTATION_STORAGE, COMPREHENSIVE_3D_SR} <= set(arrived)
    # They load: Orthanc gives back the very objects the pipeline wrote.
    for sop_class, name in ((SEGMENTATION_STORAGE, "lesion_seg.dcm"), (COMPREHENSIVE_3D_SR, "report_sr.dcm")):
        stored = orthanc.dataset(arrived[sop_class]["ID"])
        assert stored.SOPInstanceUID == pydicom.dcmread(out / name).SOPInstanceUID


def test_study_chooses_the_series_the_truth_names(ingested, teaching):
    _, out, report = ingested
    truth = truth_of(teaching[1], "patient26", "cross-sectional")
    expected = {s["role"]: s["series_uid"] for s in truth["series"]}
    assert report["series_used"]["FLAIR"]["series_instance_uid"] == expected["FLAIR"]
    assert report["series_used"]["T1"]["series_instance_uid"] == expected["T1"]
    rows = {row["series_instance_uid"]: row for row in json.loads((out / "series.json").read_text())}
    assert len(rows) == len(truth["series"])
    for series in truth["series"]:
        role = series["role"] if series["role"] in ("FLAIR", "T1", "T1CE", "T2") else None
        assert rows[series["series_uid"]]["role"] == role, series["description"]


def test_study_segments_with_the_same_code_as_segment(ingested, tmp_path):
    _, out, report = ingested
    alone = segment_files(out / "inputs" / "FLAIR.nii.gz", tmp_path, t1=out / "inputs" / "T1.nii.gz", device="cpu",
                          skull_strip=True, register=True)
    mask, _ = load_mask(out / "lesion_mask.nii.gz")
    again = load_mask(tmp_path / "lesion_mask.nii.gz")[0]
    # SimpleITK's multi-threaded registration (T1 to FLAIR) differs in the last digits from run to run,
    # which moves a few voxels at lesion borders: the same code gives the same lesions, not the same bits.
    assert 2 * np.logical_and(again, mask).sum() / (again.sum() + mask.sum()) > 0.99
    assert abs(report["lesion_count"] - alone["lesion_count"]) <= 1 and report["lesion_count"] > 0


def test_seg_and_sr_hold_the_mask_and_the_report(ingested, teaching):
    received, out, report = ingested
    mask, mask_affine = load_mask(out / "lesion_mask.nii.gz")
    flair_uid = report["series_used"]["FLAIR"]["series_instance_uid"]
    (flair,) = [s for s in find_series(received).series if s.series_uid == flair_uid]
    assert np.array_equal(read_segmentation(out / "lesion_seg.dcm", flair), mask)
    measurements = read_measurement_report(out / "report_sr.dcm")
    assert measurements["lesion_count"] == report["lesion_count"] == len(report["lesions"])
    assert measurements["total_lesion_volume_ml"] == pytest.approx(report["total_lesion_volume_ml"], rel=1e-3)
    assert measurements["lesion_volumes_mm3"] == pytest.approx([row["volume_mm3"] for row in report["lesions"]], rel=1e-3)
    assert measurements["segmentation_uid"] == pydicom.dcmread(out / "lesion_seg.dcm").SOPInstanceUID
    # The converted FLAIR is the DICOM series on its own grid: the truth mask (written on that grid) lines up.
    truth = truth_of(teaching[1], "patient26", "cross-sectional")
    truth_mask, truth_affine = load_mask(teaching[2] / truth["lesion_mask"])
    assert truth_mask.shape == mask.shape and np.allclose(truth_affine, mask_affine, atol=1e-3)
    overlap = 2 * np.logical_and(truth_mask, mask).sum() / (truth_mask.sum() + mask.sum())
    assert overlap > 0.3  # the reference model finds patient26's lesions (Dice ~0.5 in MODEL_CARD.md), not noise


def test_report_json_and_html_say_what_a_reader_needs(ingested):
    _, out, report = ingested
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["lesion_count"] == report["lesion_count"]
    assert on_disk["locations"]["spinal_cord"] == "not imaged"
    assert isinstance(on_disk["dissemination_in_space"]["met"], bool)
    assert on_disk["dissemination_in_time"]["met"] is None  # no prior
    assert "not healthy" in on_disk["lesion_load"]["cohort"]
    assert {"identify", "convert", "segment", "report", "dicom_out", "send", "total"} <= set(on_disk["seconds"])
    page = (out / "report.html").read_text()
    assert "not for clinical use" in page.lower() and "data:image/png;base64," in page
    # Identifiers of the (pseudonymous) patient stay out of the report files.
    for name in ("report.json", "report.html", "series.json"):
        assert "OPEN_MS_DATA" not in (out / name).read_text()


def test_study_with_prior_counts_changes_and_flags_a_protocol_change(teaching, tmp_path, capsys):
    studies, truth, _ = teaching
    out = tmp_path / "phantom"
    code = main(["study", str(studies[("phantom", "current")]), "--prior", str(studies[("phantom", "prior")]),
                 "--out", str(out), "--device", "cpu"])
    assert code == 0
    said = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert f"{report['new_lesions']} new" in said
    assert (out / "longitudinal" / "change_labels.nii.gz").is_file() and (out / "inputs" / "prior_FLAIR.nii.gz").is_file()
    assert report["dissemination_in_time"]["met"] == (report["new_lesions"] > 0)
    # The teaching prior is a 2D GE FLAIR with thick slices, the current a 3D Siemens one: the report says so.
    assert "differ in voxel size" in report["changes"]["warning"] and report["changes"]["warning"] in report["warnings"]
    used = report["series_used"]["FLAIR"]["series_instance_uid"]
    current = truth_of(truth, "phantom", "current")
    assert used == next(s["series_uid"] for s in current["series"] if s["role"] == "FLAIR")


def test_ambiguous_study_stops_before_any_work_and_series_decides(tmp_path):
    image = np.random.default_rng(0).normal(100, 5, (40, 48, 12)).astype(np.float32)
    affine = np.diag([1.0, 1.0, 3.0, 1.0])
    paths = write_dicom_series(image, affine, tmp_path / "study", description="AX FLAIR", tr=9000, te=90, ti=2500,
                               mr_acquisition_type="2D", series_number=1, seed=1)
    study_uid = pydicom.dcmread(paths[0]).StudyInstanceUID
    write_dicom_series(image, affine, tmp_path / "study", description="AX FLAIR", tr=9000, te=90, ti=2500,
                       mr_acquisition_type="2D", series_number=2, study_uid=study_uid, seed=2)
    with pytest.raises(MSToolkitInputError, match=r"--series FLAIR=") as error:
        run_study(tmp_path / "study", tmp_path / "out", device="cpu")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "out" / "lesion_mask.nii.gz").exists()
    # --series settles the FLAIR; this study has no T1, which the reference model needs, and that is said next.
    second = find_series(tmp_path / "study").series[1].series_uid
    with pytest.raises(MSToolkitInputError, match=r"T1") as error:
        run_study(tmp_path / "study", tmp_path / "out", series=[f"FLAIR={second}"], device="cpu")
    assert "FLAIR=" not in str(error.value)
    with pytest.raises(MSToolkitInputError, match=r"FLAIR=1\.2\.3"):
        run_study(tmp_path / "study", tmp_path / "out", series=["FLAIR=1.2.3"], device="cpu")


def test_a_pacs_that_does_not_answer_fails_before_any_work(teaching, tmp_path, capsys):
    studies, _, _ = teaching
    code = main(["study", str(studies[("patient26", "cross-sectional")]), "--out", str(tmp_path / "out"),
                 "--pacs", "NOBODY@127.0.0.1:1"])
    assert code != 0
    assert "NOBODY" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_folders_with_no_study_or_two_studies_are_refused(teaching, tmp_path):
    studies, _, _ = teaching
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "README.TXT").write_text("not DICOM")
    with pytest.raises(MSToolkitInputError, match="No DICOM image series"):
        run_study(tmp_path / "empty", tmp_path / "out", device="cpu")
    both = tmp_path / "both"
    shutil.copytree(studies[("phantom", "prior")], both / "prior")
    shutil.copytree(studies[("phantom", "current")], both / "current")
    with pytest.raises(MSToolkitInputError, match="holds 2 studies"):
        run_study(both, tmp_path / "out", device="cpu")


def test_converted_inputs_keep_the_dicom_geometry(ingested):
    received, out, report = ingested
    flair_uid = report["series_used"]["FLAIR"]["series_instance_uid"]
    (flair,) = [s for s in find_series(received).series if s.series_uid == flair_uid]
    from mstoolkit.clinical.dicom_series import load_series

    image, affine = load_series(flair)
    saved, saved_affine = load_image(out / "inputs" / "FLAIR.nii.gz")
    assert np.allclose(saved_affine, affine, atol=1e-4) and np.allclose(saved, image, atol=1e-3)


def test_listen_command_reports_a_failed_study_and_stops_on_sigterm(tmp_path):
    """`mstoolkit listen` as users start it: a study it cannot process (no FLAIR) is reported in one
    line and the receiver keeps serving; SIGTERM stops it cleanly."""
    import signal
    import socket
    import subprocess
    import sys
    import time

    from mstoolkit.clinical.pacs import PacsAddress

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    image = np.random.default_rng(0).normal(100, 5, (40, 48, 12)).astype(np.float32)
    paths = write_dicom_series(image, np.diag([1.0, 1.0, 3.0, 1.0]), tmp_path / "study", description="3-Plane Loc",
                               image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"), tr=8.6, te=4.0, seed=3)
    command = [sys.executable, "-m", "mstoolkit.cli", "listen", "--port", str(port), "--out", str(tmp_path / "node"),
               "--idle-seconds", "0.5", "--device", "cpu"]
    node = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(100):  # until it accepts associations
            try:
                send(PacsAddress("MSTOOLKIT", "127.0.0.1", port), paths[:1], timeout=2)
                break
            except MSToolkitInputError:
                time.sleep(0.2)
        send(PacsAddress("MSTOOLKIT", "127.0.0.1", port), paths[1:], timeout=10)
        deadline = time.time() + 60
        while time.time() < deadline and not any((tmp_path / "node" / "incoming").glob("study-*")):
            time.sleep(0.2)
        time.sleep(8)  # the idle time, then the pipeline refuses the study (no FLAIR)
    finally:
        node.send_signal(signal.SIGTERM)
        said, _ = node.communicate(timeout=30)
    assert node.returncode == 0, said
    assert "Listening as MSTOOLKIT" in said
    assert re.search(r"study-\w+ failed: .*identified as FLAIR", said) and "Traceback" not in said
