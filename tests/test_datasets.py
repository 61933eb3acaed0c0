"""Listing and loading dataset folders (toolkit layout and open_ms_data layout)."""

import nibabel as nib
import numpy as np
import pytest

from mstoolkit.datasets import bids_paths, list_cases, load_dataset_case, real_sample_dir
from mstoolkit.io import MSToolkitInputError


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
    root = real_sample_dir()
    if root is None:
        pytest.skip("the real open_ms_data sample is not on this machine")
    cases = list_cases(root)
    # Only patient26 has images; the other folders hold masks alone.
    assert [c.case_id for c in cases] == ["patient26"]
    case = cases[0].load()
    assert set(case.images) == {"FLAIR", "T1", "T1CE", "T2"}
    assert case.shape == (182, 218, 182) and case.spacing == (1.0, 1.0, 1.0)
    assert nib.aff2axcodes(case.affine) == ("R", "A", "S")
    # Lesion load of about 8 mL (README of the sample).
    assert 6.0 < case.mask.sum() / 1000 < 10.0


def test_prepare_builds_every_phantom_size_the_notebooks_use():
    """`mstoolkit data prepare` must generate what each notebook asks for, or a workshop waits."""
    import re
    from pathlib import Path

    import nbformat

    from mstoolkit.datasets import NOTEBOOK_SUBJECTS

    notebooks = sorted((Path(__file__).parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    checked = 0
    pattern = re.compile(r"N_SUBJECTS = N_SUBJECTS or \w*\.?pick\(PROFILE, quick=(\d+), workshop=(\d+), full=(\d+)\)")
    for path in notebooks:
        source = "\n".join(cell.source for cell in nbformat.read(path, as_version=4).cells)
        for quick, workshop, full in pattern.findall(source):
            checked += 1
            for profile, n in (("quick", quick), ("workshop", workshop), ("full", full)):
                assert int(n) in NOTEBOOK_SUBJECTS[profile], f"{path.name}: {n} subjects at '{profile}' not prepared"
    assert checked == len(notebooks), "every notebook should size its phantom with N_SUBJECTS = N_SUBJECTS or pick(...)"


def test_prepare_rejects_unknown_profile():
    from types import SimpleNamespace

    from mstoolkit.datasets import cli_prepare

    with pytest.raises(MSToolkitInputError, match="'profile' must be one of quick, workshop, full, got 'big'"):
        cli_prepare(SimpleNamespace(profile="big", seed=0))
