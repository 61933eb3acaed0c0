"""Loading, saving and Case behaviour of mstoolkit.data.io."""

import gzip

import nibabel as nib
import numpy as np
import pytest

from mstoolkit.data.io import (
    Case,
    MSToolkitInputError,
    check_binary_mask,
    check_same_grid,
    load_case,
    load_image,
    load_mask,
    save_image,
    save_like,
    save_mask,
    spacing_from_affine,
    write_atomic,
)

# An LPS, anisotropic affine: x flipped, y flipped, 0.7 × 0.8 × 3 mm voxels.
LPS_AFFINE = np.array(
    [[-0.7, 0, 0, 50.0], [0, -0.8, 0, 60.0], [0, 0, 3.0, -20.0], [0, 0, 0, 1]]
)


def _write(path, data, affine=LPS_AFFINE, dtype=np.float32):
    nib.save(nib.Nifti1Image(np.asarray(data, dtype=dtype), affine), str(path))
    return path


@pytest.fixture
def volume():
    return np.arange(7 * 8 * 9, dtype=np.float32).reshape(7, 8, 9)


def test_load_image_returns_ras_and_preserves_world_positions(tmp_path, volume):
    path = _write(tmp_path / "img.nii.gz", volume)
    data, affine = load_image(path)
    assert nib.aff2axcodes(affine) == ("R", "A", "S")
    assert data.shape == (7, 8, 9) and data.dtype == np.float32
    # The same voxel value must sit at the same world position before and after.
    i, j, k = 2, 3, 4
    world = LPS_AFFINE @ [i, j, k, 1]
    ras_index = np.round(np.linalg.inv(affine) @ world).astype(int)[:3]
    assert data[tuple(ras_index)] == volume[i, j, k]
    assert spacing_from_affine(affine) == (0.7, 0.8, 3.0)


def test_missing_file_error_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="No such image file.*nope.nii.gz"):
        load_image(tmp_path / "nope.nii.gz")


def test_truncated_gzip_gives_clear_error(tmp_path, volume):
    path = _write(tmp_path / "img.nii.gz", volume)
    raw = path.read_bytes()
    bad = tmp_path / "truncated.nii.gz"
    bad.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(MSToolkitInputError, match="truncated or corrupt"):
        load_image(bad)


def test_garbage_file_gives_clear_error(tmp_path):
    bad = tmp_path / "garbage.nii.gz"
    bad.write_bytes(gzip.compress(b"not a nifti file at all" * 10))
    with pytest.raises(MSToolkitInputError, match="truncated or corrupt"):
        load_image(bad)


def test_nan_rejected_unless_allowed(tmp_path, volume):
    volume[1, 1, 1] = np.nan
    path = _write(tmp_path / "nan.nii.gz", volume)
    with pytest.raises(MSToolkitInputError, match="1 NaN or infinite"):
        load_image(path)
    data, _ = load_image(path, allow_nan=True)
    assert np.isnan(data).sum() == 1


def test_4d_rejected_but_singleton_4d_accepted(tmp_path):
    path = _write(tmp_path / "4d.nii.gz", np.zeros((4, 5, 6, 2)))
    with pytest.raises(MSToolkitInputError, match=r"shape \(4, 5, 6, 2\); expected a 3D"):
        load_image(path)
    path1 = _write(tmp_path / "4d1.nii.gz", np.zeros((4, 5, 6, 1)))
    assert load_image(path1)[0].shape == (4, 5, 6)


def test_non_binary_mask_rejected_with_values(tmp_path):
    path = _write(tmp_path / "prob.nii.gz", np.full((3, 4, 5), 0.4))
    with pytest.raises(MSToolkitInputError, match="not binary.*0.4.*Threshold"):
        load_mask(path)
    with pytest.raises(MSToolkitInputError, match="labels == k"):
        check_binary_mask(np.array([0, 1, 2]))
    assert check_binary_mask(np.array([True, False])).dtype == np.uint8


def test_save_like_round_trips_onto_reference_grid(tmp_path, volume):
    ref = _write(tmp_path / "ref.nii.gz", volume)
    data, affine = load_image(ref)
    mask = (data > data.mean()).astype(np.uint8)
    out = save_like(tmp_path / "mask.nii.gz", mask, ref, dtype=np.uint8)
    written = nib.load(str(out))
    assert np.allclose(written.affine, LPS_AFFINE)
    assert np.array_equal(np.asarray(written.dataobj), (volume > data.mean()).astype(np.uint8))
    assert written.get_data_dtype() == np.uint8


def test_save_like_rejects_wrong_shape(tmp_path, volume):
    ref = _write(tmp_path / "ref.nii.gz", volume)
    with pytest.raises(MSToolkitInputError, match=r"shape \(2, 2, 2\).*must match"):
        save_like(tmp_path / "x.nii.gz", np.zeros((2, 2, 2)), ref)


def test_saving_is_atomic_and_leaves_no_temp_files(tmp_path, volume):
    save_image(tmp_path / "a.nii.gz", volume, np.eye(4))
    save_mask(tmp_path / "m.nii.gz", volume > 10, np.eye(4))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nii.gz", "m.nii.gz"]
    with pytest.raises(MSToolkitInputError, match="not binary"):
        save_mask(tmp_path / "bad.nii.gz", volume, np.eye(4))
    assert not (tmp_path / "bad.nii.gz").exists()
    with pytest.raises(MSToolkitInputError, match="must end with .nii"):
        save_image(tmp_path / "a.png", volume, np.eye(4))


