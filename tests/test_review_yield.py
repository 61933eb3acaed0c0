"""Tests of mstoolkit.uncertainty.sampling.review_yield (notebook 06: which lesions to send for review)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mstoolkit.data.io import MSToolkitInputError
from mstoolkit.uncertainty.sampling import review_yield


def test_review_yield_counts_and_chance():
    table = pd.DataFrame({"status": ["TP", "FP", "TP", "FP", "TP", "TP"], "uncertainty": [0.1, 0.9, 0.2, 0.3, 0.8, 0.0]})
    found = review_yield(table, table["uncertainty"] >= 0.8)
    assert found == {"n_lesions": 6, "n_reviewed": 2, "errors": 2, "caught": 1, "random_expected": pytest.approx(2 / 3)}
    assert review_yield(table, np.zeros(6, bool))["caught"] == 0
    everything = review_yield(table, np.ones(6, bool))
    assert everything["caught"] == everything["errors"] == everything["random_expected"] == 2


def test_review_yield_matches_simulated_random_review():
    rng = np.random.default_rng(0)
    table = pd.DataFrame({"status": rng.choice(["TP", "FP"], size=40, p=[0.7, 0.3])})
    n_reviewed = 12
    simulated = [review_yield(table, rng.permutation(40) < n_reviewed)["caught"] for _ in range(4000)]
    expected = review_yield(table, np.arange(40) < n_reviewed)["random_expected"]
    assert abs(np.mean(simulated) - expected) < 0.1


def test_review_yield_errors():
    table = pd.DataFrame({"status": ["TP", "FP"]})
    with pytest.raises(MSToolkitInputError, match="one True/False per lesion"):
        review_yield(table, [True])
    with pytest.raises(MSToolkitInputError, match="status"):
        review_yield(pd.DataFrame({"uncertainty": [0.1]}), [True])
    assert review_yield(table.iloc[:0], np.zeros(0, bool))["random_expected"] == 0.0


def test_sampling_a_volume_that_needs_several_windows():
    # Over 1.2 million voxels: _windows splits the volume, with one overlap per axis (notebook 06 at workshop).
    import torch
    from torch import nn

    from mstoolkit.uncertainty.sampling import sample_predictions

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv3d(1, 2, 3, padding=1), nn.Dropout3d(0.5), nn.Conv3d(2, 1, 1))
    inputs = np.random.default_rng(0).normal(size=(1, 224, 112, 64)).astype(np.float32)
    found = sample_predictions(net, inputs, method="mc_dropout", n=2, seed=0)
    assert found.shape == (2, 224, 112, 64) and np.isfinite(found).all()
    assert not np.array_equal(found[0], found[1])
