"""Listing and loading dataset folders (toolkit layout and open_ms_data layout)."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import mstoolkit
from mstoolkit.data.datasets import (
    LONGITUDINAL_FILES,
    CaseFiles,
    bids_paths,
    list_cases,
    load_dataset_case,
    real_longitudinal_patient,
    real_sample_dir,
)
from mstoolkit.data.io import MSToolkitInputError


def _write_bids_subject(root, subject, session=None, shape=(5, 6, 7)):
    paths = bids_paths(root, subject, session)
    rng = np.random.default_rng(0)
    for key in ("FLAIR", "T1", "mask"):
        paths[key].parent.mkdir(parents=True, exist_ok=True)
        data = (rng.random(shape) > 0.9) if key == "mask" else rng.random(shape)
        nib.save(nib.Nifti1Image(data.astype(np.float32), np.eye(4)), str(paths[key]))


def test_bids_layout_listed_and_loaded(tmp_path):
    _write_bids_subject(tmp_path, "sub-001")
    _write_bids_subject(tmp_path, "sub-002", "ses-01")
    _write_bids_subject(tmp_path, "sub-002", "ses-02")
    cases = list_cases(tmp_path)
    assert [c.case_id for c in cases] == ["sub-001", "sub-002_ses-01", "sub-002_ses-02"]
    assert set(cases[0].images) == {"FLAIR", "T1"} and cases[0].brain_mask is None
    case = load_dataset_case(tmp_path, "sub-002_ses-02")
    assert case.mask is not None and case.meta["session"] == "ses-02"
    flair_only = load_dataset_case(tmp_path, "sub-001", sequences=["FLAIR"])  # less memory
    assert list(flair_only.images) == ["FLAIR"] and flair_only.mask is not None
    with pytest.raises(MSToolkitInputError, match="Case 'sub-001' has no T2 image; it has FLAIR, T1"):
        cases[0].load(["FLAIR", "T2"])


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*mstoolkit data phantom"):
        list_cases(tmp_path / "absent")
    with pytest.raises(MSToolkitInputError, match="No cases found"):
        list_cases(tmp_path)
    _write_bids_subject(tmp_path, "sub-001")
    with pytest.raises(MSToolkitInputError, match="No case 'sub-009'.*available: sub-001"):
        load_dataset_case(tmp_path, "sub-009")


def test_real_sample_layout():
    """The shipped real sample works offline: no download, no ../shared."""
    root = real_sample_dir()
    assert root.is_relative_to(Path(mstoolkit.__file__).parent), "the default real sample must ship inside the package"
    cases = list_cases(root)
    assert [c.case_id for c in cases] == ["patient26"]
    case = cases[0].load()
    assert set(case.images) == {"FLAIR", "T1", "T1CE", "T2"}
    assert case.shape == (182, 218, 182) and case.spacing == (1.0, 1.0, 1.0)
    assert nib.aff2axcodes(case.affine) == ("R", "A", "S")
    # Lesion load of about 8 mL (README of the sample).
    assert 6.0 < case.mask.sum() / 1000 < 10.0


def test_shipped_sample_is_byte_identical_to_upstream():
    """Every shipped file is the upstream file (git blob SHA-1 of the committed manifest), so the CC-BY
    citation and the published figures apply to it; nothing upstream lists is missing from patient26."""
    from mstoolkit.data import download, fetch

    root = real_sample_dir()
    manifest = {entry["path"]: entry for entry in download.load_manifest("open_ms_data")["files"]}
    shipped = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != "README.md")
    assert len(shipped) == 7 + 6  # patient26 and the cross-sectional tables; longitudinal patient01's FLAIR pair
    for relative in shipped:
        assert fetch.file_digest(root / relative, "git_blob_sha1") == manifest[relative]["git_blob_sha1"], relative
    upstream = {path for path in manifest if path.startswith("cross_sectional/MNI/patient26/")}
    assert upstream <= set(shipped)
    assert {f"longitudinal/raw/patient01/{name}" for name in LONGITUDINAL_FILES} <= set(shipped)
    assert "Validation of white-matter lesion change" in (root / "README.md").read_text()
    assert "Lesjak" in (root / "README.md").read_text() and "CC-BY" in (root / "README.md").read_text()


def test_real_longitudinal_patient(tmp_path, monkeypatch):
    folder = real_longitudinal_patient()
    assert folder.is_relative_to(Path(mstoolkit.__file__).parent) and folder.name == "patient01"
    with pytest.raises(MSToolkitInputError, match="'patient03' is not complete.*only patient01 ships"):
        real_longitudinal_patient("patient03")
    partial = tmp_path / "longitudinal" / "raw" / "patient01"
    partial.mkdir(parents=True)
    (tmp_path / "cross_sectional").mkdir()
    (partial / "study1_FLAIR.nii.gz").write_bytes(b"")
    monkeypatch.setenv("MSTOOLKIT_REAL_SAMPLE", str(tmp_path))
    with pytest.raises(MSToolkitInputError, match="missing study2_FLAIR.nii.gz, gt.nii.gz"):
        real_longitudinal_patient()


def test_real_sample_override(tmp_path, monkeypatch):
    monkeypatch.setenv("MSTOOLKIT_REAL_SAMPLE", str(tmp_path))
    with pytest.raises(MSToolkitInputError, match="has no cross_sectional/ folder"):
        real_sample_dir()
    (tmp_path / "cross_sectional").mkdir()
    assert real_sample_dir() == tmp_path


def test_prepare_builds_every_phantom_size_the_notebooks_use():
    """`mstoolkit data prepare` must generate what each notebook asks for, or a workshop waits.

    Every notebook sizes its phantom by the profile's subject split, so all notebooks of a
    profile share one dataset and its test subjects exist wherever a notebook needs them.
    """
    import re
    from pathlib import Path

    import nbformat

    notebooks = sorted((Path(__file__).parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert notebooks
    checked = 0
    for path in notebooks:
        source = "\n".join(cell.source for cell in nbformat.read(path, as_version=4).cells)
        if "ensure_phantom" not in source and "subject_split" not in source:
            continue  # e.g. notebook 07: phantom pairs made on the spot, no phantom dataset
        checked += 1
        split_names = set(re.findall(r"(\w+) = (?:datasets\.)?subject_split\(PROFILE\)", source))
        sizes = re.findall(r"ensure_phantom\([^)]*n_subjects=([\w.]+)", source)
        assert split_names, f"{path.name}: should take its subjects from subject_split(PROFILE)"
        assert sizes, f"{path.name}: should build its phantom with ensure_phantom(..., n_subjects=...)"
        for size in sizes:
            assert size in {f"{name}.n_subjects" for name in split_names}, (
                f"{path.name}: ensure_phantom(n_subjects={size}) is not the split's size; `mstoolkit data prepare` "
                "builds only NOTEBOOK_SUBJECTS")
    assert checked >= 6, f"only {checked} notebooks use the phantom dataset; notebooks 01-06 all do"


def test_prepare_sizes_are_the_splits():
    from mstoolkit.data.datasets import NOTEBOOK_SUBJECTS, SUBJECT_SPLITS

    assert NOTEBOOK_SUBJECTS == {profile: (split.n_subjects,) for profile, split in SUBJECT_SPLITS.items()}


# --------------------------------------------------------------------------- subject splits


@pytest.mark.parametrize("profile", ["quick", "workshop", "full"])
def test_subject_roles_are_disjoint(profile):
    """No subject may both train (or validate, or calibrate) a model and score it."""
    from mstoolkit.data.datasets import ROLES, subject_split

    split = subject_split(profile)
    seen: dict[str, str] = {}
    for role in ROLES:
        members = split.subjects(role)
        assert members, f"{profile}: no {role} subject"
        assert len(set(members)) == len(members), f"{profile}: a {role} subject is listed twice"
        for subject in members:
            assert subject not in seen, f"{profile}: {subject} is both {seen[subject]} and {role}"
            seen[subject] = role
    assert split.n_subjects == max(int(s[4:]) for s in seen)


@pytest.mark.parametrize("profile", ["quick", "workshop", "full"])
def test_validation_is_standard_and_test_covers_every_scanner(profile):
    from mstoolkit.data.datasets import subject_split
    from mstoolkit.phantom.generator import PROFILES

    def scanner(subject: str) -> str:  # the rule of phantom_dataset.generate_dataset
        return list(PROFILES)[(int(subject[4:]) - 1) % len(PROFILES)]

    split = subject_split(profile)
    assert {scanner(s) for s in split.validation} == {"standard"}
    if profile != "quick":
        assert {scanner(s) for s in split.test} == set(PROFILES)
    # notebook 03's domain-shift experiment trains only on subjects of the scanners it does not hold out
    assert {scanner(s) for s in split.train} - {"low_field"}, f"{profile}: every training subject is low_field"


def test_split_select_and_errors():
    from mstoolkit.data.datasets import subject_split

    split = subject_split("quick")
    cases = [CaseFiles(case_id=f"sub-{i:03d}", images={}) for i in range(1, 6)]
    assert [c.case_id for c in split.select(cases, "test")] == ["sub-004", "sub-002"]
    assert split.role("sub-003") == "calibration" and split.role("sub-099") is None
    with pytest.raises(MSToolkitInputError, match="not in this dataset.*n_subjects=5"):
        split.select(cases[:3], "test")
    with pytest.raises(MSToolkitInputError, match="'role' must be one of train, validation, calibration, test"):
        split.select(cases, "testing")
    with pytest.raises(MSToolkitInputError, match="'profile' must be one of quick, workshop, full"):
        subject_split("fast")


def test_prepare_rejects_unknown_profile():
    from types import SimpleNamespace

    from mstoolkit.phantom.dataset import cli_prepare

    with pytest.raises(MSToolkitInputError, match="'profile' must be one of quick, workshop, full, got 'big'"):
        cli_prepare(SimpleNamespace(profile="big", seed=0))
