"""Downloads (checksums, resume, atomic writes, mirrors), safe extraction and dataset import.

A local HTTP server on 127.0.0.1 with Range support serves a temporary copy of
the real open_ms_data sample, which holds only part of the upstream files: the
downloader must verify what is there and report the rest.
"""

import functools
import http.server
import io
import json
import re
import shutil
import socket
import tarfile
import threading
import urllib.parse
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import shared_sample_dir

from mstoolkit.cli import build_parser, main
from mstoolkit.data import archives, download, fetch, importers
from mstoolkit.data import commands as data_commands
from mstoolkit.data.datasets import list_cases, load_dataset_case
from mstoolkit.data.io import MSToolkitInputError, load_mask

SAMPLE = shared_sample_dir()  # the larger sample beside the repository: it can serve as a mirror
needs_sample = pytest.mark.skipif(SAMPLE is None, reason="shared/data/open_ms_data is not beside the repository")
FLAIR_26 = "cross_sectional/MNI/patient26/FLAIR_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz"


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files with HTTP Range support; records requests; can hang up early once per file."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        relative = urllib.parse.unquote(self.path.split("?")[0]).lstrip("/")
        range_header = self.headers.get("Range")
        self.server.requests.append((relative, range_header))
        path = Path(self.directory) / relative
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = int(re.fullmatch(r"bytes=(\d+)-", range_header).group(1)) if range_header else 0
        if range_header:
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut = self.server.cut.pop(relative, None)
        self.wfile.write(body if cut is None else body[:cut])  # HTTP/1.0: the connection closes after


@pytest.fixture
def served(tmp_path):
    """(base URL, served folder, server) for a fresh copy of the sample."""
    if SAMPLE is None:
        pytest.skip("the real open_ms_data sample is not on this machine")
    root = tmp_path / "served"
    shutil.copytree(SAMPLE, root, ignore=shutil.ignore_patterns("MANIFEST.tsv", "README.md"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_RangeHandler, directory=str(root)))
    server.requests, server.cut = [], {}
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", root, server
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setattr(fetch, "BACKOFF_S", 0.0)
    monkeypatch.setattr(fetch, "RETRIES", 2)


