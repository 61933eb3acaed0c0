"""Tests of mstoolkit.uncertainty.sampling: sampling, measures and retention curves."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from torch import nn

from mstoolkit.data.io import MSToolkitInputError
from mstoolkit.uncertainty import sampling as U

SHAPE = (12, 10, 9)
ROI = (16, 16, 16)


def _net(dropout: float = 0.5) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(2, 4, 3, padding=1), nn.BatchNorm3d(4), nn.ReLU(), nn.Dropout3d(dropout),
                         nn.Conv3d(4, 1, 1))


@pytest.fixture
def inputs() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(2,) + SHAPE).astype(np.float32)


def _entropy(p: float) -> float:
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


def test_uncertainty_maps_hand_computed():
    samples = np.array([0.2, 0.8, 0.9, 0.9]).reshape(2, 1, 1, 2).astype(np.float32)  # voxel a: 0.2/0.9, b: 0.8/0.9
    maps = U.uncertainty_maps(samples)
    mean_a, mean_b = 0.55, 0.85
    assert maps["mean"].ravel() == pytest.approx([mean_a, mean_b])
    assert maps["entropy"].ravel() == pytest.approx([_entropy(mean_a), _entropy(mean_b)], abs=1e-6)
    expected = [(_entropy(0.2) + _entropy(0.9)) / 2, (_entropy(0.8) + _entropy(0.9)) / 2]
    assert maps["expected_entropy"].ravel() == pytest.approx(expected, abs=1e-6)
    assert maps["mutual_information"].ravel() == pytest.approx(
        [_entropy(mean_a) - expected[0], _entropy(mean_b) - expected[1]], abs=1e-6)
    assert maps["variance"].ravel() == pytest.approx([0.1225, 0.0025], abs=1e-6)
    agree = U.uncertainty_maps(np.full((5, 2, 2, 2), 0.3, np.float32))  # identical samples: no epistemic part
    assert agree["mutual_information"].max() == pytest.approx(0, abs=1e-6)
    assert agree["entropy"].ravel() == pytest.approx([_entropy(0.3)] * 8, abs=1e-6)


def test_mc_dropout_changes_outputs_only_through_dropout(inputs):
    model = _net()
    model.train()
    with torch.no_grad():  # give BatchNorm non-trivial running statistics
        model(torch.from_numpy(inputs)[None] * 3 + 1)
    running = [model[1].running_mean.clone(), model[1].running_var.clone(), int(model[1].num_batches_tracked)]
    samples = U.sample_predictions(model, inputs, method="mc_dropout", n=4, roi_size=ROI)
    assert not np.allclose(samples[0], samples[1])  # dropout is on
    assert torch.equal(model[1].running_mean, running[0]) and torch.equal(model[1].running_var, running[1])
    assert int(model[1].num_batches_tracked) == running[2]
    assert model.training and model[3].training  # modes restored
    model[3].p = 1e-12  # dropout (almost) off: every sample equals the eval-mode prediction
    still = U.sample_predictions(model, inputs, method="mc_dropout", n=2, roi_size=ROI)
    with torch.no_grad():
        reference = torch.sigmoid(model.eval()(torch.from_numpy(inputs)[None]))[0, 0].numpy()
    np.testing.assert_allclose(still[0], reference, atol=1e-5)
    np.testing.assert_allclose(still[1], reference, atol=1e-5)


def test_sampling_is_reproducible_and_respects_the_brain(inputs):
    model = _net().eval()
    brain = np.zeros(SHAPE, bool)
    brain[2:9, 2:8, 1:7] = True
    a = U.sample_predictions(model, inputs, method="mc_dropout", n=3, roi_size=ROI, seed=1, brain_mask=brain)
    b = U.sample_predictions(model, inputs, method="mc_dropout", n=3, roi_size=ROI, seed=1, brain_mask=brain)
    np.testing.assert_array_equal(a, b)
    assert a[:, ~brain].max() == 0 and a.shape == (3,) + SHAPE


def test_ensemble_and_tta(inputs):
    models = [_net().eval(), _net(0.1).eval()]
    with torch.no_grad():
        models[1][0].weight.mul_(-1)
    samples = U.sample_predictions(models, inputs, method="ensemble", roi_size=ROI)
    with torch.no_grad():
        for sample, model in zip(samples, models):
            np.testing.assert_allclose(sample, torch.sigmoid(model(torch.from_numpy(inputs)[None]))[0, 0].numpy(), atol=1e-5)
    # A voxel-wise model on a smooth image: augmentations mapped back must agree with the plain prediction.
    pointwise = nn.Conv3d(2, 1, 1).eval()
    with torch.no_grad():
        pointwise.weight.copy_(torch.tensor([1.0, 0.0]).view(1, 2, 1, 1, 1))
        pointwise.bias.zero_()
    grid = np.mgrid[0:24, 0:20, 0:22].astype(np.float32)
    smooth = np.stack([np.sin(grid[0] / 6) + np.cos(grid[1] / 5), np.zeros_like(grid[0])])
    tta = U.sample_predictions(pointwise, smooth, method="tta", n=4, roi_size=(32, 32, 32), tta_intensity=0.02)
    np.testing.assert_allclose(tta[0], 1 / (1 + np.exp(-smooth[0])), atol=1e-5)  # sample 0: no augmentation
    inner = (slice(None), slice(4, -4), slice(4, -4), slice(4, -4))
    assert np.abs(tta[inner] - tta[0][inner[1:]]).max() < 0.1


def test_tta_brings_no_half_probability_in_at_the_borders(inputs):
    # A model sure that nothing is a lesion: rotated and scaled copies must not pad the border
    # with logit 0 (probability 0.5) when they are mapped back.
    certain = nn.Conv3d(2, 1, 1).eval()
    with torch.no_grad():
        certain.weight.zero_()
        certain.bias.fill_(-6.0)
    tta = U.sample_predictions(certain, inputs, method="tta", n=4, roi_size=ROI, tta_degrees=20, tta_scale=0.2)
    np.testing.assert_allclose(tta, 1 / (1 + math.exp(6.0)), atol=1e-6)


def test_warp_round_trip():
    rng = np.random.default_rng(0)
    grid = np.mgrid[0:20, 0:16, 0:24].astype(np.float32)
    volume = torch.from_numpy(np.sin(grid[0] / 5) + grid[2] / 20)[None, None]
    theta = U._affine_theta(rng, (20, 16, 24), 5.0, 0.05)
    back = U._warp(U._warp(volume, theta), U._inverse(theta))
    assert (back - volume)[..., 4:-4, 4:-4, 4:-4].abs().max() < 0.05


def test_lesion_uncertainty_hand_made():
    samples = np.zeros((4, 10, 10, 10), np.float32)
    samples[:, 1:3, 1:3, 1:3] = 0.95  # lesion 1: every sample sees it, confidently
    samples[:2, 6:8, 6:8, 6:8] = 0.9  # lesion 2: half the samples see it
    samples[2:, 6:8, 6:8, 6:8] = 0.3
    truth = np.zeros((10, 10, 10), bool)
    truth[1:3, 1:3, 1:3] = True
    table = U.lesion_uncertainty(samples, truth=truth, measure="entropy")
    assert list(table["status"]) == ["TP", "FP"]
    assert list(table["detection_rate"]) == [1.0, 0.5] and list(table["voxels"]) == [8, 8]
    assert table["uncertainty"].iloc[0] == pytest.approx(_entropy(0.95), abs=1e-5)
    assert table["uncertainty"].iloc[1] == pytest.approx(_entropy(0.6), abs=1e-5)


def _brute_ndsc_retention(pred, truth, uncertainty, brain, fraction):
    from mstoolkit.evaluation.metrics import ndsc

    p, t, u = pred[brain], truth[brain], uncertainty[brain]
    order = np.argsort(u, kind="stable")
    kept = int(p.size * fraction)
    mixed = p.copy()
    mixed[order[kept:]] = t[order[kept:]]
    return ndsc(mixed.reshape(-1, 1, 1), t.reshape(-1, 1, 1))


def test_retention_curve_against_brute_force_and_ideal():
    rng = np.random.default_rng(2)
    truth = np.zeros((30, 30, 30), bool)
    truth[10:16, 10:16, 10:16] = True
    pred = truth.copy()
    pred[14:18, 10:16, 10:16] = True  # some false positives
    pred[10:11] = False  # some misses
    brain = np.ones(truth.shape, bool)
    brain[:2] = False
    errors = pred != truth
    perfect = errors.astype(float) + 0.01 * rng.random(truth.shape)
    curve = U.retention_curve(pred, truth, perfect, brain_mask=brain)
    assert len(curve["fractions"]) == 200 and curve["fractions"][0] == 0 and curve["fractions"][-1] == 1
    for i in (0, 50, 120, 190, 199):
        assert curve["ndsc"][i] == pytest.approx(_brute_ndsc_retention(pred, truth, perfect, brain, curve["fractions"][i]))
    n_errors = errors[brain].sum() / brain.sum()
    ideal = curve["fractions"] <= 1 - n_errors
    assert np.all(curve["ndsc"][ideal] == 1.0)  # every error referred: perfect
    random_curve = U.retention_curve(pred, truth, rng.random(truth.shape), brain_mask=brain)
    assert curve["area_above"] < 0.02 < random_curve["area_above"]


def test_lesion_retention_curve():
    import pandas as pd

    table = pd.DataFrame({"uncertainty": [0.1, 0.9, 0.5], "status": ["TP", "FP", "TP"]})
    curve = U.lesion_retention_curve(table, n_truth=4, n_detected=2)
    precision, sensitivity = 2 / 3, 0.5
    assert curve["f1"][-1] == pytest.approx(2 * precision * sensitivity / (precision + sensitivity))
    assert curve["f1"][0] == pytest.approx(2 * 1 * 0.5 / 1.5)  # the FP referred first
    with pytest.raises(MSToolkitInputError, match="no 'status' column"):
        U.lesion_retention_curve(table.drop(columns="status"), n_truth=1, n_detected=1)


def test_plots_run():
    rng = np.random.default_rng(0)
    prob = rng.random((10, 10, 10))
    curve = U.retention_curve(prob > 0.5, prob > 0.6, prob, brain_mask=np.ones(prob.shape))
    assert "retention" in U.plot_retention({"entropy": curve}).get_title()


def test_errors(inputs):
    no_dropout = nn.Sequential(nn.Conv3d(2, 1, 1))
    with pytest.raises(MSToolkitInputError, match="no dropout layer"):
        U.sample_predictions(no_dropout, inputs, method="mc_dropout", roi_size=ROI)
    with pytest.raises(MSToolkitInputError, match="allowed: mc_dropout, ensemble, tta"):
        U.sample_predictions(no_dropout, inputs, method="bagging")
    with pytest.raises(MSToolkitInputError, match="at least 2 models"):
        U.sample_predictions([no_dropout], inputs, method="ensemble")
    with pytest.raises(MSToolkitInputError, match="'n' must be an integer"):
        U.sample_predictions(_net(), inputs, method="tta", n=1)
    with pytest.raises(MSToolkitInputError, match=r"\(channels, x, y, z\)"):
        U.sample_predictions(_net(), inputs[0], method="tta")
    with_nan = inputs.copy()
    with_nan[0, 0, 0, 0] = np.nan
    with pytest.raises(MSToolkitInputError, match="NaN or infinite"):
        U.sample_predictions(_net(), with_nan, method="tta")
    with pytest.raises(MSToolkitInputError, match="probabilities in"):
        U.uncertainty_maps(np.full((2, 2, 2, 2), 2.0))
    with pytest.raises(MSToolkitInputError, match="allowed: entropy"):
        U.lesion_uncertainty(np.zeros((2, 2, 2, 2)), measure="std")
