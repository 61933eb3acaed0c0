"""Training loop: losses, devices, AMP choice, determinism, checkpoints and resume, DDP, ensembles."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from mstoolkit.data.io import Case, MSToolkitInputError
from mstoolkit.display.plots import plot_history
from mstoolkit.runtime import pick_device
from mstoolkit.segmentation.config import LOSS_NAMES, PRESETS, TrainConfig
from mstoolkit.segmentation.models import export_reference, load_model
from mstoolkit.segmentation.train import amp_settings, build_loss, train, train_ensemble
from mstoolkit.segmentation.training_data import cache_cases, split_train_val
from mstoolkit.segmentation.validation import MIN_LESION_CANDIDATES_MM3


def toy_case(seed: int, shape=(21, 22, 19)) -> Case:
    """A sphere 'brain' with a few bright FLAIR / dark T1 blobs as lesions."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape).astype(float)
    centre = (np.array(shape) / 2)[:, None, None, None]
    radii = (np.array(shape) * 0.45)[:, None, None, None]
    brain = (((grid - centre) / radii) ** 2).sum(0) < 1
    mask = np.zeros(shape, bool)
    for _ in range(3):
        p = np.array([rng.integers(s // 3, 2 * s // 3) for s in shape])[:, None, None, None]
        mask |= ((grid - p) ** 2).sum(0) < rng.uniform(3, 8)
    mask &= brain
    flair = np.where(brain, 100 + 8 * rng.standard_normal(shape) + 70 * mask, 0).astype(np.float32)
    t1 = np.where(brain, 200 + 8 * rng.standard_normal(shape) - 50 * mask, 0).astype(np.float32)
    affine = np.diag([1.0, 1.1, 0.9, 1.0])
    return Case(f"toy{seed}", {"FLAIR": flair, "T1": t1}, affine, mask=mask.astype(np.uint8), brain_mask=brain.astype(np.uint8))


def tiny_config(tmp_path: Path | None = None, **changes) -> TrainConfig:
    config = TrainConfig(features=(4, 8), patch_size=(16, 16, 16), batch_size=2, epochs=2, iterations_per_epoch=3,
                         learning_rate=1e-2, device="cpu", progress=False, out_dir=str(tmp_path) if tmp_path else None,
                         val_roi_size=(24, 24, 24))
    return replace(config, **changes)


@pytest.fixture(scope="module")
def cases() -> list[Case]:
    return [toy_case(seed) for seed in range(3)]


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_losses_reward_the_right_answer(name):
    loss = build_loss(name)
    truth = torch.zeros(1, 1, 6, 7, 5)
    truth[..., 2:4, 2:5, 1:3] = 1
    good = loss(truth * 20 - 10, truth)
    bad = loss(10 - truth * 20, truth)
    assert float(good) < float(bad)


def test_unknown_loss_and_bad_config():
    with pytest.raises(MSToolkitInputError, match="Unknown loss 'l2'; allowed: dice, dice_ce"):
        build_loss("l2")
    with pytest.raises(MSToolkitInputError, match="Unknown loss 'l2'"):
        TrainConfig(loss="l2")
    with pytest.raises(MSToolkitInputError, match="'patch_size' must be 3 integers"):
        TrainConfig(patch_size=(32, 32))
    with pytest.raises(MSToolkitInputError, match="'augment' must be 'none', 'light' or 'domain'"):
        TrainConfig(augment="heavy")


def test_pick_device(capsys):
    assert pick_device("cpu").type == "cpu"
    with pytest.raises(MSToolkitInputError, match="'device' must be one of auto, cpu, cuda, mps, got 'tpu'"):
        pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(MSToolkitInputError, match="no CUDA GPU"):
            pick_device("cuda")
        if not torch.backends.mps.is_available():
            assert pick_device("auto").type == "cpu"
            assert "running on the CPU" in capsys.readouterr().out


def test_amp_settings_dispatch():
    # The CUDA branches are decided from the flag, so they are testable without a GPU.
    assert amp_settings("cuda", bf16_supported=True) == (True, torch.bfloat16, False)
    assert amp_settings("cuda", bf16_supported=False) == (True, torch.float16, True)
    assert amp_settings("cuda", enabled=False, bf16_supported=True) == (False, torch.float32, False)
    assert amp_settings("cpu") == (False, torch.float32, False)
    assert amp_settings(torch.device("mps")) == (False, torch.float32, False)


def test_cache_cases_normalises_within_brain(cases):
    cached = cache_cases(cases[:1], ("FLAIR", "T1"), min_size=(24, 24, 24))
    item = cached[0]
    assert item["image"].shape[0] == 2 and min(item["image"].shape[1:]) >= 24
    brain = np.zeros(item["label"].shape[1:], bool).ravel()
    brain[item["bg"]] = True
    brain[item["fg"]] = True
    values = item["image"][0].ravel()[brain]
    assert abs(values.mean()) < 1e-3 and abs(values.std() - 1) < 1e-3
    assert item["label"].sum() == cases[0].mask.sum() == len(item["fg"])
    no_mask = Case("x", {"FLAIR": cases[0].images["FLAIR"]}, np.eye(4))
    with pytest.raises(MSToolkitInputError, match="has no lesion mask"):
        cache_cases([no_mask], ("FLAIR",))


def test_loss_decreases_on_toy_case(cases):
    config = tiny_config(epochs=5, iterations_per_epoch=6, augment="none", patch_size=(16, 16, 16))
    _, history = train(config, cases[:2], cases[2:])
    assert history["loss"][-1] < history["loss"][0]
    assert len(history["val_dice"]) == 5 and all(0 <= d <= 1 for d in history["val_dice"])
    assert history["lr"][0] > history["lr"][-1]  # cosine schedule
    assert all(b >= a for a, b in zip(history["seconds"], history["seconds"][1:]))


def test_same_seed_same_weights(cases):
    config = tiny_config(augment="domain")
    a, _ = train(config, cases[:2])
    b, _ = train(config, cases[:2])
    c, _ = train(replace(config, seed=1), cases[:2])
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(pa, pb, msg=name)
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.state_dict().values(), c.state_dict().values()))


def test_checkpoints_and_resume_equal_unbroken_run(cases, tmp_path):
    full_dir, split_dir = tmp_path / "full", tmp_path / "split"
    config = tiny_config(epochs=4, augment="light")
    unbroken, history = train(replace(config, out_dir=str(full_dir)), cases[:2], cases[2:])
    assert {"last.pt", "best.pt", "history.json"} <= {p.name for p in full_dir.iterdir()}

    def interrupt_after_two_epochs(history):
        if len(history["epoch"]) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(replace(config, out_dir=str(split_dir)), cases[:2], cases[2:], callback=interrupt_after_two_epochs)
    # The run restarts from last.pt, as `mstoolkit train --resume` does.
    state = torch.load(split_dir / "last.pt", weights_only=True)
    assert state["epoch"] == 1
    train(replace(config, out_dir=str(split_dir), resume=True), cases[:2], cases[2:])
    last_full = torch.load(full_dir / "last.pt", weights_only=True)
    last_split = torch.load(split_dir / "last.pt", weights_only=True)
    for key, value in last_full["model"].items():
        torch.testing.assert_close(value, last_split["model"][key], msg=key)
    assert last_full["history"]["loss"] == pytest.approx(last_split["history"]["loss"])
    # best.pt loads with load_model and predicts like the model train() returned
    best, best_config = load_model(full_dir / "best.pt")
    assert 0.1 <= best_config["threshold"] <= 0.9 and best.threshold == best_config["threshold"]  # tuned on validation
    assert unbroken.threshold == best.threshold
    assert best_config["min_lesion_mm3"] in MIN_LESION_CANDIDATES_MM3 and best.min_lesion_mm3 == unbroken.min_lesion_mm3
    assert best_config["sequences"] == ["FLAIR", "T1"] and best_config["normalisation"]["method"] == "zscore"
    x = torch.randn(1, 2, 9, 10, 11)
    with torch.no_grad():
        torch.testing.assert_close(best(x), unbroken(x))
    fig = plot_history(history)
    assert fig.axes[1].get_ylabel() == "validation Dice"


def test_weight_averaging_keeps_and_resumes_the_average(cases, tmp_path):
    config = tiny_config(epochs=3, augment="light", ema_decay=0.9)
    full_dir, split_dir = tmp_path / "full", tmp_path / "split"
    returned, _ = train(replace(config, out_dir=str(full_dir)), cases[:2], cases[2:])
    last = torch.load(full_dir / "last.pt", weights_only=True)
    average = {k.removeprefix("module."): v for k, v in last["averaged"].items() if k.startswith("module.")}
    assert average.keys() == last["model"].keys()
    assert any(not torch.equal(average[k], last["model"][k]) for k in average)  # not the last step's weights
    best, _ = load_model(full_dir / "best.pt")
    x = torch.randn(1, 2, 9, 10, 11)
    with torch.no_grad():
        torch.testing.assert_close(best(x), returned(x))

    def interrupt_after_one_epoch(history):
        if len(history["epoch"]) == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(replace(config, out_dir=str(split_dir)), cases[:2], cases[2:], callback=interrupt_after_one_epoch)
    train(replace(config, out_dir=str(split_dir), resume=True), cases[:2], cases[2:])
    resumed = torch.load(split_dir / "last.pt", weights_only=True)["averaged"]
    for key, value in last["averaged"].items():
        torch.testing.assert_close(value, resumed[key], msg=key)  # the average carries over a restart
    with pytest.raises(MSToolkitInputError, match="'ema_decay' must be between 0 and 1"):
        TrainConfig(ema_decay=1.5)


def test_lesion_contrast_changes_only_the_lesions_of_training_patches(cases):
    from scipy import ndimage as ndi

    from mstoolkit.preprocessing.transforms import augmentation_pipeline
    from mstoolkit.segmentation.training_data import make_patch_sampler, sample_batch

    cached = cache_cases(cases[:1], ("FLAIR", "T1"))
    batches = []
    for probability in (0.0, 1.0):
        config = tiny_config(augment="light", lesion_contrast=probability, positive_fraction=1.0)
        augment = augmentation_pipeline(config.augment, config.patch_size, lesion_contrast=config.lesion_contrast)
        batches.append(sample_batch(cached, config, np.random.default_rng(7), make_patch_sampler(config), augment))
    (plain, labels), (changed, same_labels) = batches
    assert torch.equal(labels, same_labels)  # a fainter lesion is still a lesion
    lesion = labels.bool().expand_as(plain)
    far = ~torch.as_tensor(ndi.binary_dilation(lesion.numpy(), iterations=3))
    assert torch.equal(plain[far], changed[far])  # healthy tissue away from the lesions is untouched
    assert not torch.allclose(plain[lesion], changed[lesion])
    with pytest.raises(MSToolkitInputError, match="'lesion_contrast' must be a probability"):
        TrainConfig(lesion_contrast=0.5, augment="none")


def test_early_stopping(cases, tmp_path):
    config = tiny_config(epochs=20, iterations_per_epoch=1, learning_rate=1e-9, patience=2)
    _, history = train(config, cases[:1], cases[2:])
    assert len(history["epoch"]) < 20


def test_ensemble_members_differ(cases, tmp_path):
    members = train_ensemble(tiny_config(tmp_path, epochs=1), cases[:2], cases[2:], members=2)
    assert len(members) == 2 and (tmp_path / "member-1" / "best.pt").exists()
    a, b = (m.state_dict()["head.weight"] for m, _ in members)
    assert not torch.equal(a, b)
    with pytest.raises(MSToolkitInputError, match="'members' must be a positive integer"):
        train_ensemble(tiny_config(), cases, members=0)


def test_export_reference(cases, tmp_path):
    train(tiny_config(tmp_path / "run", epochs=1), cases[:2], cases[2:])
    out = export_reference(tmp_path / "run" / "best.pt", tmp_path / "ref", extra={"title": "toy"})
    assert {"model.pt", "config.json"} <= {p.name for p in out.iterdir()}
    exported, config = load_model(out)  # an exported folder loads like the shipped model
    trained, _ = load_model(tmp_path / "run" / "best.pt")
    assert config["title"] == "toy"
    x = torch.randn(1, len(config["sequences"]), 16, 16, 16)
    torch.testing.assert_close(exported(x), trained(x))
    (out / "model.pt").unlink()
    with pytest.raises(FileNotFoundError, match="export the model again"):
        load_model(out)


def test_presets_are_valid_configs():
    for name, settings in PRESETS.items():
        settings = {k: v for k, v in settings.items() if k not in ("n_subjects", "n_val", "real_lesion_share", "real_share")}
        assert TrainConfig(**settings).model_config()["name"] == "tiny_unet", name


def test_split_train_val_holds_out_the_last_standard_profile_cases():
    cases = [Case(f"c{i}", {"FLAIR": np.ones((2, 2, 2), np.float32)}, np.eye(4)) for i in range(6)]
    profiles = ["standard", "low_field", "vendor_b", "high_res", "standard", "low_field"]
    train_cases, val_cases = split_train_val(cases, profiles=profiles)
    assert [c.case_id for c in val_cases] == ["c4"]
    assert [c.case_id for c in train_cases] == ["c0", "c1", "c2", "c3", "c5"]
    _, val_cases = split_train_val(cases, profiles=profiles, n_val=3)  # only 2 standard: then the last other one
    assert sorted(c.case_id for c in val_cases) == ["c0", "c4", "c5"]
    train_cases, val_cases = split_train_val(cases)
    assert [c.case_id for c in val_cases] == ["c5"] and len(train_cases) == 5
    with pytest.raises(MSToolkitInputError, match="one per case"):
        split_train_val(cases, profiles=profiles[:2])
    with pytest.raises(MSToolkitInputError, match="at least 2"):
        split_train_val(cases[:1])


def test_reference_data_spreads_the_real_lesion_subjects_over_training_only(monkeypatch):
    from mstoolkit.phantom import generator as phantom
    from mstoolkit.segmentation.training_data import reference_phantom_cases

    def fake_subject(*, seed, profile, real_lesions):
        images = {name: np.zeros((2, 2, 2), np.float32) for name in ("FLAIR", "T1", "T2")}
        return Case(f"s{seed}", images, np.eye(4), meta={"profile": profile, "real": real_lesions})

    monkeypatch.setattr(phantom, "generate_subject", fake_subject)
    train_cases, val_cases = reference_phantom_cases(10, n_val=2, real_lesion_share=0.5)
    real = [c.meta["real"] for c in train_cases]
    assert real == [None, "patient01", None, "patient02", None, "patient03", None, "patient05"]
    assert [c.meta["real"] for c in val_cases] == [None, None]
    assert list(train_cases[0].images) == ["FLAIR", "T1"]
    train_cases, _ = reference_phantom_cases(5, n_val=1)
    assert all(c.meta["real"] is None for c in train_cases)
    with pytest.raises(MSToolkitInputError, match="'real_lesion_share' must be in"):
        reference_phantom_cases(5, real_lesion_share=1.5)


def test_reference_data_adds_patient26_with_its_share_and_only_the_taught_half(monkeypatch):
    from mstoolkit.phantom import generator as phantom
    from mstoolkit.segmentation.training_data import UNLABELLED, hemisphere, reference_training_cases

    def fake_subject(*, seed, profile, real_lesions):
        images = {name: np.zeros((2, 2, 2), np.float32) for name in ("FLAIR", "T1")}
        return Case(f"s{seed}", images, np.eye(4))

    monkeypatch.setattr(phantom, "generate_subject", fake_subject)
    train_cases, val_cases = reference_training_cases(6, n_val=2, real_share=0.2, held_out_half="left")
    assert [c.case_id for c in val_cases] == ["s1004", "s1005"]  # validation stays phantom: no real choice
    real = train_cases[-1]
    assert real.case_id == "patient26" and len(train_cases) == 5
    assert real.meta["sampling_weight"] / (real.meta["sampling_weight"] + 4) == pytest.approx(0.2)
    assert np.array_equal(real.meta["labelled_region"], hemisphere(real, "right"))
    item = cache_cases([real], ("FLAIR", "T1"))[0]
    assert (item["label"] == UNLABELLED).sum() > 0.3 * item["label"].size  # the left half taught nothing
    assert len(item["fg"]) == int((real.mask.astype(bool) & hemisphere(real, "right")).sum())
    whole, _ = reference_training_cases(6, n_val=2, real_share=0.2)
    assert whole[-1].meta["labelled_region"].all()
    assert len(reference_training_cases(6, n_val=2)[0]) == 4
    with pytest.raises(MSToolkitInputError, match="share of patches must be between 0 and 1"):
        reference_training_cases(6, real_share=1.0)


DDP_SCRIPT = textwrap.dedent(
    """
    import os, sys, torch
    sys.path.insert(0, {tests!r})
    from test_train import toy_case, tiny_config
    from mstoolkit.segmentation.train import train
    model, history = train(tiny_config(None, out_dir={out!r}, epochs=2), [toy_case(0), toy_case(1)], [toy_case(2)])
    torch.save(model.state_dict(), os.path.join({out!r}, "rank" + os.environ["RANK"] + ".pt"))
    """
)


def test_distributed_data_parallel_on_two_cpu_processes(tmp_path):
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT.format(tests=str(Path(__file__).parent), out=str(tmp_path)))
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)],
        capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for key in rank0:  # gradients were averaged: both processes hold the same weights
        torch.testing.assert_close(rank0[key], rank1[key], msg=key)
    assert (tmp_path / "last.pt").exists()
    assert len(torch.load(tmp_path / "last.pt", weights_only=True)["history"]["epoch"]) == 2