def _present(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


# --------------------------------------------------------------------------- manifest and checksums


@needs_sample
def test_committed_manifest_matches_the_sample():
    entries = {e["path"]: e for e in download.load_manifest("open_ms_data")["files"]}
    assert len(entries) == 1305
    for relative in _present(SAMPLE) - {"MANIFEST.tsv", "README.md"}:
        entry = entries[relative]
        assert fetch.file_digest(SAMPLE / relative, "git_blob_sha1") == entry["git_blob_sha1"]
        assert fetch.file_digest(SAMPLE / relative) == entry["sha256"]


def test_manifest_folder_from_environment(tmp_path, monkeypatch):
    (tmp_path / "isbi2015.json").write_text(json.dumps({"name": "isbi2015", "title": "custom"}))
    monkeypatch.setenv("MSTOOLKIT_MANIFESTS", str(tmp_path))
    assert download.load_manifest("isbi2015")["title"] == "custom"
    assert download.load_manifest("msseg2")["registration_required"] is True  # falls back to the checkout


def test_subsets_and_patients_are_derived_from_paths():
    manifest = download.load_manifest("open_ms_data")
    mni = download.select_files(manifest)  # default: cross_sectional_mni
    assert len(mni) == 30 * 5 + 2 and {e["path"] for e in mni} >= {"cross_sectional/LICENSE.txt", FLAIR_26}
    long = download.select_files(manifest, subsets=["longitudinal_coregistered"], patients=["patient03", 4])
    assert {e["path"].split("/")[2] for e in long if e["path"].count("/") == 3} == {"patient03", "patient04"}
    assert "longitudinal/demographics.csv" in {e["path"] for e in long}
    assert len(download.select_files(manifest, subsets=["all"])) == 1305
    with pytest.raises(MSToolkitInputError, match=r"Unknown subset\(s\) \['mni'\]; available: cross_sectional_coregistered"):
        download.select_files(manifest, subsets=["mni"])
    with pytest.raises(MSToolkitInputError, match="'patients' must be numbers like 7 or patient07, got 'p7'"):
        download.select_files(manifest, patients=["p7"])
    with pytest.raises(MSToolkitInputError, match=r"No files for patients \[99\]"):
        download.select_files(manifest, patients=[99])
    with pytest.raises(MSToolkitInputError, match="Unknown dataset 'brats'; known: open_ms_data, mslesseg"):
        download.load_manifest("brats")


# --------------------------------------------------------------------------- downloading from a local server


def test_download_matches_manifest_and_second_run_transfers_nothing(served, tmp_path, capsys):
    url, root, server = served
    dest = tmp_path / "data"
    # the two subsets the sample holds files of (asking for all 1305 files only takes longer)
    command = ["data", "download", "open_ms_data", "--dest", str(dest), "--mirror", url, "--subset", "cross_sectional_mni", "longitudinal_raw"]
    assert main(command) == 0
    out, err = capsys.readouterr()
    present = _present(root)
    assert f"{len(present)} downloaded" in out and "Lesjak" in out
    assert "Not available from" in err and "cross_sectional/MNI/patient01/FLAIR_" in err  # a partial mirror
    entries = download.select_files(download.load_manifest("open_ms_data"), subsets=["cross_sectional_mni", "longitudinal_raw"])
    assert present <= {e["path"] for e in entries}
    for entry in entries:
        target = dest / entry["path"]
        assert target.exists() == (entry["path"] in present), entry["path"]
        if target.exists():
            assert fetch.file_digest(target, "git_blob_sha1") == entry["git_blob_sha1"]
    assert not list(dest.rglob("*.part"))
    assert (dest / "CITATION.md").read_text().count("Neuroinformatics") == 2 and (dest / "LICENSE.md").exists()
    # converted (indexed) into the toolkit layout, same images as the upstream layout
    bids = dest / "bids" / "cross_sectional_mni"
    (converted,), (upstream,) = list_cases(bids), list_cases(dest)
    assert (converted.case_id, upstream.case_id) == ("sub-26", "patient26")
    assert set(converted.images) == set(upstream.images) == {"FLAIR", "T1", "T1CE", "T2"}
    for seq in converted.images:  # hard links: the same bytes, no extra disk space
        assert converted.images[seq].read_bytes() == upstream.images[seq].read_bytes()
    assert converted.mask.read_bytes() == upstream.mask.read_bytes()
    assert load_mask(converted.mask)[0].shape == (182, 218, 182)
    assert "McDonald" in (bids / "participants.tsv").read_text()
    assert json.loads((bids / "dataset_description.json").read_text())["SourceDatasets"][0]["Version"].startswith("6570490")

    first = len(server.requests)
    assert main(command) == 0
    assert f"0 downloaded, {len(present)} already present" in capsys.readouterr().out
    assert [r for r in server.requests[first:] if r[0] in present] == []  # only the absent files were asked again


def test_corrupted_file_fails_naming_it_and_leaves_nothing(served, tmp_path, capsys):
    url, root, _ = served
    data = bytearray((root / FLAIR_26).read_bytes())
    data[5000:5010] = b"\0" * 10  # same size, other bytes
    (root / FLAIR_26).write_bytes(bytes(data))
    dest = tmp_path / "data"
    assert main(["data", "download", "open_ms_data", "--dest", str(dest), "--mirror", url, "--patients", "26"]) == 1
    err = capsys.readouterr().err
    assert "FLAIR_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz: checksum mismatch" in err
    assert not (dest / FLAIR_26).exists() and not list(dest.rglob("*.part"))
    assert (dest / FLAIR_26.replace("FLAIR_", "T2_", 1)).exists()  # the good files still arrive


def test_cut_transfer_resumes_with_a_range_request(served, tmp_path):
    url, root, server = served
    server.cut[FLAIR_26] = 1_000_000
    dest = tmp_path / "data"
    assert main(["data", "download", "open_ms_data", "--dest", str(dest), "--mirror", url, "--patients", "26"]) == 0
    asked = [r for r in server.requests if r[0] == FLAIR_26]
    assert asked == [(FLAIR_26, None), (FLAIR_26, "bytes=1000000-")]
    assert (dest / FLAIR_26).read_bytes() == (root / FLAIR_26).read_bytes()


def test_offline_without_mirror_says_what_to_do(tmp_path, monkeypatch, capsys):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    manifest = download.load_manifest("open_ms_data")
    monkeypatch.setattr(download, "load_manifest", lambda name: {**manifest, "base_url": f"http://127.0.0.1:{port}/x/"})
    dest = tmp_path / "data"
    assert main(["data", "download", "open_ms_data", "--dest", str(dest), "--patients", "26"]) == 1
    err = capsys.readouterr().err
    assert f"cannot reach 127.0.0.1:{port}: check your connection, or use --mirror URL" in err
    assert "data_download/README.md" in err
    assert not [p for p in dest.rglob("*") if p.is_file() and p.suffix != ".part"]


@needs_sample
def test_missing_upstream_file_is_an_error_without_mirror(served, tmp_path, monkeypatch, capsys):
    url, _, _ = served
    manifest = download.load_manifest("open_ms_data")
    monkeypatch.setattr(download, "load_manifest", lambda name: {**manifest, "base_url": url})
    assert main(["data", "download", "open_ms_data", "--dest", str(tmp_path / "d"), "--patients", "26", "1"]) == 1
    assert "Not available from upstream" in capsys.readouterr().err


@needs_sample
def test_file_mirror_and_folder_import(tmp_path, capsys):
    mirror = SAMPLE.resolve().as_uri()
    dest = tmp_path / "data"
    assert main(["data", "download", "open_ms_data", "--dest", str(dest), "--mirror", mirror, "--patients", "26", "--no-convert"]) == 0
    assert fetch.file_digest(dest / FLAIR_26) == fetch.file_digest(SAMPLE / FLAIR_26)
    assert not (dest / "bids").exists()
    assert main(["data", "import", "open_ms_data", str(SAMPLE), "--dest", str(tmp_path / "copy")]) == 0
    assert (tmp_path / "copy" / "longitudinal" / "raw" / "patient01" / "gt.nii.gz").exists()
    with pytest.raises(MSToolkitInputError, match="'--mirror' must start with http://, https:// or file://, got 'ftp://x'"):
        download.download_dataset("open_ms_data", dest, mirror="ftp://x")


# --------------------------------------------------------------------------- archives


def _zip(path: Path, members: dict) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _tar(path: Path, members: list[tarfile.TarInfo], data: dict | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for info in members:
            payload = (data or {}).get(info.name)
            if payload is not None:
                info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return path


def _link(name: str, target: str, kind=tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: _zip(p / "slip.zip", {"ok.txt": b"1", "../evil.txt": b"x"}), "'../evil.txt' has an absolute path or '..'"),
        (lambda p: _zip(p / "abs.zip", {"/tmp/evil.txt": b"x"}), "'/tmp/evil.txt' has an absolute path"),
        (lambda p: _tar(p / "abs.tgz", [tarfile.TarInfo("/evil.txt")], {"/evil.txt": b"x"}), "absolute path"),
        (lambda p: _tar(p / "sym.tgz", [_link("data/link", "../../outside")]), "link 'data/link' -> '../../outside' points outside"),
        (lambda p: _tar(p / "hard.tgz", [_link("data/h", "/etc/passwd", tarfile.LNKTYPE)]), "points outside"),
        (lambda p: _tar(p / "dev.tgz", [_link("dev", "", tarfile.CHRTYPE)]), "'dev' is a special file"),
    ],
)
def test_malicious_archives_are_refused(tmp_path, make, message):
    archive = make(tmp_path)
    dest = tmp_path / "out"
    with pytest.raises(MSToolkitInputError, match=re.escape(message)):
        archives.extract_archive(archive, dest)
    assert not (tmp_path / "evil.txt").exists() and not list(dest.rglob("*"))