def test_write_atomic_text_bytes_and_writer(tmp_path):
    import os

    previous = os.umask(0o022)
    try:
        assert write_atomic(tmp_path / "a.json", '{"ü": 1}\n').read_text(encoding="utf-8") == '{"ü": 1}\n'
        assert write_atomic(tmp_path / "b.bin", b"\x00\x01").read_bytes() == b"\x00\x01"
        seen = []
        write_atomic(tmp_path / "c.nii.gz", lambda tmp: (seen.append(tmp.name), tmp.write_bytes(b"x")))
        assert seen[0].startswith(".tmp-") and seen[0].endswith("-c.nii.gz")  # same folder, same ending
        assert (tmp_path / "c.nii.gz").stat().st_mode & 0o777 == 0o644  # the usual permissions, like open()
    finally:
        os.umask(previous)
    write_atomic(tmp_path / "a.json", "new")
    assert (tmp_path / "a.json").read_text() == "new"

    def half_then_fail(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomic(tmp_path / "a.json", half_then_fail)
    assert (tmp_path / "a.json").read_text() == "new"  # the old file stays whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.bin", "c.nii.gz"]  # no temporary left


def test_check_same_grid_messages():
    check_same_grid((2, 3, 4), np.eye(4), (2, 3, 4), np.eye(4))
    with pytest.raises(MSToolkitInputError, match=r"FLAIR has shape \(2, 3, 4\) but T1 has shape \(2, 3, 5\).*resample"):
        check_same_grid((2, 3, 4), np.eye(4), (2, 3, 5), np.eye(4), names=("FLAIR", "T1"))
    shifted = np.eye(4)
    shifted[0, 3] = 5
    with pytest.raises(MSToolkitInputError, match="different affines"):
        check_same_grid((2, 3, 4), np.eye(4), (2, 3, 4), shifted)


def test_load_case_checks_grids_and_orders_channels(tmp_path, volume):
    flair = _write(tmp_path / "flair.nii.gz", volume)
    t1 = _write(tmp_path / "t1.nii.gz", volume * 2)
    mask = _write(tmp_path / "mask.nii.gz", volume > 300, dtype=np.uint8)
    case = load_case({"T1": t1, "FLAIR": flair}, mask=mask, case_id="s1")
    assert case.sequences == ("T1", "FLAIR")
    stacked = case.stack(("FLAIR", "T1"))
    assert stacked.shape == (2, 7, 8, 9)
    assert np.allclose(stacked[1], 2 * stacked[0])
    assert case.mask.dtype == np.uint8 and case.spacing == (0.7, 0.8, 3.0)
    other = _write(tmp_path / "t2.nii.gz", np.zeros((7, 8, 10)))
    with pytest.raises(MSToolkitInputError, match="FLAIR has shape .* but T2 has shape"):
        load_case({"FLAIR": flair, "T2": other})
    with pytest.raises(MSToolkitInputError, match="Unknown sequence name.*allowed: FLAIR, T1, T1CE, T2"):
        load_case({"DWI": flair})
    with pytest.raises(MSToolkitInputError, match="has no T2 image; it has T1, FLAIR"):
        case.stack(("FLAIR", "T2"))


def test_case_rejects_mismatched_arrays():
    with pytest.raises(MSToolkitInputError, match="different grids"):
        Case("x", {"FLAIR": np.zeros((2, 2, 2))}, np.eye(4), mask=np.zeros((2, 2, 3)))
    with pytest.raises(MSToolkitInputError, match="has no images"):
        Case("x", {}, np.eye(4))


def test_crop_around_lesions_keeps_world_coordinates_and_copies():
    from mstoolkit.data.io import Case, crop_around_lesions

    shape = (30, 32, 34)
    affine = np.diag([0.9, 1.1, 1.2, 1.0])
    affine[:3, 3] = (-10.0, 5.0, 2.0)
    flair = np.random.default_rng(0).random(shape).astype(np.float32)
    mask = np.zeros(shape, np.uint8)
    mask[18:22, 10:14, 20:24] = 1
    brain = np.zeros(shape, np.uint8)
    brain[5:25, 6:28, 7:30] = 1
    case = Case("c", {"FLAIR": flair}, affine, mask=mask, brain_mask=brain)
    cube = crop_around_lesions(case, 8)
    assert cube.shape == (8, 8, 8) and cube.mask.sum() == mask.sum()  # the whole lesion, centred
    start = np.array([15, 7, 17])  # the median lesion voxel (19.5, 11.5, 21.5 → 19, 11, 21) minus half the edge
    assert np.allclose(cube.affine[:3, 3], (affine @ np.append(start, 1.0))[:3])  # same world position
    np.testing.assert_array_equal(cube.images["FLAIR"], flair[15:23, 7:15, 17:25])
    assert not np.shares_memory(cube.images["FLAIR"], flair)
    brain_box = crop_around_lesions(case, 0)
    assert brain_box.shape == (28, 30, 31)  # the brain's bounding box, 4 voxels of margin, clipped
    without_brain = Case("c", {"FLAIR": flair}, affine, mask=mask)
    assert crop_around_lesions(without_brain, 0) is without_brain