def test_augmentation_arms_draw_the_same_patches(cases):
    """Notebook 03's experiment credits a difference to the augmentation: the patches must not depend on it."""
    from mstoolkit.preprocessing.transforms import augmentation_pipeline
    from mstoolkit.segmentation.training_data import make_patch_sampler, sample_batch

    config = tiny_config()
    cached = cache_cases(cases, config.sequences, min_size=config.patch_size)
    draws = {}
    for arm in ("light", "domain"):
        rng = np.random.default_rng(0)
        augment = augmentation_pipeline(arm, config.patch_size)
        for step in augment.transforms:  # spatial steps off: the labels then show where each patch was cut
            if "label" in step.keys:
                step.prob = 0.0
        batches = [sample_batch(cached, config, rng, make_patch_sampler(config), augment) for _ in range(4)]
        draws[arm] = ([labels for _, labels in batches], [images for images, _ in batches], rng.integers(2**31))
    assert draws["light"][2] == draws["domain"][2]  # the generator that picks cases and patch centres ran alike
    for light, domain in zip(draws["light"][0], draws["domain"][0]):
        torch.testing.assert_close(light, domain)  # the same patches ...
    assert any(not torch.equal(a, b) for a, b in zip(draws["light"][1], draws["domain"][1]))  # ... augmented differently


