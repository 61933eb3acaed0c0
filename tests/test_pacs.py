"""The PACS side against a real PACS (Orthanc on loopback): C-ECHO, C-STORE, and the storage
receiver that runs a callback per study and sends its result back.

Orthanc is started once for the session by the ``orthanc`` fixture (tests/orthanc.py); what
arrived is checked through its REST API, not through pynetdicom's own answers.
"""

from __future__ import annotations

import re
import socket
import threading
import time

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from mstoolkit.clinical.dicom_series import MR_IMAGE_STORAGE, find_series, write_dicom_series
from mstoolkit.clinical.pacs import PacsAddress, StudyListener, echo, parse_pacs_address, send, study_folder_name
from mstoolkit.data.io import MSToolkitInputError, write_atomic

SHAPE = (40, 48, 12)
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
IDLE_S = 0.5


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bright_blob_volume(seed: int) -> np.ndarray:
    """A noisy volume with one bright block: the block is what the test pipeline segments."""
    rng = np.random.default_rng(seed)
    image = rng.normal(100.0, 5.0, SHAPE)
    image[10:20, 12:30, 3:8] += 400.0
    return image.astype(np.float32)


def write_study(folder, seed: int = 0, n_series: int = 1) -> tuple[str, list]:
    """A synthetic MR study of ``n_series`` series; (StudyInstanceUID, paths)."""
    study_uid = generate_uid()
    affine = np.diag([1.0, 1.0, 3.0, 1.0])
    paths = []
    for number in range(1, n_series + 1):
        paths += write_dicom_series(bright_blob_volume(seed + number), affine, folder / f"series{number}", description=f"AX FLAIR {number}",
                                    tr=9000, te=90, ti=2500, series_number=number, study_uid=study_uid, seed=seed + number)
    return study_uid, paths


def stored(orthanc, key: str, value: str) -> list[dict]:
    return [instance for instance in orthanc.instances() if instance.get(key) == value]


# --------------------------------------------------------------------------- addresses


def test_parse_pacs_address_reads_aet_host_port():
    assert parse_pacs_address("ORTHANC@127.0.0.1:4242") == PacsAddress("ORTHANC", "127.0.0.1", 4242)
    assert parse_pacs_address(" PACS@pacs.example.org:104 ") == PacsAddress("PACS", "pacs.example.org", 104)
    assert parse_pacs_address("PACS@[::1]:11112") == PacsAddress("PACS", "::1", 11112)
    assert str(PacsAddress("ORTHANC", "127.0.0.1", 4242)) == "ORTHANC@127.0.0.1:4242"


@pytest.mark.parametrize("text", ["127.0.0.1:4242", "ORTHANC@127.0.0.1", "ORTHANC@127.0.0.1:port", "ORTHANC@:4242", "A@B@host:4242", ""])
def test_parse_pacs_address_refuses_malformed_with_an_example(text):
    with pytest.raises(MSToolkitInputError, match=r"is not AET@HOST:PORT; e\.g\. ORTHANC@127\.0\.0\.1:4242"):
        parse_pacs_address(text)


def test_parse_pacs_address_refuses_bad_port_and_ae_title():
    with pytest.raises(MSToolkitInputError, match="port 70000; a TCP port is 1 to 65535"):
        parse_pacs_address("ORTHANC@127.0.0.1:70000")
    with pytest.raises(MSToolkitInputError, match="1 to 16 printable characters"):
        parse_pacs_address("A_VERY_LONG_AE_TITLE@127.0.0.1:4242")


# --------------------------------------------------------------------------- C-ECHO


def test_echo_succeeds_against_orthanc(orthanc):
    echo(orthanc.address, timeout=5)


def test_echo_to_a_closed_port_fails_fast_and_says_what_to_check():
    port = closed_port()
    start = time.monotonic()
    with pytest.raises(MSToolkitInputError, match=rf"No DICOM association with ORTHANC@127\.0\.0\.1:{port}.*check that the PACS is running"):
        echo(PacsAddress("ORTHANC", "127.0.0.1", port), timeout=3)
    assert time.monotonic() - start < 3


