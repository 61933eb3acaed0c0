"""Tests for mstoolkit.preprocessing.registration: ITK conversions, reorientation, resampling, registration."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial.transform import Rotation

from mstoolkit.data.io import MSToolkitInputError
from mstoolkit.preprocessing import registration

# --------------------------------------------------------------------------- conversions


def test_sitk_image_matches_nibabel_world_in_lps():
    affine = np.array([[0, 0, -3.0, 10], [1.5, 0, 0, -20], [0, 2.0, 0, 5], [0, 0, 0, 1]])
    img = registration.to_sitk(np.zeros((7, 8, 9), np.float32), affine)
    assert img.GetSize() == (7, 8, 9)
    ras = affine @ np.array([2, 3, 4, 1.0])
    lps = img.TransformIndexToPhysicalPoint((2, 3, 4))
    np.testing.assert_allclose(lps, [-ras[0], -ras[1], ras[2]], atol=1e-6)
    back = registration.from_sitk(registration.to_sitk(np.arange(504, dtype=np.float32).reshape(7, 8, 9), affine))
    np.testing.assert_array_equal(back, np.arange(504).reshape(7, 8, 9))


def test_itk_to_world_matrix_inverts_and_flips(tmp_path):
    # ITK: fixed LPS point p -> moving LPS point R p + t.  Toolkit: moving RAS -> fixed RAS.
    tx = sitk.AffineTransform(3)
    tx.SetMatrix(Rotation.from_euler("z", 10, degrees=True).as_matrix().ravel().tolist())
    tx.SetTranslation((3.0, -2.0, 5.0))
    tx.SetCenter((1.0, 2.0, 3.0))
    path = tmp_path / "t.txt"
    sitk.WriteTransform(tx, str(path))
    matrix = registration.itk_to_world_matrix(path)
    fixed_ras = np.array([10.0, -4.0, 7.0])
    moving_lps = np.array(tx.TransformPoint((-fixed_ras[0], -fixed_ras[1], fixed_ras[2])))
    moving_ras = moving_lps * [-1, -1, 1]
    np.testing.assert_allclose((matrix @ np.r_[moving_ras, 1])[:3], fixed_ras, atol=1e-6)


# --------------------------------------------------------------------------- resampling


def test_resample_to_spacing_keeps_field_of_view_and_interpolates_linearly():
    affine = np.diag([1.0, 1.0, 3.0, 1.0])
    ramp = np.broadcast_to(np.arange(9, dtype=np.float32) * 3.0, (7, 8, 9)).copy()  # value = z in mm
    out, new_affine = registration.resample_to_spacing(ramp, affine, (1.0, 1.0, 1.5))
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
    out, new_affine = registration.resample_to_spacing(mask, affine, (0.7, 0.7, 1.3), is_mask=True)
    assert out.dtype == np.uint8 and set(np.unique(out)) <= {0, 1}
    expected = resample_from_to(nib.Nifti1Image(mask.astype(np.float32), affine), (out.shape, new_affine), order=0)
    assert (out == expected.get_fdata()).mean() > 0.99


def test_resample_to_reference_applies_a_world_transform():
    image = np.zeros((7, 8, 9), np.float32)
    image[3, 4, 5] = 1.0
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    shift = np.eye(4)
    shift[:3, 3] = [2.0, 0.0, -4.0]  # input world + (2, 0, -4) = reference world
    out = registration.resample_to_reference(image, affine, (7, 8, 9), affine, transform=shift)
    assert np.argwhere(out == 1.0).tolist() == [[4, 4, 3]]


def test_resampling_a_mask_as_an_image_warns():
    mask = np.zeros((7, 8, 9), np.uint8)
    mask[2:5, 2:5, 2:5] = 1
    with pytest.warns(UserWarning, match="pass is_mask=True|Pass is_mask=True"):
        registration.resample_to_spacing(mask, np.eye(4), (2.0, 2.0, 2.0))


def test_resample_errors():
    with pytest.raises(MSToolkitInputError, match=r"'spacing' must be 3 positive numbers, got \(1.0, 0.0, 1.0\)"):
        registration.resample_to_spacing(np.zeros((7, 8, 9)), np.eye(4), (1.0, 0.0, 1.0))
    with pytest.raises(MSToolkitInputError, match="reference must be 3D"):
        registration.resample_to_reference(np.zeros((7, 8, 9)), np.eye(4), (7, 8), np.eye(4))
    with pytest.raises(MSToolkitInputError, match="not binary"):
        registration.resample_to_reference(np.full((7, 8, 9), 0.5), np.eye(4), (7, 8, 9), np.eye(4), is_mask=True)
    with pytest.raises(MSToolkitInputError, match="must be a 3D array"):
        registration.resample_to_spacing(np.zeros((7, 8)), np.eye(4), (1, 1, 1))


def test_reorient_to_ras_flips_an_lps_array():
    data = np.arange(504, dtype=np.float32).reshape(7, 8, 9)
    lps_affine = np.diag([-1.0, -1.0, 2.0, 1.0])
    out, affine = registration.reorient_to_ras(data, lps_affine)
    np.testing.assert_array_equal(out, data[::-1, ::-1, :])
    assert nib.aff2axcodes(affine) == ("R", "A", "S")
    np.testing.assert_allclose(affine @ [0, 0, 0, 1], lps_affine @ [6, 7, 0, 1])


# --------------------------------------------------------------------------- registration


def test_register_recovers_a_known_rigid_move(template2, rigid):
    t1, brain, affine = template2
    move = rigid([5, -3, 4], [6, -4, 3])
    # Same voxels, moved header: the true INPUT-world -> REFERENCE-world matrix is inv(move).
    matrix = registration.register(t1, move @ affine, t1, affine, kind="rigid", working_spacing=3.0)
    points = (np.c_[np.argwhere(brain), np.ones(int(brain.sum()))] @ (move @ affine).T)[:, :3]
    assert registration.displacement_mm(matrix, np.linalg.inv(move), points).mean() < 1.0


def test_register_affine_across_contrast(synthetic_head, template2):
    image, truth, head_affine, move = synthetic_head
    t1, brain, affine = template2
    inverted = np.where(image > 0.05, 1.2 - image, 0).astype(np.float32)  # a T2-like contrast
    around_brain = ndimage.binary_dilation(brain, iterations=2).astype(np.uint8)
    matrix = registration.register(inverted, head_affine, t1, affine, kind="affine", reference_mask=around_brain)
    points = (np.c_[np.argwhere(truth), np.ones(int(truth.sum()))] @ head_affine.T)[:, :3]
    # the smooth deformation is not affine; the average error stays small
    assert registration.displacement_mm(matrix, np.linalg.inv(move), points).mean() < 2.0


def test_register_errors(template2):
    t1, brain, affine = template2
    far = affine.copy()
    far[:3, 3] += 1000.0
    with pytest.raises(MSToolkitInputError, match="do not overlap"):
        registration.register(t1, far, t1, affine)
    with pytest.raises(MSToolkitInputError, match="'kind' must be 'rigid' or 'affine', got 'elastic'"):
        registration.register(t1, affine, t1, affine, kind="elastic")
    with pytest.raises(MSToolkitInputError, match="'reference_mask' is empty"):
        registration.register(t1, affine, t1, affine, reference_mask=np.zeros_like(brain))