def test_compare_augmentations_changes_only_the_augmentation(cases):
    from mstoolkit.segmentation.train import compare_augmentations, held_out_gaps

    config = tiny_config(epochs=2, iterations_per_epoch=3)
    test_cases = [("standard", cases[2]), ("low_field", cases[1])]
    same = compare_augmentations(config, cases[:2], test_cases, arms=("light", "light"), seeds=(0,), verbose=False)
    first, second = same.iloc[:2], same.iloc[2:]
    np.testing.assert_array_equal(first["dice"].to_numpy(), second["dice"].to_numpy())  # two arms alike: one model twice
    results = compare_augmentations(config, cases[:2], test_cases, seeds=(0, 1), verbose=False)
    assert len(results) == 2 * 2 * 2 and set(results["augment"]) == {"light", "domain"}
    assert results["dice"].between(0, 1).all()
    gaps = held_out_gaps(results, "low_field")
    assert list(gaps.columns) == ["seen", "held_out", "gap"] and len(gaps) == 4
    np.testing.assert_allclose(gaps["gap"], gaps["seen"] - gaps["held_out"])
    row = results[(results.augment == "domain") & (results.seed == 1)].set_index("profile")["dice"]
    assert gaps.loc[("domain", 1), "gap"] == pytest.approx(row["standard"] - row["low_field"])
    only_standard = held_out_gaps(results, "low_field", seen=["standard"])
    np.testing.assert_allclose(only_standard["gap"], gaps["gap"])  # one other profile: the same average
    with pytest.raises(MSToolkitInputError, match="'seen' must name tested profiles other than 'low_field'"):
        held_out_gaps(results, "low_field", seen=["low_field"])
    with pytest.raises(MSToolkitInputError, match="held-out profile 'vendor_b'"):
        held_out_gaps(results, "vendor_b")
    with pytest.raises(MSToolkitInputError, match="'test_cases' is empty"):
        compare_augmentations(config, cases[:2], [], verbose=False)