def test_echo_with_a_wrong_called_aet_is_rejected(orthanc):
    wrong = PacsAddress("NOT_ORTHANC", orthanc.address.host, orthanc.address.port)
    with pytest.raises(MSToolkitInputError, match=r"rejected the association.*'NOT_ORTHANC' is its own AE title"):
        echo(wrong, timeout=5)


# --------------------------------------------------------------------------- C-STORE


def test_send_stores_every_file_and_orthanc_holds_the_same_images(orthanc, tmp_path):
    study_uid, paths = write_study(tmp_path)
    assert send(orthanc.address, paths, timeout=10) == len(paths) == SHAPE[2]

    arrived = stored(orthanc, "StudyInstanceUID", study_uid)
    sent = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in paths}
    assert sorted(i["SOPInstanceUID"] for i in arrived) == sorted(sent)
    assert {(i["Modality"], i["SOPClassUID"]) for i in arrived} == {("MR", MR_IMAGE_STORAGE)}
    one = arrived[0]
    back = orthanc.dataset(one["ID"])
    assert np.array_equal(back.pixel_array, pydicom.dcmread(sent[one["SOPInstanceUID"]]).pixel_array)


def test_send_nothing_stores_nothing(orthanc):
    assert send(orthanc.address, []) == 0


def test_send_refuses_a_file_that_is_not_dicom_without_naming_its_path(orthanc, tmp_path):
    _, paths = write_study(tmp_path)
    note = tmp_path / "DOE^JOHN" / "notes.txt"
    note.parent.mkdir()
    note.write_text("not DICOM")
    with pytest.raises(MSToolkitInputError, match=r"File 2 of 2 to send is not a readable DICOM file") as error:
        send(orthanc.address, [paths[0], note], timeout=5)
    assert "DOE" not in str(error.value)


def unknown_sop_class_file(path):
    """An MR file relabelled with a SOP class no PACS knows (Orthanc refuses unknown classes by default)."""
    _, (source, *_) = write_study(path.parent / "source")
    ds = pydicom.dcmread(source)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.826.0.1.3680043.8.498.99999"
    ds.save_as(path, enforce_file_format=True)
    return path, source


def test_send_names_the_sop_class_the_pacs_will_not_store(orthanc, tmp_path):
    unknown, mr_file = unknown_sop_class_file(tmp_path / "unknown.dcm")
    with pytest.raises(MSToolkitInputError, match=r"accepts none of the objects offered.*SOP class 1\.2\.826\.0\.1\.3680043\.8\.498\.99999"):
        send(orthanc.address, [unknown], timeout=5)
    # With an MR file beside it the association opens, and the refusal names the file's place and class.
    with pytest.raises(MSToolkitInputError, match=r"accepted no presentation context for file 2 of 2 \(SOP class 1\.2\.826"):
        send(orthanc.address, [mr_file, unknown], timeout=5)


def test_send_to_a_wrong_called_aet_is_rejected(orthanc, tmp_path):
    _, paths = write_study(tmp_path)
    with pytest.raises(MSToolkitInputError, match="rejected the association to store files"):
        send(PacsAddress("WRONG", orthanc.address.host, orthanc.address.port), paths[:1], timeout=5)


# --------------------------------------------------------------------------- the storage receiver


