"""Tests for mstoolkit.preprocessing.transforms: MONAI pipelines, named augmentations, augmentation grid."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from mstoolkit.data.io import Case, MSToolkitInputError, save_image, save_mask
from mstoolkit.preprocessing import transforms as tr


@pytest.fixture()
def case():
    """A (23, 26, 21) 'head' with two sequences of different scale and one small lesion."""
    rng = np.random.default_rng(0)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, s) for s in (23, 26, 21)], indexing="ij")
    head = (x**2 + y**2 + z**2 < 0.8).astype(np.float32)
    flair = head * (100 + 10 * rng.standard_normal(head.shape)).astype(np.float32)
    t1 = head * (500 + 80 * rng.standard_normal(head.shape)).astype(np.float32)
    mask = np.zeros(head.shape, np.uint8)
    mask[11:13, 12:14, 10:12] = 1
    return Case("sub-t", {"FLAIR": flair, "T1": t1}, np.diag([1.0, 1.0, 1.2, 1.0]), mask=mask)


def test_case_to_dict_keeps_sequences_label_and_id(case):
    data = tr.case_to_dict(case, ["T1", "FLAIR"])
    assert list(data)[:2] == ["T1", "FLAIR"]
    assert data["label"].dtype == np.uint8 and data["label"].sum() == 8
    assert data["case_id"] == "sub-t"
    no_mask = Case("n", {"FLAIR": case.images["FLAIR"]}, case.affine)
    assert tr.case_to_dict(no_mask, ["FLAIR"])["label"].sum() == 0
    with pytest.raises(MSToolkitInputError, match="has no T2 image"):
        tr.case_to_dict(case, ["FLAIR", "T2"])


def test_val_transforms_normalise_each_channel_over_nonzero_voxels(case):
    out = tr.val_transforms(["FLAIR", "T1"])(tr.case_to_dict(case, ["FLAIR", "T1"]))
    assert set(out) >= {"image", "label"} and "FLAIR" not in out
    image = out["image"]
    assert isinstance(image, torch.Tensor) and image.shape == (2, 23, 26, 21) and image.dtype == torch.float32
    inside = torch.as_tensor(case.images["FLAIR"] != 0)
    for channel in range(2):
        values = image[channel][inside]
        assert float(values.mean()) == pytest.approx(0.0, abs=1e-4)
        assert float(values.std(unbiased=False)) == pytest.approx(1.0, abs=1e-3)
        assert float(image[channel][~inside].abs().max()) == 0.0
    assert out["label"].shape == (1, 23, 26, 21) and float(out["label"].sum()) == 8


def test_train_transforms_patches_and_pos_neg_ratio(case):
    pipeline = tr.train_transforms(["FLAIR", "T1"], patch_size=(8, 8, 8), pos_neg=(3, 1), num_samples=4,
                                   augment="none", seed=0)
    data = tr.case_to_dict(case, ["FLAIR", "T1"])
    samples = [s for _ in range(20) for s in pipeline(data)]
    assert all(s["image"].shape == (2, 8, 8, 8) and s["label"].shape == (1, 8, 8, 8) for s in samples)
    with_lesion = np.mean([float(s["label"].sum()) > 0 for s in samples])
    assert 0.6 <= with_lesion <= 0.9  # 3 : 1 asked for, i.e. 0.75
    only_negative = tr.train_transforms(["FLAIR"], patch_size=(6, 6, 6), pos_neg=(0, 1), num_samples=4,
                                        augment="none", seed=0)
    assert all(float(s["label"].sum()) == 0 for _ in range(5) for s in only_negative(tr.case_to_dict(case, ["FLAIR"])))


@pytest.mark.parametrize(("level", "lesion_contrast"), [("light", 0.0), ("domain", 0.0), ("domain", 0.5)])
def test_train_transforms_augment_levels_run_and_keep_label_binary(case, level, lesion_contrast):
    pipeline = tr.train_transforms(["FLAIR", "T1"], patch_size=(16, 16, 16), num_samples=2, augment=level,
                                   lesion_contrast=lesion_contrast, seed=3)
    for sample in pipeline(tr.case_to_dict(case, ["FLAIR", "T1"])):
        assert sample["image"].shape == (2, 16, 16, 16)
        assert torch.isfinite(sample["image"]).all()
        assert set(torch.unique(sample["label"]).tolist()) <= {0.0, 1.0}


def _steps(compose):
    return [(type(t).__name__, sorted(t.keys), getattr(t, "prob", None)) for t in compose.transforms]


@pytest.mark.parametrize(("level", "lesion_contrast"), [("light", 0.0), ("light", 0.5), ("domain", 0.0), ("domain", 0.5)])
def test_train_transforms_augment_with_the_training_loops_pipeline(level, lesion_contrast):
    """One augmentation vocabulary and one pipeline: train_transforms ends with what the training loop runs."""
    pipeline = tr.train_transforms(["FLAIR", "T1"], patch_size=(16, 16, 16), augment=level, lesion_contrast=lesion_contrast)
    augment = [t for t in pipeline.transforms if type(t).__name__ == "Compose"]
    assert len(augment) == 1
    assert _steps(augment[0]) == _steps(tr.augmentation_pipeline(level, (16, 16, 16), lesion_contrast=lesion_contrast))
    assert not any(type(t).__name__ == "Compose" for t in tr.train_transforms(["FLAIR"], patch_size=(8, 8, 8),
                                                                              augment="none").transforms)
    assert tr.augmentation_pipeline("none", (16, 16, 16)) is None
    assert list(tr.AUGMENT_LEVELS) == ["none", "light", "domain"]


def test_augmentation_pipeline_light_and_domain():
    assert _steps(tr.augmentation_pipeline("light", (8, 8, 8))) == [("RandFlipd", ["image", "label"], 0.5)]
    with_contrast = _steps(tr.augmentation_pipeline("light", (8, 8, 8), lesion_contrast=0.3))
    assert with_contrast[1] == ("RandLesionContrastd", ["image"], 0.3)  # right after the flip
    domain = tr.augmentation_pipeline("domain", (8, 8, 8))
    assert [name for name, _, _ in _steps(domain)] == [
        "RandFlipd", "RandAffined", "RandSimulateLowResolutiond", "RandGaussianSmoothd", "RandBiasFieldd",
        "RandAdjustContrastd", "RandScaleIntensityd", "RandShiftIntensityd", "RandGaussianNoised"]
    # the reference model's recipe: these probabilities must not drift
    assert [prob for _, _, prob in _steps(domain)] == [0.5, 0.3, 0.25, 0.2, 0.4, 0.5, 0.5, 0.5, 0.4]
    rng = np.random.default_rng(0)
    patch = {"image": torch.as_tensor(rng.normal(size=(2, 8, 8, 8)).astype(np.float32)),
             "label": torch.as_tensor((rng.random((1, 8, 8, 8)) > 0.9).astype(np.float32))}
    outputs = []
    for _ in range(2):
        domain.set_random_state(seed=5)
        outputs.append(domain({k: v.clone() for k, v in patch.items()}))
    torch.testing.assert_close(outputs[0]["image"], outputs[1]["image"], atol=0, rtol=0)  # seeded: the same patch
    assert outputs[0]["image"].shape == (2, 8, 8, 8)


def test_train_transforms_are_reproducible_with_a_seed(case):
    data = tr.case_to_dict(case, ["FLAIR"])
    first = tr.train_transforms(["FLAIR"], patch_size=(8, 8, 8), augment="domain", seed=7)(data)
    second = tr.train_transforms(["FLAIR"], patch_size=(8, 8, 8), augment="domain", seed=7)(data)
    torch.testing.assert_close(first[0]["image"], second[0]["image"], atol=1e-5, rtol=1e-5)
    third = tr.train_transforms(["FLAIR"], patch_size=(8, 8, 8), augment="domain", seed=8)(data)
    assert not torch.allclose(first[0]["image"], third[0]["image"])


def test_every_named_augmentation(case):
    data = tr.val_transforms(["FLAIR", "T1"])(tr.case_to_dict(case, ["FLAIR", "T1"]))
    sample = {"FLAIR": data["image"][:1], "T1": data["image"][1:], "label": data["label"]}
    for name in tr.AUGMENTATIONS:
        transform = tr.augmentation(name, ["FLAIR", "T1"], prob=1.0)
        transform.set_random_state(seed=1)
        out = transform({k: v.clone() for k, v in sample.items()})
        assert out["FLAIR"].shape == sample["FLAIR"].shape
        assert not torch.equal(torch.as_tensor(out["FLAIR"]), sample["FLAIR"]), name
        if name == "flip":  # left-right mirror of image and label together
            assert torch.equal(torch.as_tensor(out["label"]), torch.flip(sample["label"], dims=[1]))
        if name in ("gamma", "noise", "bias_field", "histogram_shift", "low_resolution", "brain_contrast",
                    "lesion_contrast"):
            assert torch.equal(torch.as_tensor(out["label"]), sample["label"])  # intensity only
    # intensity augmentations are drawn independently per sequence
    gamma = tr.augmentation("gamma", ["FLAIR", "T1"], prob=1.0)
    gamma.set_random_state(seed=2)
    same = {"FLAIR": sample["FLAIR"].clone(), "T1": sample["FLAIR"].clone()}
    out = gamma(same)
    assert not torch.allclose(torch.as_tensor(out["FLAIR"]), torch.as_tensor(out["T1"]))


def test_elastic_moves_image_and_label_together():
    z, y, x = np.mgrid[:40, :40, :40]
    blob = ((z - 20) ** 2 + (y - 16) ** 2 + (x - 24) ** 2 < 64).astype(np.float32)[None]
    sample = {"FLAIR": torch.as_tensor(blob), "label": torch.as_tensor(blob.copy())}
    warp = tr.RandElasticd(["FLAIR", "label"], modes=["bilinear", "nearest"], magnitude=0.08)
    warp.set_random_state(seed=4)
    out = warp(sample)
    moved = out["label"].numpy() > 0.5
    assert not np.array_equal(moved, blob > 0.5)  # it deformed...
    overlap = 2 * (moved & (out["FLAIR"].numpy() > 0.5)).sum() / (moved.sum() + (out["FLAIR"].numpy() > 0.5).sum())
    assert overlap > 0.95  # ...image and label alike
    still = tr.RandElasticd(["FLAIR"], modes=["bilinear"], magnitude=0.0)(sample)
    torch.testing.assert_close(still["FLAIR"], sample["FLAIR"], atol=1e-5, rtol=0)  # no displacement: identity


def test_lesion_contrast_changes_lesions_only_and_keeps_the_label():
    rng = np.random.default_rng(0)
    image = np.zeros((2, 40, 40, 40), np.float32)
    image[:, 4:36, 4:36, 4:36] = rng.normal(0.0, 0.2, (2, 32, 32, 32))  # brain; 0 outside
    label = np.zeros((1, 40, 40, 40), np.uint8)
    label[0, 10:16, 10:16, 10:16] = 1
    label[0, 24:30, 24:30, 24:30] = 1
    image[0][label[0] > 0] += 2.0  # bright on FLAIR
    image[1][label[0] > 0] -= 1.0  # dark on T1
    before = image.copy()
    change = tr.RandLesionContrastd(prob=1.0, factors=(0.5, 0.5))
    change.set_random_state(seed=1)
    out = change({"image": image, "label": label})
    after = np.asarray(out["image"])
    lesion = label[0] > 0
    assert after[0][lesion].mean() == pytest.approx(1.0, abs=0.15)  # half the contrast to the tissue around
    assert after[1][lesion].mean() == pytest.approx(-0.5, abs=0.15)
    far = ndi.distance_transform_edt(~lesion) > 3
    np.testing.assert_array_equal(after[:, far], before[:, far])  # healthy tissue untouched
    np.testing.assert_array_equal(image, before)  # the cached input volume is not modified
    assert out["label"] is label
    varied = tr.RandLesionContrastd(prob=1.0)
    varied.set_random_state(seed=2)
    means = [np.asarray(varied({"image": before, "label": label})["image"])[0][sl].mean()
             for sl in [(slice(10, 16),) * 3, (slice(24, 30),) * 3]]
    assert abs(means[0] - means[1]) > 0.05  # each lesion gets its own factor


def test_brain_contrast_is_monotone_inside_the_brain_and_keeps_the_background():
    rng = np.random.default_rng(0)
    image = np.zeros((2, 30, 30, 30), np.float32)
    image[:, 5:25, 5:25, 5:25] = rng.normal(0.0, 1.0, (2, 20, 20, 20))
    brain = image[0] != 0
    curve = tr.RandBrainContrastd(prob=1.0)
    curve.set_random_state(seed=1)
    after = np.asarray(curve({"image": image})["image"])
    assert np.all(after[:, ~brain] == 0)  # background stays 0, as at inference
    for c in range(2):
        before, mapped = image[c][brain], after[c][brain]
        assert not np.allclose(mapped, before)
        order = np.argsort(before)
        assert np.all(np.diff(mapped[order]) >= -1e-5)  # the order of intensities is kept
        assert mapped.mean() == pytest.approx(before.mean(), abs=1e-4)  # still z-scored
        assert mapped.std() == pytest.approx(before.std(), rel=1e-4)
    curve.set_random_state(seed=1)
    np.testing.assert_array_equal(np.asarray(curve({"image": image})["image"]), after)  # seeded


def test_from_files_pipeline_orients_and_resamples(tmp_path, case):
    lps = np.diag([-1.0, -1.0, 1.2, 1.0])
    save_image(tmp_path / "f.nii.gz", case.images["FLAIR"][::-1, ::-1], lps)
    save_mask(tmp_path / "m.nii.gz", case.mask[::-1, ::-1], lps)
    files = {"FLAIR": str(tmp_path / "f.nii.gz"), "label": str(tmp_path / "m.nii.gz")}
    out = tr.val_transforms(["FLAIR"], from_files=True)(files)
    memory = tr.val_transforms(["FLAIR"])(tr.case_to_dict(case, ["FLAIR"]))
    torch.testing.assert_close(out["image"], memory["image"], atol=1e-4, rtol=1e-4)  # LPS file -> RAS array
    resampled = tr.val_transforms(["FLAIR"], from_files=True, spacing=(2.0, 2.0, 2.4))(files)
    assert resampled["image"].shape[1] == 12 and resampled["image"].shape[3] == 11  # 23 x 1 mm, 21 x 1.2 mm
    assert set(torch.unique(resampled["label"]).tolist()) <= {0.0, 1.0}


def test_transform_errors(case):
    with pytest.raises(MSToolkitInputError, match="^'augment' must be 'none', 'light' or 'domain', got 'strong'.$"):
        tr.train_transforms(["FLAIR"], patch_size=(8, 8, 8), augment="strong")
    with pytest.raises(MSToolkitInputError, match="'lesion_contrast' must be a probability in"):
        tr.train_transforms(["FLAIR"], patch_size=(8, 8, 8), augment="none", lesion_contrast=0.5)
    with pytest.raises(MSToolkitInputError, match="'augment' must be 'none', 'light' or 'domain', got 'heavy'"):
        tr.augmentation_pipeline("heavy", (8, 8, 8))
    with pytest.raises(MSToolkitInputError, match="'sequences' must be names from FLAIR, T1, T1CE, T2"):
        tr.train_transforms(["PD"], patch_size=(8, 8, 8))
    with pytest.raises(MSToolkitInputError, match="'lesion_contrast' changes the lesions the label marks: pass label_key"):
        tr.augmentation("lesion_contrast", ["FLAIR"], label_key=None)
    with pytest.raises(MSToolkitInputError, match="'patch_size' must be 3 positive integers"):
        tr.train_transforms(["FLAIR"], patch_size=(8, 8))
    with pytest.raises(MSToolkitInputError, match="'pos_neg' must be two non-negative numbers"):
        tr.train_transforms(["FLAIR"], patch_size=(8, 8, 8), pos_neg=(0, 0))
    with pytest.raises(MSToolkitInputError, match="unknown augmentation 'mixup'; allowed: flip"):
        tr.augmentation("mixup", ["FLAIR"])
    with pytest.raises(MSToolkitInputError, match="'spacing' needs from_files=True"):
        tr.val_transforms(["FLAIR"], spacing=(1, 1, 1))
    with pytest.raises(MSToolkitInputError, match=r"unknown augmentation\(s\) \['blur'\]"):
        tr.augmentation_grid(case, names=["blur"])


def test_augmentation_grid_draws_one_row_per_augmentation(case):
    fig = tr.augmentation_grid(case, names=["flip", "gamma", "noise"], n_samples=2, slab=9)
    axes = fig.get_axes()
    assert len(axes) == 3 * 3
    assert axes[0].get_ylabel() == "flip" and axes[0].get_title() == "original"
    assert "lesions in orange" in fig._suptitle.get_text()
    flipped = axes[1].get_images()[0].get_array()
    original = axes[0].get_images()[0].get_array()
    assert not np.allclose(flipped, original)
    matplotlib.pyplot.close(fig)