def test_safe_archives_extract(tmp_path):
    tar = _tar(tmp_path / "ok.tgz", [tarfile.TarInfo("a/b.txt"), _link("a/c", "b.txt")], {"a/b.txt": b"hello"})
    out = archives.extract_archive(tar, tmp_path / "t")
    assert (out / "a" / "c").read_bytes() == b"hello"
    assert (archives.extract_archive(_zip(tmp_path / "ok.zip", {"d/e.txt": b"z"}), tmp_path / "z") / "d" / "e.txt").exists()
    (tmp_path / "x.txt").write_text("plain")
    with pytest.raises(MSToolkitInputError, match="is neither a zip nor a tar archive"):
        archives.extract_archive(tmp_path / "x.txt", tmp_path / "y")


# --------------------------------------------------------------------------- importing registration-only datasets


def _nifti(value: float, *, mask=False, gz=True) -> bytes:
    """A tiny NIfTI file (7, 8, 9), anisotropic, as bytes."""
    rng = np.random.default_rng(int(value * 10))
    data = (rng.random((7, 8, 9)) > 0.8).astype(np.uint8) if mask else (rng.random((7, 8, 9)) + value).astype(np.float32)
    image = nib.Nifti1Image(data, np.diag([0.9, 1.1, 3.0, 1.0]))
    raw = image.to_bytes()
    return __import__("gzip").compress(raw) if gz else raw


