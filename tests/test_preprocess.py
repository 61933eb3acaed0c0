"""Tests for mstoolkit.preprocessing.preprocess: N4, skull stripping, whole cases, the CLI."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from conftest import shared_sample_dir
from scipy import ndimage

from mstoolkit.cli import main
from mstoolkit.data.io import Case, MSToolkitInputError, load_image, save_image, spacing_from_affine
from mstoolkit.preprocessing import preprocess as pp
from mstoolkit.preprocessing import registration


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2 * (a & b).sum() / (a.sum() + b.sum())


# --------------------------------------------------------------------------- N4


def test_n4_recovers_a_smooth_bias_field(template2):
    t1, brain, affine = template2
    shape = t1.shape
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    true_field = np.exp(0.25 * x - 0.2 * y + 0.15 * z * x).astype(np.float32)
    corrupted = (t1 * 100 + 1) * true_field
    corrected, field = pp.n4_correct(corrupted, affine, mask=brain, shrink_factor=3, iterations=(30, 30, 30), return_field=True)
    inside = brain > 0
    assert np.corrcoef(np.log(field[inside]), np.log(true_field[inside]))[0, 1] >= 0.9
    np.testing.assert_allclose(corrected * field, corrupted, rtol=1e-4)
    # white matter (brightest tissue) is more uniform after correction
    wm = inside & (t1 > np.percentile(t1[inside], 80))
    cv = lambda a: a[wm].std() / a[wm].mean()  # noqa: E731
    assert cv(corrected) < cv(corrupted)


def test_n4_recovers_a_known_bias_field_on_the_phantom():
    phantom = pytest.importorskip("mstoolkit.phantom.generator", reason="the phantom generator is not available")
    case = phantom.generate_subject(seed=3, spacing=(2.0, 2.0, 2.0))
    brain = case.brain_mask > 0
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, s) for s in case.shape], indexing="ij")
    true_field = np.exp(0.3 * x + 0.2 * y - 0.25 * z - 0.15 * (x**2 + y**2 + z**2)).astype(np.float32)
    corrected, field = pp.n4_correct(case.images["FLAIR"] * true_field, case.affine, mask=case.brain_mask,
                                     shrink_factor=2, iterations=(30, 30, 30), return_field=True)
    assert np.corrcoef(np.log(field[brain]), np.log(true_field[brain]))[0, 1] >= 0.9


def test_n4_errors():
    with pytest.raises(MSToolkitInputError, match="'mask' is empty"):
        pp.n4_correct(np.ones((7, 8, 9)), np.eye(4), mask=np.zeros((7, 8, 9)))
    with pytest.raises(MSToolkitInputError, match="'shrink_factor' must be an integer >= 1"):
        pp.n4_correct(np.ones((7, 8, 9)), np.eye(4), shrink_factor=0)
    with pytest.raises(MSToolkitInputError, match="'iterations' must list at least one positive count"):
        pp.n4_correct(np.ones((7, 8, 9)), np.eye(4), iterations=())


# --------------------------------------------------------------------------- skull stripping


def test_skull_strip_atlas_on_synthetic_head(synthetic_head):
    image, truth, head_affine, move = synthetic_head
    mask, to_mni = pp.skull_strip(image, head_affine, return_transform=True)
    assert mask.dtype == np.uint8
    assert _dice(mask, truth) >= 0.95
    points = (np.c_[np.argwhere(truth), np.ones(int(truth.sum()))] @ head_affine.T)[:, :3]
    assert registration.displacement_mm(to_mni, np.linalg.inv(move), points).mean() < 2.5


def test_skull_strip_on_phantom_raw_scan():
    phantom = pytest.importorskip("mstoolkit.phantom.generator", reason="the phantom generator is not available")
    if not hasattr(phantom, "generate_raw_scan"):
        pytest.skip("mstoolkit.phantom.generator.generate_raw_scan is not available")
    raw = phantom.generate_raw_scan(seed=3)
    image, affine = registration.reorient_to_ras(raw["images"]["FLAIR"], raw["affine"])
    truth, _ = registration.reorient_to_ras(raw["brain_mask"], raw["affine"])
    assert _dice(pp.skull_strip(image, affine), truth) >= 0.95


def test_skull_strip_calls_synthstrip_when_installed(tmp_path, monkeypatch):
    """A stand-in 'mri_synthstrip' on PATH: the hook passes the image and reads the mask back."""
    import os
    import stat
    import sys

    script = tmp_path / "mri_synthstrip"
    script.write_text(
        f"#!{sys.executable}\n"
        "import sys, nibabel as nib, numpy as np\n"
        "args = dict(zip(sys.argv[1::2], sys.argv[2::2]))\n"
        "img = nib.load(args['-i'])\n"
        "nib.save(nib.Nifti1Image((img.get_fdata() > 5).astype(np.uint8), img.affine), args['-m'])\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    image = np.zeros((7, 8, 9), np.float32)
    image[2:5, 3:6, 3:7] = 10
    mask = pp.skull_strip(image, np.diag([1.0, 1.2, 2.0, 1.0]), method="synthstrip")
    np.testing.assert_array_equal(mask, (image > 5).astype(np.uint8))


def test_skull_strip_errors(monkeypatch):
    with pytest.raises(MSToolkitInputError, match="'method' must be one of atlas, synthstrip, hd-bet"):
        pp.skull_strip(np.ones((7, 8, 9)), np.eye(4), method="bet")
    monkeypatch.setattr(pp.shutil, "which", lambda name: None)
    with pytest.raises(MSToolkitInputError, match="needs the 'mri_synthstrip' program on PATH"):
        pp.skull_strip(np.ones((7, 8, 9)), np.eye(4), method="synthstrip")


# --------------------------------------------------------------------------- whole cases


def test_preprocess_case_records_steps(synthetic_head):
    image, truth, head_affine, move = synthetic_head
    lesion = np.zeros(image.shape, np.uint8)
    lesion[40:44, 50:54, 40:43] = 1
    case = Case("sub-x", {"FLAIR": image, "T1": image * 2}, head_affine, mask=lesion)
    steps = ["n4", ("skull_strip", {"working_spacing": 3.0}), ("normalize", {"method": "zscore"}), ("to_mni", {"resolution": 2})]
    out = pp.preprocess_case(case, steps)
    assert [r["step"] for r in out.meta["preprocessing"]] == ["n4", "skull_strip", "normalize", "to_mni"]
    assert out.meta["preprocessing"][3]["reused"] == "the skull_strip registration"
    assert out.shape == pp.load_mni_template(resolution=2)[0].shape
    assert out.mask.dtype == np.uint8 and 0 < out.mask.sum() and set(np.unique(out.mask)) <= {0, 1}
    assert "preprocessing" not in case.meta  # the input case is untouched
    with pytest.raises(MSToolkitInputError, match="unknown preprocessing step 'denoise'; allowed: resample"):
        pp.preprocess_case(case, ["denoise"])
    with pytest.raises(MSToolkitInputError, match=r"step 'resample' has no option\(s\) \['spacng'\]; allowed: spacing"):
        pp.preprocess_case(case, [("resample", {"spacng": (1, 1, 1)})])


def test_preprocess_case_resample_and_coregister():
    rng = np.random.default_rng(0)
    image = ndimage.gaussian_filter(rng.random((24, 26, 22)), 2).astype(np.float32)
    case = Case("c", {"FLAIR": image, "T1": np.roll(image, 2, axis=0)}, np.diag([2.0, 2, 2, 1]))
    out = pp.preprocess_case(case, [("coregister", {}), ("resample", {"spacing": (4, 4, 4)})])
    t1_to_flair = np.array(out.meta["preprocessing"][0]["T1_to_FLAIR"])
    assert t1_to_flair[0, 3] == pytest.approx(-4.0, abs=0.5)  # rolled by 2 voxels of 2 mm
    assert out.shape == (12, 13, 11)


# --------------------------------------------------------------------------- command line


def test_cli_registers_to_a_reference_and_writes_the_matrix(tmp_path, template2, capsys, rigid):
    t1, brain, affine = template2
    move = rigid([4, 0, -3], [5, 3, -2])
    save_image(tmp_path / "ref.nii.gz", t1, affine)
    save_image(tmp_path / "in.nii.gz", t1, move @ affine)
    code = main(["preprocess", str(tmp_path / "in.nii.gz"), "--out", str(tmp_path / "out.nii.gz"),
                 "--reference", str(tmp_path / "ref.nii.gz"), "--normalize", "zscore"])
    assert code == 0
    record = json.loads((tmp_path / "out.json").read_text())
    assert [s["step"] for s in record["steps"]] == ["register", "normalize"]
    points = (np.c_[np.argwhere(brain), np.ones(int(brain.sum()))] @ (move @ affine).T)[:, :3]
    assert registration.displacement_mm(np.array(record["matrix"]), np.linalg.inv(move), points).mean() < 1.0
    out, out_affine = load_image(tmp_path / "out.nii.gz")
    np.testing.assert_allclose(out_affine, affine)
    assert np.corrcoef(out[brain > 0], t1[brain > 0])[0, 1] > 0.95


def test_cli_errors(tmp_path, capsys):
    save_image(tmp_path / "in.nii.gz", np.ones((7, 8, 9)), np.eye(4))
    nib.save(nib.Nifti1Image(np.ones((7, 8), np.float32), np.eye(4)), tmp_path / "ref2d.nii.gz")
    base = ["preprocess", str(tmp_path / "in.nii.gz"), "--out", str(tmp_path / "o.nii.gz")]
    assert main(base + ["--reference", str(tmp_path / "ref2d.nii.gz")]) == 2
    assert "has shape (7, 8) (2D); it must be a 3D image" in capsys.readouterr().err
    assert main(base + ["--normalize", "nyul"]) == 2
    assert "needs 'landmarks'" in capsys.readouterr().err
    assert main(base + ["--reference", str(tmp_path / "in.nii.gz"), "--spacing", "1", "1", "1"]) == 2
    assert "either --reference" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(base + ["--normalize", "minmax"])
    assert not (tmp_path / "o.nii.gz").exists()


def test_cli_spacing_and_nyul(tmp_path):
    rng = np.random.default_rng(0)
    save_image(tmp_path / "in.nii.gz", rng.gamma(3, 10, (8, 8, 6)) + 1, np.diag([1.0, 1, 3, 1]))
    (tmp_path / "lm.json").write_text(json.dumps({"landmarks": list(np.linspace(0, 100, 11))}))
    code = main(["preprocess", str(tmp_path / "in.nii.gz"), "--out", str(tmp_path / "o.nii.gz"),
                 "--spacing", "2", "2", "2", "--normalize", "nyul", "--landmarks", str(tmp_path / "lm.json")])
    assert code == 0
    out, affine = load_image(tmp_path / "o.nii.gz")
    assert out.shape == (4, 4, 9) and np.allclose(np.diag(affine)[:3], 2)
    np.testing.assert_allclose(np.percentile(out[out != 0], [1, 50, 99]), [0, 50, 100], atol=1.0)


# --------------------------------------------------------------------------- real data


def test_cli_longitudinal_registration_matches_upstream_transforms(tmp_path):
    """Study 2 FLAIR -> study 1 FLAIR agrees with the upstream ITK transforms within 1.5 mm.

    Upstream ``studyN_FLAIR_to_common_space.txt`` files are ITK transforms T_N that map
    common-space LPS points to study-N LPS points (ITK's fixed -> moving convention).
    In the toolkit's convention (moving RAS -> fixed RAS) each is
    C_N = itk_to_world_matrix(T_N): study-N world -> common world. The registration
    they imply from study 2 to study 1 is inv(C_1) @ C_2.
    """
    sample = shared_sample_dir()
    if sample is None:
        pytest.skip("shared/data/open_ms_data (longitudinal scans) is not beside the repository")
    folder = sample / "longitudinal" / "raw" / "patient01"
    out = tmp_path / "study2_on_study1.nii.gz"
    code = main(["preprocess", str(folder / "study2_FLAIR.nii.gz"), "--out", str(out),
                 "--reference", str(folder / "study1_FLAIR.nii.gz")])
    assert code == 0
    matrix = np.array(json.loads(out.with_name("study2_on_study1.json").read_text())["matrix"])
    to_common_1 = registration.itk_to_world_matrix(folder / "study1_FLAIR_to_common_space.txt")
    to_common_2 = registration.itk_to_world_matrix(folder / "study2_FLAIR_to_common_space.txt")
    upstream = np.linalg.inv(to_common_1) @ to_common_2
    image, affine = load_image(folder / "study2_FLAIR.nii.gz")
    brain = pp.skull_strip(image, affine, working_spacing=3.0)  # only to pick brain voxels
    points = (np.c_[np.argwhere(brain), np.ones(int(brain.sum()))] @ affine.T)[:, :3]
    assert brain.sum() * np.prod(spacing_from_affine(affine)) / 1000 > 800  # a brain, in mL
    assert registration.displacement_mm(matrix, upstream, points).mean() <= 1.5
    # and it is a real correction: doing nothing would be far off
    assert registration.displacement_mm(np.eye(4), upstream, points).mean() > 5
