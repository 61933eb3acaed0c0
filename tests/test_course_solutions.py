"""The answers notebooks 01 and 02 fall back on (mstoolkit.course.solutions), on hand-made cases."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from mstoolkit.course import solutions
from mstoolkit.data.io import Case


def test_orientation_code_reads_the_affine_not_the_array(tmp_path):
    data = np.zeros((4, 5, 6), np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([-1.0, 1.0, 1.0, 1.0])), tmp_path / "las.nii")
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "ras.nii")
    assert solutions.orientation_code(tmp_path / "las.nii") == "LAS"
    assert solutions.orientation_code(tmp_path / "ras.nii") == "RAS"


def test_lesion_volume_uses_the_voxel_size():
    cube = np.zeros((9, 9, 9), np.uint8)
    cube[2:5, 2:5, 2:5] = 1
    assert solutions.lesion_volume_ml(cube, (1.0, 1.0, 3.0)) == pytest.approx(0.081)
    assert solutions.lesion_volume_ml(cube.astype(bool), (0.5, 0.5, 0.5)) == pytest.approx(0.003375)


def test_count_lesions_joins_corner_neighbours():
    toy = np.zeros((12, 12, 12), np.uint8)
    toy[1:3, 1:3, 1:3] = 1
    toy[3, 3, 3] = 1  # touches the cube at a corner only: the same lesion with 26-connectivity
    toy[8:10, 8, 8] = 1
    assert solutions.count_lesions(toy) == 2
    assert solutions.count_lesions(np.zeros((3, 3, 3))) == 0


def test_lesion_sizes_leave_out_the_background():
    toy = np.zeros((6, 6, 6), np.uint8)
    toy[0, 0, 0] = 1
    toy[2:4, 2:4, 2:4] = 1
    sizes = solutions.lesion_sizes_mm3(toy, (1.0, 1.0, 2.0))
    assert sorted(sizes.tolist()) == [2.0, 16.0]  # one size per lesion, none for the background
    assert solutions.lesion_sizes_mm3(np.zeros((3, 3, 3)), (1, 1, 1)).size == 0


def test_voxel_to_mni_applies_the_affine_first():
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = (-90, -126, -72)
    to_mni = np.eye(4)
    to_mni[:3, :3] = np.diag([1.1, 1.0, 1.0])  # a scaling: the order of the two matrices matters
    to_mni[:3, 3] = (5, 0, 0)
    assert np.allclose(solutions.voxel_to_mni((10, 20, 30), affine, to_mni), (-72.0, -86.0, -12.0))


def test_lesion_fraction_counts_lesion_inside_the_brain_only():
    brain = np.zeros((10, 10, 10), np.uint8)
    brain[:, :, :5] = 1  # 500 brain voxels
    lesion = np.zeros_like(brain)
    lesion[0, 0, :5] = 1  # 5 inside the brain
    lesion[9, 9, 5:] = 1  # 5 outside it (e.g. a rater's stray strokes): not counted
    case = Case("toy", {"FLAIR": brain.astype(np.float32)}, np.eye(4), mask=lesion, brain_mask=brain)
    assert solutions.lesion_fraction(case) == pytest.approx(0.01)


def test_mask_to_1mm_stays_binary_and_keeps_its_volume():
    mask = np.zeros((40, 40, 12), np.uint8)
    mask[10:30, 12:28, 4:8] = 1  # 1 x 1 x 3 mm voxels
    resampled, affine = solutions.mask_to_1mm(mask, np.diag([1.0, 1.0, 3.0, 1.0]))
    assert resampled.dtype == np.uint8 and set(np.unique(resampled)) <= {0, 1}
    assert np.allclose(np.abs(np.diag(affine)[:3]), 1.0)
    assert resampled.sum() == pytest.approx(mask.sum() * 3, rel=0.15)