def test_import_mslesseg_nested_zip(tmp_path, capsys):
    inner = {}
    for patient, timepoint in (("P1", "T1"), ("P1", "T2"), ("P54", None)):
        stem = f"{patient}_{timepoint}" if timepoint else patient
        folder = f"MSLesSeg Dataset/{'train' if timepoint else 'test'}/{patient}/" + (f"{timepoint}/" if timepoint else "")
        for kind, value in (("FLAIR", 1.0), ("T1", 2.0), ("T2", 3.0), ("MASK", 0.0)):
            inner[f"{folder}{stem}_{kind}.nii.gz"] = _nifti(value, mask=kind == "MASK")
    inner["__MACOSX/MSLesSeg Dataset/train/P1/T1/._P1_T1_FLAIR.nii.gz"] = b"resource fork"  # zipped on a Mac
    dataset_zip = _zip(tmp_path / "MSLesSeg Dataset.zip", inner)
    wrapper = _zip(tmp_path / "figshare.zip", {"MSLesSeg Dataset.zip": dataset_zip.read_bytes()})
    dest = tmp_path / "mslesseg"
    assert main(["data", "import", "mslesseg", str(wrapper), "--dest", str(dest)]) == 0
    assert "Guarnera" in capsys.readouterr().out
    assert [c.case_id for c in list_cases(dest)] == ["sub-P01_ses-01", "sub-P01_ses-02", "sub-P54"]
    case = load_dataset_case(dest, "sub-P01_ses-02")
    expected = nib.as_closest_canonical(nib.Nifti1Image.from_bytes(__import__("gzip").decompress(inner["MSLesSeg Dataset/train/P1/T2/P1_T2_T1.nii.gz"])))
    assert np.allclose(case.images["T1"], expected.get_fdata()) and set(case.images) == {"FLAIR", "T1", "T2"}
    assert case.mask is not None and "split" in (dest / "participants.tsv").read_text()
    assert not list(dest.glob(".import-*"))


def test_import_isbi2015_gzips_and_keeps_both_raters(tmp_path):
    members, data = [], {}
    base = "training/training01"
    for kind, value in (("flair", 1.0), ("mprage", 2.0), ("t2", 3.0), ("pd", 4.0)):
        data[f"{base}/preprocessed/training01_01_{kind}_pp.nii"] = _nifti(value, gz=False)
    data[f"{base}/orig/training01_01_flair.nii.gz"] = _nifti(9.0)  # not on the preprocessed grid: ignored
    data[f"{base}/masks/training01_01_mask1.nii"] = _nifti(0.0, mask=True, gz=False)
    data[f"{base}/masks/training01_01_mask2.nii"] = _nifti(0.5, mask=True, gz=False)
    data[f"._{base}/preprocessed/._training01_01_flair_pp.nii"] = b"AppleDouble"  # tar made on a Mac
    members = [tarfile.TarInfo(name) for name in data]
    dest = tmp_path / "isbi"
    importers.import_dataset("isbi2015", _tar(tmp_path / "isbi.tar.gz", members, data), dest)
    case = load_dataset_case(dest, "sub-training01_ses-01")
    assert set(case.images) == {"FLAIR", "T1", "T2"} and case.spacing == pytest.approx((0.9, 1.1, 3.0))
    assert np.allclose(case.images["T1"], nib.Nifti1Image.from_bytes(data[f"{base}/preprocessed/training01_01_mprage_pp.nii"]).get_fdata())
    anat = dest / "sub-training01" / "ses-01" / "anat"
    assert (anat / "sub-training01_ses-01_label-lesion_desc-rater2_mask.nii.gz").exists()
    assert (anat / "sub-training01_ses-01_PDw.nii.gz").read_bytes()[:2] == b"\x1f\x8b"  # gzipped


