"""Tests of the synthetic MS phantom (mstoolkit.phantom.generator, its anatomy and lesion model)."""

from __future__ import annotations

import cc3d
import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from mstoolkit.data.io import MSToolkitInputError, load_image
from mstoolkit.phantom import anatomy as phantom_anatomy
from mstoolkit.phantom import dataset as phantom_dataset
from mstoolkit.phantom import generator as phantom
from mstoolkit.phantom import lesions as phantom_lesions


@pytest.fixture(scope="module")
def case():
    return phantom.generate_subject(seed=0, t1ce=True)


def _scene_mask(seed: int) -> tuple[np.ndarray, dict, list]:
    """The lesion mask of subject ``seed`` without rendering images (cheaper)."""
    anatomy, lesions, _, _ = phantom._scene(seed)
    tissue = phantom._tissue_with_lesions(anatomy, phantom_lesions.rasterise_lesions(lesions)[0])
    lesion, _ = phantom._masks(tissue)
    return (lesion > 0.5).astype(np.uint8), anatomy, lesions


def test_same_seed_gives_identical_arrays(case):
    again = phantom.generate_subject(seed=0, t1ce=True)
    for name, image in case.images.items():
        assert image.tobytes() == again.images[name].tobytes(), name
    assert case.mask.tobytes() == again.mask.tobytes()
    assert case.brain_mask.tobytes() == again.brain_mask.tobytes()


def test_grid_types_and_orientation(case):
    assert set(case.images) == {"FLAIR", "T1", "T2", "T1CE"}
    for image in case.images.values():
        assert image.shape == (182, 218, 182) and image.dtype == np.float32
    for mask in (case.mask, case.brain_mask):
        assert mask.dtype == np.uint8 and mask.shape == case.shape
        assert set(np.unique(mask)) <= {0, 1}
    np.testing.assert_array_equal(case.affine, phantom_anatomy.MNI_AFFINE)
    assert nib.aff2axcodes(case.affine) == ("R", "A", "S")
    assert case.spacing == (1.0, 1.0, 1.0)


def test_same_grid_as_the_real_sample(case):
    from mstoolkit.data.datasets import real_sample_dir

    root = real_sample_dir()
    flair = min((root / "cross_sectional" / "MNI" / "patient26").glob("FLAIR_*.nii.gz"))
    image, affine = load_image(flair)
    assert image.shape == case.shape
    np.testing.assert_allclose(affine, case.affine, atol=1e-4)


def test_contrasts_look_like_mri(case):
    brain, lesion = case.brain_mask > 0, case.mask > 0
    flair, t1, t2 = (case.images[s] for s in ("FLAIR", "T1", "T2"))
    assert case.mask.sum() > 0
    assert 30 < np.median(flair[brain]) < 300  # arbitrary units like a scanner, not 0..1
    assert flair[lesion].mean() > 1.2 * np.median(flair[brain])  # lesions bright on FLAIR
    assert t1[lesion].mean() < np.percentile(t1[brain], 75)  # iso- to hypointense on T1
    assert t2[lesion].mean() > 1.3 * np.median(t2[brain])  # bright on T2
    assert np.percentile(t2[brain], 99) > 2.5 * np.median(t2[brain])  # CSF bright on T2
    assert np.percentile(flair[brain], 2) < 0.5 * np.median(flair[brain])  # CSF dark on FLAIR
    assert np.all(flair[~brain] == 0)  # skull-stripped like the real MNI sample
    enhancing = [les for les in case.meta["lesions"] if les["kind"] == "enhancing"]
    if enhancing:
        assert case.images["T1CE"][lesion].max() > case.images["T1"][lesion].max()


def test_lesions_inside_brain_and_mostly_white_matter(case):
    assert np.all(case.brain_mask[case.mask > 0] == 1)
    mask, anatomy, _ = _scene_mask(0)
    np.testing.assert_array_equal(mask, case.mask)
    assert anatomy["wm"][mask > 0].mean() > 0.6