def test_listener_in_process_receives_a_study_and_stops_cleanly(tmp_path):
    study_uid, paths = write_study(tmp_path / "scanner")
    listener = StudyListener(tmp_path / "received", idle_seconds=IDLE_S)
    with listener:
        assert listener.port > 0
        echo(listener.address, timeout=5)
        assert send(listener.address, paths, timeout=10) == len(paths)
        (folder,) = listener.wait_for_studies(1, timeout=10)
    assert folder == tmp_path / "received" / study_folder_name(study_uid)
    assert re.fullmatch(r"study-[0-9a-f]{12}", folder.name)  # a hash, not the UID or anything from the headers
    sop_uids = sorted(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in paths)
    assert sorted(p.stem for p in folder.iterdir()) == sop_uids
    (series,) = find_series(folder).series
    assert series.study_uid == study_uid and series.n_images == len(paths)
    assert listener.completed == [folder] and listener.failed == []
    # Stopped means stopped: nothing answers on the port, it can be bound again, and no worker thread is left.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", listener.port), timeout=2).close()
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past connections linger in TIME_WAIT
        sock.bind(("127.0.0.1", listener.port))
    assert not [t for t in threading.enumerate() if t.name == "StudyListener-worker"]


def threshold_segmentation(study_folder, result_folder):
    """A tiny pipeline: segment the bright voxels of the study's first series as a DICOM SEG
    (highdicom) that references the received images; returns the SEG's path."""
    series = find_series(study_folder).series[0]
    sources = [pydicom.dcmread(p) for p in series.files]
    mask = np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) > 300 for ds in sources]).astype(np.uint8)
    assert mask.any()
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label="bright", segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(name="threshold", family=codes.cid7162.ArtificialIntelligence, version="1"),
    )
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=mask, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description], series_instance_uid=hd.UID(), series_number=100, sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer="mstoolkit tests", manufacturer_model_name="threshold", software_versions="1", device_serial_number="1",
    )
    result_folder.mkdir(parents=True, exist_ok=True)
    return write_atomic(result_folder / f"{study_folder.name}-seg.dcm", lambda tmp: seg.save_as(tmp))


def test_listener_runs_the_pipeline_once_per_study_and_the_result_reaches_orthanc(orthanc, tmp_path):
    calls = []

    def on_study(folder):
        calls.append(folder)
        seg = threshold_segmentation(folder, tmp_path / "results")
        send(orthanc.address, [seg], timeout=10)

    first_uid, first_paths = write_study(tmp_path / "first", seed=1, n_series=2)
    second_uid, second_paths = write_study(tmp_path / "second", seed=5)
    with StudyListener(tmp_path / "received", idle_seconds=IDLE_S, on_study=on_study) as listener:
        # The first study comes straight from a "scanner" (pynetdicom) in two associations.
        send(listener.address, first_paths[:5], timeout=10)
        send(listener.address, first_paths[5:], timeout=10)
        # The second is routed by the PACS itself: stored in Orthanc, then pushed by Orthanc to the listener.
        send(orthanc.address, second_paths, timeout=10)
        orthanc.request("PUT", "/modalities/mstoolkit-listener", {"AET": listener.ae_title, "Host": "127.0.0.1", "Port": listener.port})
        (study_id,) = [s for s in orthanc.get("/studies") if orthanc.get(f"/studies/{s}")["MainDicomTags"]["StudyInstanceUID"] == second_uid]
        orthanc.request("POST", "/modalities/mstoolkit-listener/store", {"Resources": [study_id], "Synchronous": True})
        finished = listener.wait_for_studies(2, timeout=30)
        time.sleep(2 * IDLE_S)  # long enough for a wrong second call to happen
    assert sorted(calls) == sorted(finished) == sorted(tmp_path / "received" / study_folder_name(uid) for uid in (first_uid, second_uid))
    assert listener.failed == []

    for study_uid, paths in ((first_uid, first_paths), (second_uid, second_paths)):
        (seg,) = [i for i in stored(orthanc, "StudyInstanceUID", study_uid) if i["SOPClassUID"] == SEGMENTATION_STORAGE]
        assert seg["Modality"] == "SEG"
        ds = orthanc.dataset(seg["ID"])
        referenced = {item.ReferencedSOPInstanceUID for series in ds.ReferencedSeriesSequence for item in series.ReferencedInstanceSequence}
        first_series = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in paths[: SHAPE[2]]}
        assert referenced == first_series
        assert hd.seg.Segmentation.from_dataset(ds).number_of_segments == 1