# --------------------------------------------------------------------------- learning from part of a case


def test_hemisphere_splits_at_world_x_zero():
    from mstoolkit.segmentation.training_data import hemisphere

    affine = np.diag([-1.0, 1.0, 1.0, 1.0])  # LAS storage, as many MNI files: voxel 0 is the right-most
    affine[0, 3] = 10.0  # voxel i sits at x = 10 - i mm
    case = Case("half", {"FLAIR": np.ones((21, 4, 3), np.float32)}, affine)
    left, right = hemisphere(case, "left"), hemisphere(case, "right")
    assert not (left & right).any() and (left | right).all()
    assert left[11:].all() and not left[:11].any()  # x = -1 mm and below is left
    with pytest.raises(MSToolkitInputError, match="Unknown hemisphere 'middle'"):
        hemisphere(case, "middle")


def test_labelled_region_keeps_the_rest_of_the_case_out_of_training(cases):
    from mstoolkit.segmentation.training_data import UNLABELLED, hemisphere, label_only

    case = cases[0]
    region = np.zeros(case.shape, bool)
    region[: case.shape[0] // 2] = True
    item = cache_cases([label_only(case, region, sampling_weight=3)], ("FLAIR", "T1"))[0]
    assert item["sampling_weight"] == 3.0
    assert 0 < len(item["fg"]) < int(case.mask.sum())  # only the lesion voxels inside the region
    # what happens outside the region cannot reach the model: other truth there, same weights
    other_truth = case.mask.copy()
    other_truth[case.shape[0] // 2:] = 1 - other_truth[case.shape[0] // 2:]
    other = replace(case, mask=other_truth)
    config = tiny_config(augment="light")
    a, _ = train(config, [label_only(case, region)])
    b, _ = train(config, [label_only(other, region)])
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values()):
        torch.testing.assert_close(pa, pb)
    c, _ = train(config, [case])  # the same case taught everywhere trains differently
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.state_dict().values(), c.state_dict().values()))
    assert (cache_cases([label_only(case, region)], ("FLAIR",))[0]["label"] == UNLABELLED).any()
    with pytest.raises(MSToolkitInputError, match="'labelled_region' has shape"):
        cache_cases([label_only(case, region[:-1])], ("FLAIR",))
    assert hemisphere(case, "left").shape == case.shape


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_unlabelled_voxels_give_no_gradient(name):
    from mstoolkit.segmentation.training_data import UNLABELLED, ignore_unlabelled

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 1, 8, 8, 8, generator=generator, requires_grad=True)
    labels = (torch.rand(2, 1, 8, 8, 8, generator=generator) > 0.8).float()
    labels[:, :, :4] = UNLABELLED
    loss = build_loss(name)(*ignore_unlabelled(logits, labels))
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.all(logits.grad[:, :, :4] == 0) and logits.grad[:, :, 4:].abs().sum() > 0
    if name == "dice":  # Dice over the labelled voxels alone, as if the others were not there
        alone = build_loss("dice")(logits[:, :, 4:], labels[:, :, 4:])
        torch.testing.assert_close(loss, alone, atol=1e-6, rtol=0)


def test_sampling_weight_draws_a_case_more_often(cases):
    from mstoolkit.segmentation.training_data import sample_batch

    class RecordingCrop:  # stands in for MONAI's sampler: records which case each patch comes from
        def __init__(self):
            self.drawn = []

        def set_random_state(self, seed):
            pass

        def __call__(self, data):
            self.drawn.append(data["image"].shape)
            return [{"image": np.zeros((2, 4, 4, 4), np.float32), "label": np.zeros((1, 4, 4, 4), np.float32)}]

    small, large = toy_case(0, shape=(21, 22, 19)), toy_case(1, shape=(25, 22, 19))
    cached = cache_cases([small, replace(large, meta={"sampling_weight": 9.0})], ("FLAIR", "T1"))
    crop, rng = RecordingCrop(), np.random.default_rng(0)
    for _ in range(100):
        sample_batch(cached, tiny_config(), rng, crop, None)
    share_large = np.mean([shape == cached[1]["image"].shape for shape in crop.drawn])
    assert 0.8 < share_large < 0.97  # 9 / 10 expected