def test_lesion_statistics_match_the_fitted_ranges():
    counts, volumes, zones = [], [], []
    for seed in (1, 2, 3):
        mask, _, _ = _scene_mask(seed)
        labels = cc3d.connected_components(mask, connectivity=26)
        stats = cc3d.statistics(labels)
        counts.append(int(labels.max()))
        volumes += list(stats["voxel_counts"][1:])
        zones += phantom_lesions._zone_of(stats["centroids"][1:])
    # Real masks (open_ms_data): 17-392 lesions per subject, median volume 17 mm^3, max ~39 mL.
    assert all(5 <= n <= 450 for n in counts), counts
    assert 5 <= np.median(volumes) <= 50
    assert max(volumes) > 200  # a few large (possibly confluent) lesions, not only specks
    assert max(volumes) < 60000
    share = {z: zones.count(z) / len(zones) for z in set(zones)}
    assert share.get("periventricular", 0) > share.get("juxtacortical", 0)
    for zone, real_share in phantom_lesions._REAL_ZONE_SHARE.items():  # measured on the real masks
        assert abs(share.get(zone, 0.0) - real_share) < 0.15, (zone, share)


def test_periventricular_lesions_point_away_from_the_ventricles():
    _, anatomy, lesions = _scene_mask(0)
    template = phantom_anatomy.load_template()
    dots = []
    for les in lesions:
        if les.zone != "periventricular":
            continue
        # Where this lesion's voxel sits in the template, whose ventricles define "away".
        flat = np.ravel_multi_index(tuple(np.rint(les.centre).astype(int)), phantom_anatomy.MNI_SHAPE)
        pos = np.searchsorted(template["domain"], flat)
        i, j, k = (anatomy["coords"][:, pos] // 2).astype(int)
        dots.append(abs(les.rotation[:, 0] @ template["away"][:, i, j, k]))
    # Dawson's fingers: the long axis is (anti)parallel to the direction away from the ventricles.
    assert len(dots) > 0 and np.median(dots) > 0.9


def test_anisotropic_spacing_gives_the_right_grid():
    thick = phantom.generate_subject(seed=0, spacing=(1, 1, 3), profile="low_field")
    assert thick.shape == (182, 218, 61)
    assert thick.spacing == (1.0, 1.0, 3.0)
    np.testing.assert_allclose(thick.affine[:3, :3], np.diag([1.0, 1.0, 3.0]))
    # The first thick slice covers the first three 1 mm slices: its centre is 1 mm higher.
    np.testing.assert_allclose(thick.affine[:3, 3], [-91.0, -126.0, -71.0])
    assert set(np.unique(thick.mask)) <= {0, 1} and thick.mask.dtype == np.uint8
    assert thick.mask.shape == thick.brain_mask.shape == thick.images["FLAIR"].shape


def test_profiles_change_the_scanner_not_the_subject(case):
    other = phantom.generate_subject(seed=0, profile="vendor_b")
    np.testing.assert_array_equal(other.mask, case.mask)  # same anatomy and lesions
    brain = case.brain_mask > 0
    ratio = np.median(other.images["FLAIR"][brain]) / np.median(case.images["FLAIR"][brain])
    assert ratio > 3  # another intensity scale (12-bit scanner)
    assert len(phantom.PROFILES) >= 3 and "standard" in phantom.PROFILES


def test_longitudinal_change_mask_is_new_and_enlarged_voxels():
    baseline, followup, change = phantom.generate_longitudinal_pair(seed=5, misregistration_mm=0.0)
    assert change.dtype == np.uint8 and change.shape == baseline.shape
    expected = (followup.mask > 0) & (baseline.mask == 0)
    np.testing.assert_array_equal(change, expected.astype(np.uint8))
    assert change.sum() > 0
    assert baseline.meta["evolution"]["new"] >= 1
    assert not np.array_equal(baseline.images["FLAIR"], followup.images["FLAIR"])


def test_raw_scan_has_skull_bias_and_lps_axes(tmp_path):
    scan = phantom.generate_raw_scan(seed=0, spacing=(2, 2, 4))
    assert nib.aff2axcodes(scan["affine"]) == ("L", "P", "S")
    flair = scan["images"]["FLAIR"]
    assert flair.shape == (100, 120, 45) and scan["mask"].shape == flair.shape
    assert set(np.unique(scan["mask"])) <= {0, 1} and scan["mask"].sum() > 0
    head = flair > 0.3 * np.median(flair[scan["brain_mask"] > 0])
    assert head.sum() > 1.2 * scan["brain_mask"].sum()  # skull and scalp are there
    paths = phantom_dataset.raw_paths(tmp_path, "sub-001")
    phantom_dataset._save_image(paths["FLAIR"], flair, scan["affine"])
    image, affine = load_image(paths["FLAIR"])
    assert nib.aff2axcodes(affine) == ("R", "A", "S")  # io turns it to RAS+
    np.testing.assert_allclose(image[::-1, ::-1, :], np.rint(flair), atol=0.51)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: phantom.generate_subject(seed=0, profile="siemens"), "Unknown profile 'siemens'; allowed: standard"),
        (lambda: phantom.generate_subject(seed=0, spacing=(1.0, 0.0, 1.0)), "'spacing' must be 3 positive numbers"),
        (lambda: phantom.generate_subject(seed=0, spacing=(1.0, 1.0)), "'spacing' must be 3 positive numbers"),
        (lambda: phantom.generate_subject(seed=-1), "'seed' must be a non-negative integer"),
        (lambda: phantom.generate_subject(seed=0, n_lesions=-2), "'n_lesions' must be an integer from 0"),
        (lambda: phantom.generate_subject(seed=0, real_lesions="patient26"), "Unknown real lesion mask 'patient26'"),
        (lambda: phantom.generate_subject(seed=0, real_lesions="patient01", n_lesions=3), "not both"),
        (lambda: phantom.generate_longitudinal_pair(seed=0, misregistration_mm=-1), "'misregistration_mm'"),
    ],
)
def test_bad_options_raise_clear_errors(call, message):
    with pytest.raises(MSToolkitInputError, match=message):
        call()


