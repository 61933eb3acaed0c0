"""Tests of mstoolkit.uncertainty.calibration: ECE inside the brain, temperature scaling, reliability diagram."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest

from mstoolkit.data.io import MSToolkitInputError
from mstoolkit.uncertainty.calibration import (
    apply_temperature,
    calibration,
    fit_temperature,
    plot_reliability,
)


def test_ece_of_a_calibrated_predictor_is_near_zero():
    rng = np.random.default_rng(0)
    prob = rng.random((100, 100, 50))
    truth = rng.random(prob.shape) < prob
    brain = np.ones(prob.shape, bool)
    assert calibration(prob, truth, brain_mask=brain)["ece"] < 0.005
    overconfident = np.where(prob > 0.5, 1.0, 0.0)
    assert calibration(overconfident, truth, brain_mask=brain)["ece"] > 0.2
    brain[:10] = False  # voxels outside the brain do not count
    garbage = prob.copy()
    garbage[:10] = 1.0
    assert calibration(garbage, truth, brain_mask=brain)["ece"] == pytest.approx(
        calibration(prob, truth, brain_mask=brain)["ece"])


def test_ece_hand_computed():
    prob = np.array([0.1, 0.1, 0.9, 0.9]).reshape(1, 2, 2)
    truth = np.array([0, 1, 1, 1]).reshape(1, 2, 2)
    found = calibration(prob, truth, brain_mask=np.ones((1, 2, 2)), n_bins=2)
    assert found["ece"] == pytest.approx(0.5 * 0.4 + 0.5 * 0.1)
    assert list(found["count"]) == [2, 2] and found["frequency"] == pytest.approx([0.5, 1.0])


def test_temperature_scaling_recovers_the_temperature():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 2, (60, 60, 60))
    truth = rng.random(z.shape) < 1 / (1 + np.exp(-z))
    sharp = 1 / (1 + np.exp(-2 * z))  # over-confident by a factor 2
    brain = np.ones(z.shape, bool)
    temperature = fit_temperature(sharp, truth, brain_masks=brain)
    assert temperature == pytest.approx(2.0, rel=0.05)
    before = calibration(sharp, truth, brain_mask=brain)["ece"]
    after = calibration(apply_temperature(sharp, temperature), truth, brain_mask=brain)["ece"]
    assert after < before / 3
    assert fit_temperature([sharp, sharp], [truth, truth], brain_masks=[brain, brain]) == pytest.approx(temperature)


def test_reliability_plot_runs():
    rng = np.random.default_rng(0)
    prob = rng.random((10, 10, 10))
    found = calibration(prob, prob > 0.5, brain_mask=np.ones(prob.shape))
    assert plot_reliability({"model": found}).get_title() == "Reliability inside the brain"


def test_errors():
    with pytest.raises(MSToolkitInputError, match="'n_bins' must be"):
        calibration(np.zeros((2, 2, 2)), np.zeros((2, 2, 2)), brain_mask=np.ones((2, 2, 2)), n_bins=1)
    with pytest.raises(MSToolkitInputError, match="same grid"):
        calibration(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)), brain_mask=np.ones((2, 2, 2)))
    with pytest.raises(MSToolkitInputError, match="both lesion and non-lesion"):
        fit_temperature(np.full((2, 2, 2), 0.5), np.zeros((2, 2, 2)), brain_masks=np.ones((2, 2, 2)))
    with pytest.raises(MSToolkitInputError, match="'temperature' must be positive"):
        apply_temperature(np.zeros(2), 0.0)