def test_listener_records_a_failing_study_and_keeps_serving(tmp_path, caplog):
    def on_study(folder):
        if not listener.failed and not listener.completed:
            raise RuntimeError("no FLAIR series in this study\nsecond line")

    first_uid, first_paths = write_study(tmp_path / "first", seed=1)
    second_uid, second_paths = write_study(tmp_path / "second", seed=2)
    with caplog.at_level("ERROR", logger="mstoolkit.clinical.pacs"), StudyListener(tmp_path / "received", idle_seconds=IDLE_S, on_study=on_study) as listener:
        send(listener.address, first_paths, timeout=10)
        listener.wait_for_studies(1, timeout=10)
        send(listener.address, second_paths, timeout=10)
        listener.wait_for_studies(2, timeout=10)
    first, second = (tmp_path / "received" / study_folder_name(uid) for uid in (first_uid, second_uid))
    assert listener.failed == [(first, "RuntimeError: no FLAIR series in this study")]
    assert listener.completed == [second]
    assert [r.getMessage() for r in caplog.records] == [f"{first.name} failed: RuntimeError: no FLAIR series in this study"]


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # pydicom's, on reading the bad UID; the refusal is what counts
def test_listener_refuses_a_uid_that_would_leave_its_folder(tmp_path):
    _, (path, *_) = write_study(tmp_path / "scanner")
    ds = pydicom.dcmread(path)
    with pydicom.config.disable_value_validation():  # pydicom itself would warn: a UI value is digits and dots
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "../../escaped"
        ds.save_as(tmp_path / "evil.dcm", enforce_file_format=True)
    with StudyListener(tmp_path / "received", idle_seconds=IDLE_S) as listener:
        with pytest.raises(MSToolkitInputError, match=r"refused file 1 of 1 \(MR Image Storage\) with status 0xC000"):
            send(listener.address, [tmp_path / "evil.dcm"], timeout=5)
    assert not list(tmp_path.rglob("escaped*"))
    assert not list((tmp_path / "received").iterdir())


def test_wait_for_studies_says_what_is_missing(tmp_path):
    with StudyListener(tmp_path / "received", idle_seconds=IDLE_S) as listener:
        with pytest.raises(TimeoutError, match=rf"0 of 1 studies handled within 0.3 s: were they sent to MSTOOLKIT@127\.0\.0\.1:{listener.port}"):
            listener.wait_for_studies(1, timeout=0.3)


def test_listener_refuses_bad_settings(tmp_path):
    with pytest.raises(MSToolkitInputError, match="'idle_seconds' must be a positive number"):
        StudyListener(tmp_path, idle_seconds=0)
    with pytest.raises(MSToolkitInputError, match="'port' must be 0"):
        StudyListener(tmp_path, port=70000)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(MSToolkitInputError, match=rf"Cannot listen on 127\.0\.0\.1:{busy.getsockname()[1]}.*pick another port"):
            StudyListener(tmp_path, port=busy.getsockname()[1]).start()


def test_a_missing_orthanc_skips_here_and_fails_in_ci(monkeypatch):
    import orthanc as machinery

    monkeypatch.setattr(machinery, "find_orthanc", lambda: None)
    monkeypatch.delenv("MSTOOLKIT_REQUIRE_ORTHANC", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install orthanc"):
        machinery.orthanc_or_skip()
    monkeypatch.setenv("MSTOOLKIT_REQUIRE_ORTHANC", "1")
    with pytest.raises(BaseException) as outcome:  # a skip must not pass for a failure here
        machinery.orthanc_or_skip()
    assert outcome.type is pytest.fail.Exception
    assert "MSTOOLKIT_REQUIRE_ORTHANC=1 requires them to run" in str(outcome.value)
