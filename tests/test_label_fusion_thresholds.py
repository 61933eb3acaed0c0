"""Label fusion (majority vote, STAPLE, soft labels) and the threshold sweep (notebook 04)."""

import numpy as np
import pytest

from mstoolkit.evaluation.label_fusion import majority_vote, soft_label, staple
from mstoolkit.evaluation.thresholds import best_threshold, threshold_sweep


@pytest.fixture
def raters():
    truth = np.zeros((6, 30, 30), bool)
    truth[:, 8:20, 8:20] = True
    tight = truth.copy()
    tight[:, 8:10] = False  # misses a border band
    generous = truth.copy()
    generous[:, 20:23, 8:20] = True  # draws a band too many
    poor = np.zeros_like(truth)
    poor[:, 8:12, 8:20] = True  # finds a third of the lesion
    poor[:, 20:22, 8:20] = True  # and agrees with the generous rater outside it: 2 votes of 4, a tie
    return truth, [truth, tight, generous, poor]


def test_majority_vote_needs_more_than_half(raters):
    _, masks = raters
    votes = np.sum(masks, axis=0)
    fused = majority_vote(masks)
    assert fused.dtype == np.uint8
    assert np.array_equal(fused > 0, 2 * votes > len(masks))  # 2 of 4 is a tie, not a majority
    assert (votes == 2).any() and not fused[votes == 2].any()


def test_soft_label_is_the_fraction_of_raters(raters):
    _, masks = raters
    soft = soft_label(masks)
    assert soft.dtype == np.float32
    assert np.allclose(soft, np.mean(masks, axis=0))
    assert soft.min() >= 0 and soft.max() <= 1


def test_staple_ranks_raters_and_recovers_the_truth(raters):
    truth, masks = raters
    fused, probability, sensitivity, specificity = staple(masks)
    assert fused.shape == truth.shape and probability.dtype == np.float32
    # the rater that finds a third of the lesion gets the lowest estimated sensitivity
    assert int(np.argmin(sensitivity)) == 3
    # the generous rater draws outside the others: lowest specificity
    assert int(np.argmin(specificity)) == 2
    assert (fused > 0).sum() > 0.8 * truth.sum()


def test_fusion_refuses_bad_input():
    with pytest.raises(ValueError, match="at least 2 raters"):
        majority_vote([np.zeros((3, 3, 3))])
    with pytest.raises(ValueError, match="one shape"):
        staple([np.zeros((3, 3, 3)), np.zeros((3, 3, 4))])


def test_threshold_sweep_finds_an_underconfident_model_s_cut_off():
    truth = np.zeros((1, 40, 40), bool)
    truth[0, 5:12, 5:12] = True
    truth[0, 25:28, 25:28] = True
    # an under-confident model: lesions at 0.35, background at 0.05, one faint speck at 0.2
    probability = np.where(truth, 0.35, 0.05)
    probability[0, 35, 35] = 0.2
    sweep = threshold_sweep([probability], [truth], spacing=(1, 1, 1))
    assert list(sweep.columns) == ["threshold", "dice", "lesion_f1", "lesion_sensitivity", "lesion_precision"]
    best = best_threshold(sweep, "dice")
    assert 0.2 < best <= 0.35  # above the speck, at or below the lesions: not 0.5
    assert sweep.loc[np.isclose(sweep["threshold"], 0.5), "dice"].item() == 0.0
    assert best_threshold(sweep, "lesion_f1") == pytest.approx(best)


def test_best_threshold_breaks_ties_towards_half_and_checks_the_metric():
    import pandas as pd

    sweep = pd.DataFrame({"threshold": [0.2, 0.45, 0.7], "dice": [0.8, 0.8, 0.8]})
    assert best_threshold(sweep) == 0.45
    with pytest.raises(ValueError, match="'metric' must be one of dice"):
        best_threshold(sweep, "f1")
    with pytest.raises(ValueError, match="thresholds must lie in"):
        threshold_sweep([np.zeros((2, 2, 2))], [np.zeros((2, 2, 2), bool)], spacing=(1, 1, 1), thresholds=[1.0])