def test_import_msseg1_folder_leaves_source_untouched(tmp_path):
    patient = tmp_path / "src" / "Training" / "Center_01" / "Patient_01"
    for name, value in (("FLAIR", 1.0), ("T1", 2.0), ("GADO", 2.5), ("T2", 3.0), ("DP", 4.0)):
        (patient / "Preprocessed_Data").mkdir(parents=True, exist_ok=True)
        (patient / "Preprocessed_Data" / f"{name}_preprocessed.nii.gz").write_bytes(_nifti(value))
    (patient / "Masks").mkdir()
    for name in ("Consensus", "ManualSegmentation_1"):
        (patient / "Masks" / f"{name}.nii.gz").write_bytes(_nifti(0.0, mask=True))
    before = _present(tmp_path / "src")
    dest = tmp_path / "msseg1"
    assert main(["data", "import", "msseg1", str(tmp_path / "src"), "--dest", str(dest)]) == 0
    assert _present(tmp_path / "src") == before
    case = load_dataset_case(dest, "sub-trainC01P01")
    assert set(case.images) == {"FLAIR", "T1", "T1CE", "T2"} and case.mask is not None
    assert (dest / "sub-trainC01P01" / "anat" / "sub-trainC01P01_label-lesion_desc-rater1_mask.nii.gz").exists()


def test_import_msseg2_change_masks(tmp_path):
    members = {f"training/013/flair_time0{k}_on_middle_space.nii.gz": _nifti(float(k)) for k in (1, 2)}
    members["training/013/ground_truth.nii.gz"] = _nifti(0.0, mask=True)
    members["training/013/ground_truth_expert1.nii.gz"] = _nifti(0.1, mask=True)
    dest = tmp_path / "msseg2"
    importers.import_dataset("msseg2", _zip(tmp_path / "m.zip", members), dest)
    assert [c.case_id for c in list_cases(dest)] == ["sub-013_ses-01", "sub-013_ses-02"]
    assert (dest / "sub-013" / "sub-013_label-change_mask.nii.gz").read_bytes() == members["training/013/ground_truth.nii.gz"]
    assert (dest / "sub-013" / "sub-013_label-change_desc-expert1_mask.nii.gz").exists()


def test_import_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="'.*nothing.zip' does not exist"):
        importers.import_dataset("isbi2015", tmp_path / "nothing.zip", tmp_path / "d")
    with pytest.raises(MSToolkitInputError, match="No isbi2015 images found in .*training/trainingNN/preprocessed"):
        importers.import_dataset("isbi2015", _zip(tmp_path / "empty.zip", {"readme.txt": b"hi"}), tmp_path / "d")


def test_registration_datasets_print_the_steps(capsys):
    assert main(["data", "download", "isbi2015"]) == 1
    out = capsys.readouterr().out
    assert "needs registration" in out and "https://smart-stats-tools.org/lesion-challenge" in out
    assert "mstoolkit data import isbi2015" in out
    with pytest.raises(MSToolkitInputError, match="'--subset' and '--patients' apply to open_ms_data only, not to mslesseg"):
        data_commands.cli_download(build_parser().parse_args(["data", "download", "mslesseg", "--patients", "3"]))
    assert main(["data", "download", "mslesseg", "--subset", "x"]) == 2  # the command line turns it into a message
    assert main(["data", "list"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in download.DATASETS) and "CC BY 4.0" in listing


def test_mslesseg_download_through_a_mirror(served, tmp_path, capsys):
    url, root, _ = served
    _zip(root / "MSLesSeg Dataset.zip", {f"MSLesSeg Dataset/test/P60/P60_{k}.nii.gz": _nifti(1.0, mask=k == "MASK") for k in ("FLAIR", "MASK")})
    dest = tmp_path / "mslesseg"
    assert main(["data", "download", "mslesseg", "--dest", str(dest), "--mirror", url]) == 0
    assert "no checksum is pinned" in capsys.readouterr().err
    assert [c.case_id for c in list_cases(dest)] == ["sub-P60"]


def test_stale_partial_or_wrong_final_file_is_replaced(served, tmp_path):
    url, root, server = served
    dest = tmp_path / "data"
    (dest / FLAIR_26).parent.mkdir(parents=True)
    (dest / (FLAIR_26 + ".part")).write_bytes(b"x" * 1000)  # left by an older, different version
    (dest / FLAIR_26.replace("FLAIR_", "T2_", 1)).write_bytes(b"not a nifti")  # wrong file under the final name
    assert main(["data", "download", "open_ms_data", "--dest", str(dest), "--mirror", url, "--patients", "26"]) == 0
    assert [r[1] for r in server.requests if r[0] == FLAIR_26] == ["bytes=1000-", None]  # resumed, failed, fresh
    for name in (FLAIR_26, FLAIR_26.replace("FLAIR_", "T2_", 1)):
        assert (dest / name).read_bytes() == (root / name).read_bytes()