def test_clear_cache_frees_the_cached_templates():
    from mstoolkit.phantom.anatomy import load_template

    load_template()
    assert load_template.cache_info().currsize == 1
    phantom.clear_cache()
    assert load_template.cache_info().currsize == 0


def test_real_lesion_masks_are_split_without_the_evaluation_case():
    train, heldout = phantom_lesions.REAL_LESION_MASKS["train"], phantom_lesions.REAL_LESION_MASKS["heldout"]
    assert len(train) == 20 and len(heldout) == 7 and not set(train) & set(heldout)
    assert "patient26" not in train + heldout
    folder = phantom_lesions.REAL_LESION_DIR
    assert sorted(p.name for p in folder.glob("*.nii.gz")) == sorted(f"{n}.nii.gz" for n in train + heldout)


def test_shipped_real_masks_are_the_upstream_files():
    """Byte-identical to open_ms_data: each file's git blob SHA-1 is the committed manifest's."""
    from mstoolkit.data import download, fetch

    manifest = {e["path"]: e for e in download.load_manifest("open_ms_data")["files"]}
    for shipped in phantom_lesions.REAL_LESION_DIR.glob("*.nii.gz"):
        upstream = f"cross_sectional/MNI/{shipped.stem[:9]}/GOLD_STANDARD_N4_noneck_reduced_winsor_regtoFLAIR_regtoMNI.nii.gz"
        assert fetch.file_digest(shipped, "git_blob_sha1") == manifest[upstream]["git_blob_sha1"], shipped.name


def test_real_lesions_land_where_the_real_mask_has_them():
    real = phantom_lesions._real_mask("patient02")
    case = phantom.generate_subject(seed=3, real_lesions="patient02")
    assert case.meta["real_lesions"] == "patient02"
    # The subject's own anatomy moves them a few mm (and the seed may mirror them left-right):
    # nearly every lesion voxel lies within 5 mm of the real mask, and not of another patient's.
    def share_within_5mm(mask):
        return max((ndi.distance_transform_edt(~mask[::flip])[case.mask > 0] <= 5).mean() for flip in (1, -1))

    assert share_within_5mm(real) > 0.85
    assert share_within_5mm(phantom_lesions._real_mask("patient29")) < 0.3
    assert 0.5 * real.sum() < case.mask.sum() < 1.2 * real.sum()
    brain, lesion = case.brain_mask > 0, case.mask > 0
    assert case.images["FLAIR"][lesion].mean() > 1.2 * case.images["FLAIR"][brain & ~lesion].mean()
    again = phantom.generate_subject(seed=3, real_lesions="patient02")
    assert again.images["FLAIR"].tobytes() == case.images["FLAIR"].tobytes()
