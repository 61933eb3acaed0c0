"""Tests for mstoolkit.preprocess: resampling, N4, skull stripping, normalisation, registration, CLI."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial.transform import Rotation

from mstoolkit import preprocess as pp
from mstoolkit.cli import main
from mstoolkit.datasets import real_sample_dir
from mstoolkit.io import Case, MSToolkitInputError, load_image, save_image, spacing_from_affine


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def _rigid(angles_deg, shift_mm, scale: float = 1.0) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, :3] = Rotation.from_euler("xyz", angles_deg, degrees=True).as_matrix() * scale
    matrix[:3, 3] = shift_mm
    return matrix


@pytest.fixture(scope="module")
def template2():
    """MNI template at 2 mm: (image, brain mask, affine)."""
    return pp.load_mni_template(resolution=2)


@pytest.fixture(scope="module")
def synthetic_head(template2):
    """A skull-on head: deformed MNI brain + dark bone + bright scalp, placed by a known rigid+scale move.

    Returns (image, true brain mask, affine, move) where move maps template world to head world.
    """
    t1, brain, affine = template2
    rng = np.random.default_rng(1)
    shape = t1.shape
    coarse = [rng.normal(0, 1, (5, 6, 5)) for _ in range(3)]
    disp = [ndimage.zoom(c, np.array(shape) / np.array(c.shape), order=3)[: shape[0], : shape[1], : shape[2]] * 1.5 for c in coarse]
    grid = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    coords = [g + d for g, d in zip(grid, disp)]
    t1d = ndimage.map_coordinates(t1, coords, order=1)
    truth = (ndimage.map_coordinates(brain.astype(float), coords, order=1) > 0.5).astype(np.uint8)
    head = ndimage.binary_dilation(truth, iterations=6)
    bone = head & ~ndimage.binary_dilation(truth, iterations=1)
    scalp = head & ~ndimage.binary_dilation(truth, iterations=4)
    image = t1d.copy()
    image[bone & ~scalp] = 0.1
    image[scalp] = 0.8
    image = (image + rng.normal(0, 0.02, shape)).astype(np.float32)
    move = _rigid([6, -4, 3], [4, -6, 3], scale=1.04)
    return image, truth, move @ affine, move


# --------------------------------------------------------------------------- conversions


def test_sitk_image_matches_nibabel_world_in_lps():
    affine = np.array([[0, 0, -3.0, 10], [1.5, 0, 0, -20], [0, 2.0, 0, 5], [0, 0, 0, 1]])
    img = pp._to_sitk(np.zeros((7, 8, 9), np.float32), affine)
    assert img.GetSize() == (7, 8, 9)
    ras = affine @ np.array([2, 3, 4, 1.0])
    lps = img.TransformIndexToPhysicalPoint((2, 3, 4))
    np.testing.assert_allclose(lps, [-ras[0], -ras[1], ras[2]], atol=1e-6)
    back = pp._from_sitk(pp._to_sitk(np.arange(504, dtype=np.float32).reshape(7, 8, 9), affine))
    np.testing.assert_array_equal(back, np.arange(504).reshape(7, 8, 9))


def test_itk_to_world_matrix_inverts_and_flips(tmp_path):
    # ITK: fixed LPS point p -> moving LPS point R p + t.  Toolkit: moving RAS -> fixed RAS.
    tx = sitk.AffineTransform(3)
    tx.SetMatrix(Rotation.from_euler("z", 10, degrees=True).as_matrix().ravel().tolist())
    tx.SetTranslation((3.0, -2.0, 5.0))
    tx.SetCenter((1.0, 2.0, 3.0))
    path = tmp_path / "t.txt"
    sitk.WriteTransform(tx, str(path))
    matrix = pp.itk_to_world_matrix(path)
    fixed_ras = np.array([10.0, -4.0, 7.0])
    moving_lps = np.array(tx.TransformPoint((-fixed_ras[0], -fixed_ras[1], fixed_ras[2])))
    moving_ras = moving_lps * [-1, -1, 1]
    np.testing.assert_allclose((matrix @ np.r_[moving_ras, 1])[:3], fixed_ras, atol=1e-6)


# --------------------------------------------------------------------------- resampling


def test_resample_to_spacing_keeps_field_of_view_and_interpolates_linearly():
    affine = np.diag([1.0, 1.0, 3.0, 1.0])
    ramp = np.broadcast_to(np.arange(9, dtype=np.float32) * 3.0, (7, 8, 9)).copy()  # value = z in mm
    out, new_affine = pp.resample_to_spacing(ramp, affine, (1.0, 1.0, 1.5))
    assert out.shape == (7, 8, 18) and out.dtype == np.float32
    # voxel k of the new grid sits at z = -0.75 + 1.5 * k mm: linear interpolation is exact inside
    z_mm = (new_affine @ np.array([0, 0, 5, 1.0]))[2]
    assert z_mm == pytest.approx(-0.75 + 1.5 * 5)
    assert out[3, 3, 5] == pytest.approx(z_mm, abs=1e-4)


def test_resample_mask_stays_binary_uint8_and_matches_nibabel():
    from nibabel.processing import resample_from_to

    rng = np.random.default_rng(0)
    mask = (ndimage.gaussian_filter(rng.random((7, 8, 9)), 1) > 0.5).astype(np.uint8)
    affine = np.array([[0.9, 0, 0, -3], [0, 1.1, 0, 2], [0, 0, 2.5, 1], [0, 0, 0, 1.0]])
    out, new_affine = pp.resample_to_spacing(mask, affine, (0.7, 0.7, 1.3), is_mask=True)
    assert out.dtype == np.uint8 and set(np.unique(out)) <= {0, 1}
    expected = resample_from_to(nib.Nifti1Image(mask.astype(np.float32), affine), (out.shape, new_affine), order=0)
    assert (out == expected.get_fdata()).mean() > 0.99


def test_resample_to_reference_applies_a_world_transform():
    image = np.zeros((7, 8, 9), np.float32)
    image[3, 4, 5] = 1.0
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    shift = np.eye(4)
    shift[:3, 3] = [2.0, 0.0, -4.0]  # input world + (2, 0, -4) = reference world
    out = pp.resample_to_reference(image, affine, (7, 8, 9), affine, transform=shift)
    assert np.argwhere(out == 1.0).tolist() == [[4, 4, 3]]


def test_resampling_a_mask_as_an_image_warns():
    mask = np.zeros((7, 8, 9), np.uint8)
    mask[2:5, 2:5, 2:5] = 1
    with pytest.warns(UserWarning, match="pass is_mask=True|Pass is_mask=True"):
        pp.resample_to_spacing(mask, np.eye(4), (2.0, 2.0, 2.0))


def test_resample_errors():
    with pytest.raises(MSToolkitInputError, match=r"'spacing' must be 3 positive numbers, got \(1.0, 0.0, 1.0\)"):
        pp.resample_to_spacing(np.zeros((7, 8, 9)), np.eye(4), (1.0, 0.0, 1.0))
    with pytest.raises(MSToolkitInputError, match="reference must be 3D"):
        pp.resample_to_reference(np.zeros((7, 8, 9)), np.eye(4), (7, 8), np.eye(4))
    with pytest.raises(MSToolkitInputError, match="not binary"):
        pp.resample_to_reference(np.full((7, 8, 9), 0.5), np.eye(4), (7, 8, 9), np.eye(4), is_mask=True)
    with pytest.raises(MSToolkitInputError, match="must be a 3D array"):
        pp.resample_to_spacing(np.zeros((7, 8)), np.eye(4), (1, 1, 1))


def test_reorient_to_ras_flips_an_lps_array():
    data = np.arange(504, dtype=np.float32).reshape(7, 8, 9)
    lps_affine = np.diag([-1.0, -1.0, 2.0, 1.0])
    out, affine = pp.reorient_to_ras(data, lps_affine)
    np.testing.assert_array_equal(out, data[::-1, ::-1, :])
    assert nib.aff2axcodes(affine) == ("R", "A", "S")
    np.testing.assert_allclose(affine @ [0, 0, 0, 1], lps_affine @ [6, 7, 0, 1])


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
    phantom = pytest.importorskip("mstoolkit.phantom", reason="the phantom generator is not available")
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


# --------------------------------------------------------------------------- registration


def test_register_recovers_a_known_rigid_move(template2):
    t1, brain, affine = template2
    move = _rigid([5, -3, 4], [6, -4, 3])
    # Same voxels, moved header: the true INPUT-world -> REFERENCE-world matrix is inv(move).
    matrix = pp.register(t1, move @ affine, t1, affine, kind="rigid", working_spacing=3.0)
    points = (np.c_[np.argwhere(brain), np.ones(int(brain.sum()))] @ (move @ affine).T)[:, :3]
    assert pp.displacement_mm(matrix, np.linalg.inv(move), points).mean() < 1.0


def test_register_affine_across_contrast(synthetic_head, template2):
    image, truth, head_affine, move = synthetic_head
    t1, brain, affine = template2
    inverted = np.where(image > 0.05, 1.2 - image, 0).astype(np.float32)  # a T2-like contrast
    matrix = pp.register(inverted, head_affine, t1, affine, kind="affine", reference_mask=ndimage.binary_dilation(brain, iterations=2).astype(np.uint8))
    points = (np.c_[np.argwhere(truth), np.ones(int(truth.sum()))] @ head_affine.T)[:, :3]
    # the smooth deformation is not affine; the average error stays small
    assert pp.displacement_mm(matrix, np.linalg.inv(move), points).mean() < 2.0


def test_register_errors(template2):
    t1, brain, affine = template2
    far = affine.copy()
    far[:3, 3] += 1000.0
    with pytest.raises(MSToolkitInputError, match="do not overlap"):
        pp.register(t1, far, t1, affine)
    with pytest.raises(MSToolkitInputError, match="'kind' must be 'rigid' or 'affine', got 'elastic'"):
        pp.register(t1, affine, t1, affine, kind="elastic")
    with pytest.raises(MSToolkitInputError, match="'reference_mask' is empty"):
        pp.register(t1, affine, t1, affine, reference_mask=np.zeros_like(brain))


# --------------------------------------------------------------------------- skull stripping


def test_skull_strip_atlas_on_synthetic_head(synthetic_head):
    image, truth, head_affine, move = synthetic_head
    mask, to_mni = pp.skull_strip(image, head_affine, return_transform=True)
    assert mask.dtype == np.uint8
    assert _dice(mask, truth) >= 0.95
    points = (np.c_[np.argwhere(truth), np.ones(int(truth.sum()))] @ head_affine.T)[:, :3]
    assert pp.displacement_mm(to_mni, np.linalg.inv(move), points).mean() < 2.5


def test_skull_strip_on_phantom_raw_scan():
    phantom = pytest.importorskip("mstoolkit.phantom", reason="the phantom generator is not available")
    if not hasattr(phantom, "generate_raw_scan"):
        pytest.skip("mstoolkit.phantom.generate_raw_scan is not available")
    raw = phantom.generate_raw_scan(seed=3)
    image, affine = pp.reorient_to_ras(raw["images"]["FLAIR"], raw["affine"])
    truth, _ = pp.reorient_to_ras(raw["brain_mask"], raw["affine"])
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


# --------------------------------------------------------------------------- normalisation


@pytest.fixture()
def brainlike():
    rng = np.random.default_rng(0)
    image = rng.gamma(4.0, 50.0, (27, 28, 29)).astype(np.float32)
    mask = np.zeros(image.shape, np.uint8)
    mask[1:26, 2:27, 2:28] = 1
    return image, mask


def test_zscore_has_mean_0_std_1_inside_and_0_outside(brainlike):
    image, mask = brainlike
    out = pp.normalize_zscore(image, mask=mask)
    inside = mask > 0
    assert out[inside].mean() == pytest.approx(0.0, abs=1e-5)
    assert out[inside].std() == pytest.approx(1.0, abs=1e-5)
    assert np.all(out[~inside] == 0)
    expected = (image[2, 3, 4] - image[inside].mean()) / image[inside].std()
    assert out[2, 3, 4] == pytest.approx(expected, rel=1e-5)


def test_percentile_maps_p1_p99_to_0_1(brainlike):
    image, mask = brainlike
    out = pp.normalize_percentile(image, mask=mask, lower=1, upper=99)
    inside = mask > 0
    assert out.min() >= 0 and out.max() <= 1
    low, high = np.percentile(image[inside], [1, 99])
    np.testing.assert_allclose(np.percentile(out[inside], [1, 99]), [0, 1], atol=0.01)
    assert out[2, 3, 4] == pytest.approx(np.clip((image[2, 3, 4] - low) / (high - low), 0, 1), rel=1e-5)


def test_nyul_puts_percentiles_on_the_standard_landmarks(brainlike):
    image, mask = brainlike
    scanner_b = image * 1.7 + 40  # the same anatomy on a "different scanner"
    landmarks = pp.nyul_landmarks([image, scanner_b ** 1.1], [mask, mask])
    assert landmarks[0] == 0 and landmarks[-1] == 100 and np.all(np.diff(landmarks) > 0)
    out_a = pp.normalize_nyul(image, mask=mask, landmarks=landmarks)
    out_b = pp.normalize_nyul(scanner_b, mask=mask, landmarks=landmarks)
    inside = mask > 0
    np.testing.assert_allclose(np.percentile(out_a[inside], pp._NYUL_PERCENTILES), landmarks, atol=1e-3)
    np.testing.assert_allclose(out_a[inside], out_b[inside], atol=1e-2)  # linear scanner change removed


def test_normalize_errors(brainlike):
    image, mask = brainlike
    with pytest.raises(MSToolkitInputError, match="unknown normalisation 'minmax'; allowed: zscore, percentile, nyul"):
        pp.normalize(image, method="minmax")
    with pytest.raises(MSToolkitInputError, match="'mask' is empty"):
        pp.normalize_zscore(image, mask=np.zeros_like(mask))
    with pytest.raises(MSToolkitInputError, match="constant inside the mask"):
        pp.normalize_zscore(np.ones(image.shape), mask=mask)
    with pytest.raises(MSToolkitInputError, match="needs 'landmarks'"):
        pp.normalize(image, method="nyul", mask=mask)
    with pytest.raises(MSToolkitInputError, match="must be 11 increasing values"):
        pp.normalize_nyul(image, mask=mask, landmarks=[0, 1, 2])
    with pytest.raises(MSToolkitInputError, match="all zeros"):
        pp.normalize_percentile(np.zeros((7, 8, 9)))


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


def test_cli_registers_to_a_reference_and_writes_the_matrix(tmp_path, template2, capsys):
    t1, brain, affine = template2
    move = _rigid([4, 0, -3], [5, 3, -2])
    save_image(tmp_path / "ref.nii.gz", t1, affine)
    save_image(tmp_path / "in.nii.gz", t1, move @ affine)
    code = main(["preprocess", str(tmp_path / "in.nii.gz"), "--out", str(tmp_path / "out.nii.gz"),
                 "--reference", str(tmp_path / "ref.nii.gz"), "--normalize", "zscore"])
    assert code == 0
    record = json.loads((tmp_path / "out.json").read_text())
    assert [s["step"] for s in record["steps"]] == ["register", "normalize"]
    points = (np.c_[np.argwhere(brain), np.ones(int(brain.sum()))] @ (move @ affine).T)[:, :3]
    assert pp.displacement_mm(np.array(record["matrix"]), np.linalg.inv(move), points).mean() < 1.0
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
    sample = real_sample_dir()
    if sample is None:
        pytest.skip("the real open_ms_data sample is not on this machine")
    folder = sample / "longitudinal" / "raw" / "patient01"
    out = tmp_path / "study2_on_study1.nii.gz"
    code = main(["preprocess", str(folder / "study2_FLAIR.nii.gz"), "--out", str(out),
                 "--reference", str(folder / "study1_FLAIR.nii.gz")])
    assert code == 0
    matrix = np.array(json.loads(out.with_name("study2_on_study1.json").read_text())["matrix"])
    to_common_1 = pp.itk_to_world_matrix(folder / "study1_FLAIR_to_common_space.txt")
    to_common_2 = pp.itk_to_world_matrix(folder / "study2_FLAIR_to_common_space.txt")
    upstream = np.linalg.inv(to_common_1) @ to_common_2
    image, affine = load_image(folder / "study2_FLAIR.nii.gz")
    brain = pp.skull_strip(image, affine, working_spacing=3.0)  # only to pick brain voxels
    points = (np.c_[np.argwhere(brain), np.ones(int(brain.sum()))] @ affine.T)[:, :3]
    assert brain.sum() * np.prod(spacing_from_affine(affine)) / 1000 > 800  # a brain, in mL
    assert pp.displacement_mm(matrix, upstream, points).mean() <= 1.5
    # and it is a real correction: doing nothing would be far off
    assert pp.displacement_mm(np.eye(4), upstream, points).mean() > 5
