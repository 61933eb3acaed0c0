"""Tests of phantom datasets on disk (mstoolkit.phantom.dataset) and ``mstoolkit data phantom``."""

from __future__ import annotations

import json

import cc3d
import numpy as np
import pytest

from mstoolkit.cli import main as cli_main
from mstoolkit.data.datasets import list_cases, load_dataset_case
from mstoolkit.data.io import MSToolkitInputError, load_mask
from mstoolkit.phantom import dataset as phantom_dataset
from mstoolkit.phantom import generator as phantom
from mstoolkit.phantom.dataset import ensure_phantom


def test_dataset_layout_is_read_back(tmp_path):
    # ensure_phantom passes its options through to generate_dataset
    out = ensure_phantom(tmp_path / "ds", n_subjects=2, seed=3, spacing=(2, 2, 2), progress=False)
    assert [c.case_id for c in list_cases(out)] == ["sub-001", "sub-002"]
    rows = [line.split("\t") for line in (out / "participants.tsv").read_text().splitlines()]
    header = rows[0]
    assert header[:2] == ["participant_id", "profile"] and {"n_lesions", "lesion_volume_ml", "seed"} <= set(header)
    first = dict(zip(header, rows[1]))
    loaded = load_dataset_case(out, "sub-001")
    assert loaded.shape == (91, 109, 91) and loaded.spacing == (2.0, 2.0, 2.0)
    assert cc3d.connected_components(loaded.mask, connectivity=26).max() == int(first["n_lesions"])
    regenerated = phantom.generate_subject(seed=int(first["seed"]), profile=first["profile"], spacing=(2, 2, 2))
    np.testing.assert_allclose(loaded.images["FLAIR"], regenerated.images["FLAIR"], atol=0.51)
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["seed"] == 3 and "MNI" in description["License"]
    with pytest.raises(MSToolkitInputError, match="not an empty folder"):
        phantom_dataset.generate_dataset(out, n_subjects=1, seed=0)


def test_longitudinal_dataset_layout(tmp_path):
    out = phantom_dataset.generate_dataset(tmp_path / "long", n_subjects=1, seed=0, longitudinal=True,
                                   spacing=(2, 2, 2), progress=False)
    assert [c.case_id for c in list_cases(out)] == ["sub-001_ses-01", "sub-001_ses-02"]
    change, affine = load_mask(out / "sub-001" / "sub-001_label-change_mask.nii.gz")
    baseline = load_dataset_case(out, "sub-001_ses-01")
    assert change.shape == baseline.shape and np.allclose(affine, baseline.affine)
    assert "n_new" in (out / "participants.tsv").read_text()


def test_cli_writes_a_dataset_that_ensure_phantom_reuses(tmp_path, capsys):
    out = tmp_path / "cli"
    code = cli_main(["data", "phantom", "--out", str(out), "--n", "1", "--seed", "1",
                     "--spacing", "3", "3", "3", "--profile", "high_res"])
    assert code == 0
    assert "Wrote 1 subjects" in capsys.readouterr().out
    assert list_cases(out)[0].case_id == "sub-001"
    assert "high_res" in (out / "participants.tsv").read_text()
    stamp = (out / "participants.tsv").stat().st_mtime_ns
    assert ensure_phantom(out, n_subjects=1, seed=1) == out
    assert (out / "participants.tsv").stat().st_mtime_ns == stamp  # reused, not rebuilt


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: phantom_dataset.generate_dataset("unused", n_subjects=0, seed=0), "'n_subjects' must be an integer >= 1"),
        (lambda: phantom_dataset.generate_dataset("unused", n_subjects=1, seed=0, profile="x"), "Unknown profile 'x'"),
    ],
)
def test_bad_options_raise_clear_errors(call, message):
    with pytest.raises(MSToolkitInputError, match=message):
        call()


def test_cli_reports_bad_options(tmp_path, capsys):
    code = cli_main(["data", "phantom", "--out", str(tmp_path / "x"), "--n", "0"])
    assert code == 2
    assert "'n_subjects' must be an integer >= 1" in capsys.readouterr().err


def test_render_subject_shows_the_same_subject_through_another_scanner(tmp_path):
    out = ensure_phantom(tmp_path / "ds", n_subjects=2, seed=3, spacing=(3, 3, 3), progress=False)
    on_disk = load_dataset_case(out, "sub-002")
    assert phantom_dataset.dataset_profile(2) == "low_field" and "sub-002\tlow_field" in (out / "participants.tsv").read_text()
    own = phantom_dataset.render_subject(2, seed=3, spacing=(3, 3, 3))  # the dataset's own profile: the files on disk
    assert own.case_id == "sub-002" and own.meta["profile"] == "low_field"
    np.testing.assert_allclose(on_disk.images["FLAIR"], own.images["FLAIR"], atol=0.51)
    other = phantom_dataset.render_subject(2, "vendor_b", seed=3, spacing=(3, 3, 3))
    assert other.meta["profile"] == "vendor_b"
    np.testing.assert_array_equal(other.mask, on_disk.mask)  # same lesions
    np.testing.assert_array_equal(other.brain_mask, on_disk.brain_mask)  # same anatomy
    assert np.abs(other.images["FLAIR"] - own.images["FLAIR"]).mean() > 10  # another scanner
    with pytest.raises(MSToolkitInputError, match="index"):
        phantom_dataset.render_subject(0, seed=3)
    with pytest.raises(MSToolkitInputError):
        phantom_dataset.render_subject(1, "no_such_scanner", seed=3)
