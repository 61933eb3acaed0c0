"""Tests of mstoolkit.evaluation.metrics, mstoolkit.evaluation.metric_tables and mstoolkit.evaluation.report: hand-computed cases and independent libraries."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from mstoolkit.data.io import MSToolkitInputError, save_mask
from mstoolkit.evaluation.metric_tables import evaluate_cohort, lesion_table, metrics_by_lesion_size
from mstoolkit.evaluation.metrics import dice, dice_from_counts, evaluate, hd95, label_lesions, ndsc, surface_distances
from mstoolkit.evaluation.report import (
    bland_altman_figure,
    simulate_rater,
    summarize_cohort,
    volume_agreement,
)

SHAPE = (7, 8, 9)
ANISO = (1.0, 0.8, 2.5)


def random_masks(seed: int, shape=(12, 11, 10), p: float = 0.15, smooth: bool = True):
    """Blobby random masks (a smoothed noise field thresholded); they may touch the border."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    masks = []
    for _ in range(2):
        field = rng.standard_normal(shape)
        if smooth:
            field = gaussian_filter(field, 1.0)
        masks.append(field > np.quantile(field, 1 - p))
    return masks


def bar(shape, *cells):
    mask = np.zeros(shape, bool)
    for cell in cells:
        mask[cell] = True
    return mask


# --------------------------------------------------------------------------- voxel metrics


def test_dice_hand_computed_and_policy():
    a = bar(SHAPE, np.s_[1:3, 1:3, 1:3])          # 8 voxels
    b = bar(SHAPE, np.s_[1:3, 1:3, 2:4])          # 8 voxels, 4 shared
    assert dice(a, b) == pytest.approx(0.5)
    assert dice(np.zeros(SHAPE), np.zeros(SHAPE)) == 1.0
    assert dice(a, np.zeros(SHAPE)) == 0.0
    assert dice_from_counts(4, 8, 8) == dice(a, b) == evaluate(a, b, spacing=(1, 1, 1))["dice"]
    assert dice_from_counts(0, 0, 0) == 1.0


@pytest.mark.parametrize("seed", range(4))
def test_dice_matches_monai(seed):
    import torch
    from monai.metrics import DiceMetric

    pred, truth = random_masks(seed)
    metric = DiceMetric(include_background=True)
    metric(torch.from_numpy(pred[None, None]).float(), torch.from_numpy(truth[None, None]).float())
    assert dice(pred, truth) == pytest.approx(float(metric.aggregate()), abs=1e-6)
    assert evaluate(pred, truth, spacing=ANISO)["dice"] == pytest.approx(float(metric.aggregate()), abs=1e-6)


def test_ndsc_formula_cases():
    truth = bar((10, 10, 10), np.s_[0, 0, 0:2])                    # |G| = 2, N = 1000
    pred = truth.copy()
    pred[9, 9, 9] = True                                            # TP 2, FP 1, FN 0
    k = (1 - 0.001) * 2 / (0.001 * (1000 - 2))
    assert ndsc(pred, truth) == pytest.approx(4 / (4 + k * 1))
    # |G| = 0 → k = 1: one false-positive voxel gives 0; both empty gives 1
    assert ndsc(pred & ~truth, np.zeros_like(truth)) == 0.0
    assert ndsc(np.zeros_like(truth), np.zeros_like(truth)) == 1.0
    # N is the brain mask's size when one is given
    brain = bar((10, 10, 10), np.s_[:5]) | pred
    k_brain = (1 - 0.001) * 2 / (0.001 * (int(brain.sum()) - 2))
    assert ndsc(pred, truth, brain_mask=brain) == pytest.approx(4 / (4 + k_brain))
    assert evaluate(pred, truth, spacing=ANISO, brain_mask=brain)["ndsc"] == pytest.approx(4 / (4 + k_brain))
    with pytest.raises(MSToolkitInputError, match="'r' must be between 0 and 1"):
        ndsc(pred, truth, r=2.0)


def test_evaluate_voxel_counts_and_volumes():
    truth = bar(SHAPE, np.s_[1:3, 1:3, 1:3])      # 8 voxels
    pred = bar(SHAPE, np.s_[1:3, 1:3, 2:5])       # 12 voxels, 4 shared
    result = evaluate(pred, truth, spacing=ANISO)
    voxel_ml = np.prod(ANISO) / 1000
    assert result["sensitivity"] == pytest.approx(4 / 8)
    assert result["precision"] == pytest.approx(4 / 12)
    assert result["volume_truth_ml"] == pytest.approx(8 * voxel_ml)
    assert result["volume_difference_ml"] == pytest.approx(4 * voxel_ml)
    assert result["relative_volume_difference"] == pytest.approx(0.5)
    assert result["empty"] == "none"


# --------------------------------------------------------------------------- HD95


def _monai_hd95(pred, truth, spacing):
    import torch
    from monai.metrics import compute_hausdorff_distance

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = compute_hausdorff_distance(torch.from_numpy(pred[None, None]).float(),
                                           torch.from_numpy(truth[None, None]).float(),
                                           include_background=True, percentile=95, spacing=list(spacing))
    return float(value)


def _monai_directed_p95(pred, truth, spacing):
    """MONAI's own edges and surface distances, with the 95th percentile taken in float64."""
    import torch
    from monai.metrics.utils import get_edge_surface_distance

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, distances, _ = get_edge_surface_distance(torch.from_numpy(pred), torch.from_numpy(truth),
                                                    spacing=tuple(spacing), symmetric=True)
    return max(np.percentile(d.numpy().astype(np.float64), 95) for d in distances)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), ANISO])
def test_hd95_matches_monai_and_medpy_on_random_masks(seed, spacing):
    from medpy.metric.binary import hd95 as medpy_hd95

    pred, truth = random_masks(seed, smooth=seed % 2 == 0)
    ours = hd95(pred, truth, spacing=spacing)
    # same surfaces, same spacing handling, same directed-max rule as MONAI: equal within 1e-6 mm
    assert ours == pytest.approx(_monai_directed_p95(pred, truth, spacing), abs=1e-6)
    # HausdorffDistanceMetric itself takes the percentile in float32 (torch.quantile): a few µm apart
    assert ours == pytest.approx(_monai_hd95(pred, truth, spacing), abs=1e-5)
    assert hd95(pred, truth, spacing=spacing, mode="pooled") == pytest.approx(
        medpy_hd95(pred, truth, voxelspacing=spacing), abs=1e-6)


def test_hd95_toys_hand_computed():
    a = bar((1, 5, 9), np.s_[0, 1:4, 1:4])
    b = np.roll(a, 4, axis=2)
    assert hd95(a, b, spacing=(1.0, 1.0, 2.0)) == pytest.approx(8.0)
    assert hd95(a, a, spacing=ANISO) == 0.0
    # a single far-away false-positive voxel: invisible to HD95 once it is < 5 % of the surface
    big = bar((30, 30, 30), np.s_[5:20, 5:20, 5:20])
    outlier = big.copy()
    outlier[28, 28, 28] = True
    assert hd95(outlier, big, spacing=(1, 1, 1)) == pytest.approx(_monai_hd95(outlier, big, (1, 1, 1)), abs=1e-6)
    assert hd95(outlier, big, spacing=(1, 1, 1)) < 1.0


def test_surface_distances_equal_dense_distance_transform():
    """The k-d tree gives exactly what a distance transform of the bounding box gives."""
    from scipy.ndimage import binary_erosion, distance_transform_edt

    pred, truth = random_masks(3)
    forward, backward = surface_distances(pred, truth, spacing=ANISO)
    pred_surface, truth_surface = pred ^ binary_erosion(pred), truth ^ binary_erosion(truth)
    expected_forward = distance_transform_edt(~truth_surface, sampling=ANISO)[pred_surface]
    expected_backward = distance_transform_edt(~pred_surface, sampling=ANISO)[truth_surface]
    np.testing.assert_allclose(np.sort(forward), np.sort(expected_forward), atol=1e-9)
    np.testing.assert_allclose(np.sort(backward), np.sort(expected_backward), atol=1e-9)


def test_hd95_empty_policy():
    a = bar(SHAPE, np.s_[1:3, 1:3, 1:3])
    empty = np.zeros(SHAPE, bool)
    assert hd95(empty, empty, spacing=ANISO) == 0.0
    assert hd95(a, empty, spacing=ANISO) == float("inf")
    assert hd95(empty, a, spacing=ANISO, worst=100.0) == 100.0
    assert evaluate(a, empty, spacing=ANISO, hd95_worst=50.0)["hd95_mm"] == 50.0
    with pytest.raises(MSToolkitInputError, match="'mode' must be one of max_directed, pooled"):
        hd95(a, a, spacing=ANISO, mode="mean")


@pytest.mark.parametrize("pred_empty,truth_empty,expected", [
    (True, True, "both"), (True, False, "pred"), (False, True, "truth"), (False, False, "none")])
def test_evaluate_never_returns_nan(pred_empty, truth_empty, expected):
    a = bar(SHAPE, np.s_[1:3, 1:3, 1:3])
    empty = np.zeros(SHAPE, bool)
    pred, truth = (empty if pred_empty else a), (empty if truth_empty else a)
    for matching in ("any_overlap", "iou", "anima"):
        result = evaluate(pred, truth, spacing=ANISO, matching=matching)
        numbers = {k: v for k, v in result.items() if not isinstance(v, str)}
        assert not any(np.isnan(v) for v in numbers.values()), result
        assert result["empty"] == expected
    if expected == "both":
        assert result["dice"] == result["ndsc"] == result["lesion_f1"] == 1.0 and result["hd95_mm"] == 0.0
    if expected == "truth":  # only false positives: nothing missed, everything claimed is wrong
        assert result["sensitivity"] == 1.0 and result["precision"] == 0.0 and result["lesion_f1"] == 0.0
        assert result["hd95_mm"] == float("inf") and result["relative_volume_difference"] == float("inf")


# --------------------------------------------------------------------------- lesions

LINE = (1, 1, 14)


def split_case():
    truth = bar(LINE, np.s_[0, 0, 1:11])                       # one lesion, 10 voxels
    pred = bar(LINE, np.s_[0, 0, 1:5], np.s_[0, 0, 7:11])      # two predictions of 4 voxels
    return pred, truth


def merge_case():
    truth = bar(LINE, np.s_[0, 0, 1:5], np.s_[0, 0, 6:10])     # two lesions of 4 voxels, 1-voxel gap
    pred = bar(LINE, np.s_[0, 0, 1:10])                        # one prediction over both and the gap
    return pred, truth


def counts(result):
    keys = ("n_lesions_truth", "n_lesions_pred", "lesion_tp", "lesion_tp_pred", "lesion_fp", "lesion_fn")
    return tuple(result[k] for k in keys)


@pytest.mark.parametrize("matching", ["any_overlap", "iou", "anima"])
def test_split_lesion_counts(matching):
    pred, truth = split_case()
    result = evaluate(pred, truth, spacing=(1, 1, 1), matching=matching)
    # any_overlap: touched; iou: each piece has IoU 4/10 ≥ 0.25; anima: 80 % covered, no piece outside
    assert counts(result) == (1, 2, 1, 2, 0, 0)
    assert result["lesion_sensitivity"] == result["lesion_precision"] == result["lesion_f1"] == 1.0
    # two 2-voxel pieces: IoU 0.2 < 0.25 → under iou both are false positives and the lesion is missed;
    # anima removes both pieces (≤ 3 mm³) before matching, so the lesion is missed with no FP
    small = bar(LINE, np.s_[0, 0, 1:3], np.s_[0, 0, 8:10])
    expected = {"any_overlap": (1, 2, 1, 2, 0, 0), "iou": (1, 2, 0, 0, 2, 1), "anima": (1, 0, 0, 0, 0, 1)}
    assert counts(evaluate(small, truth, spacing=(1, 1, 1), matching=matching)) == expected[matching]


@pytest.mark.parametrize("matching", ["any_overlap", "iou", "anima"])
def test_merged_lesions_counts(matching):
    pred, truth = merge_case()
    result = evaluate(pred, truth, spacing=(1, 1, 1), matching=matching)
    # iou: 4/9 each; anima: only 1 of 9 predicted voxels lies outside the truth
    assert counts(result) == (2, 1, 2, 1, 0, 0)
    assert result["lesion_f1"] == 1.0


def test_oversized_prediction_differs_between_presets():
    truth = bar((6, 6, 6), np.s_[2:4, 2:4, 2:4])                 # 8 voxels
    pred = bar((6, 6, 6), np.s_[1:5, 1:5, 1:4]) | bar((6, 6, 6), np.s_[1:5, 1:5, 4])  # 64 voxels around it
    pred = pred | bar((6, 6, 6), np.s_[1:5, 1:5, 0])          # 80 voxels: 90 % outside the truth
    expected = {
        "any_overlap": (1, 1, 1, 1, 0, 0),
        "iou": (1, 1, 0, 0, 1, 1),            # IoU 8/80 = 0.1
        # anima: the truth lesion's only cover lies 90 % > β outside → missed; the prediction
        # is 10 % covered (not more than α = 10 %) → a false positive
        "anima": (1, 1, 0, 0, 1, 1),
    }
    for matching, want in expected.items():
        assert counts(evaluate(pred, truth, spacing=(1, 1, 1), matching=matching)) == want, matching
    # with alpha lowered the prediction counts as detecting the truth (its partner is not outside)
    relaxed = evaluate(pred, truth, spacing=(1, 1, 1), matching="anima", alpha=0.05)
    assert (relaxed["lesion_tp"], relaxed["lesion_tp_pred"]) == (0, 1)


def test_anima_alpha_and_small_lesion_removal():
    truth = bar((1, 4, 10), np.s_[0, 0:2, 0:10])                # 20 voxels
    pred = bar((1, 4, 10), np.s_[0, 0, 0:1], np.s_[0, 3, 0:4])  # covers 1/20 = 5 % ≤ α; plus a 4-voxel FP
    result = evaluate(pred, truth, spacing=(1, 1, 1), matching="anima")
    assert (result["lesion_tp"], result["lesion_fn"]) == (0, 1)
    # anima removes lesions of 3 mm³ or less: the 1-voxel touch is dropped, the 4-voxel FP stays
    assert result["n_lesions_pred"] == 1 and result["lesion_fp"] == 1
    # with 1.5 mm³ voxels the 4-voxel lesion is 6 mm³ and stays; 2 voxels (3 mm³) would go
    tiny = bar((1, 4, 10), np.s_[0, 3, 0:2])
    assert evaluate(tiny, truth, spacing=(1, 1, 1.5), matching="anima")["n_lesions_pred"] == 0
    assert evaluate(tiny, truth, spacing=(1, 1, 1.5), matching="any_overlap")["n_lesions_pred"] == 1


def test_min_lesion_size_and_connectivity():
    diagonal = bar((3, 3, 3), (0, 0, 0), (1, 1, 1))             # touch only at a corner
    assert label_lesions(diagonal, spacing=(1, 1, 1), connectivity=26)[1] == 1
    assert label_lesions(diagonal, spacing=(1, 1, 1), connectivity=18)[1] == 2
    assert label_lesions(diagonal, spacing=(1, 1, 1), connectivity=6)[1] == 2
    edge = bar((3, 3, 3), (0, 0, 0), (1, 1, 0))
    assert label_lesions(edge, spacing=(1, 1, 1), connectivity=18)[1] == 1
    assert label_lesions(edge, spacing=(1, 1, 1), connectivity=6)[1] == 2
    two = bar((1, 3, 9), np.s_[0, 0, 0:2], np.s_[0, 2, 0:6])    # 2 and 6 voxels
    labels, n = label_lesions(two, spacing=(1, 1, 2.0), min_lesion_mm3=5.0)   # 4 mm³ and 12 mm³
    assert n == 1 and labels.max() == 1 and (labels > 0).sum() == 6
    with pytest.raises(MSToolkitInputError, match="'connectivity' must be 6, 18 or 26"):
        label_lesions(two, spacing=(1, 1, 1), connectivity=8)


@pytest.mark.parametrize("seed", range(3))
def test_lesion_counts_match_scipy_label(seed):
    from scipy.ndimage import generate_binary_structure, label

    pred, truth = random_masks(seed, shape=(20, 18, 16), p=0.08, smooth=False)
    full = generate_binary_structure(3, 3)
    truth_labels, n_truth = label(truth, full)
    pred_labels, n_pred = label(pred, full)
    detected = len(np.unique(truth_labels[pred])) - (0 in truth_labels[pred])
    false_pos = n_pred - (len(np.unique(pred_labels[truth])) - (0 in pred_labels[truth]))
    result = evaluate(pred, truth, spacing=(1, 1, 1))
    assert (result["n_lesions_truth"], result["n_lesions_pred"]) == (n_truth, n_pred)
    assert (result["lesion_tp"], result["lesion_fp"]) == (detected, false_pos)


def test_medpy_obj_tpr_is_lesion_precision():
    """The trap: medpy's obj_tpr(pred, truth) divides by the number of *predicted* objects."""
    from medpy.metric.binary import obj_tpr

    shape = (1, 12, 12)
    truth = bar(shape, np.s_[0, 1:3, 1:3], np.s_[0, 6:8, 1:3], np.s_[0, 1:3, 8:10])        # 3 lesions
    pred = bar(shape, np.s_[0, 1:3, 1:3], np.s_[0, 6:8, 1:3], np.s_[0, 10, 10], np.s_[0, 5, 8])  # 2 hits, 2 FPs
    result = evaluate(pred, truth, spacing=(1, 1, 1))
    assert result["lesion_precision"] == pytest.approx(2 / 4)
    assert result["lesion_sensitivity"] == pytest.approx(2 / 3)
    assert obj_tpr(pred, truth, connectivity=3) == pytest.approx(result["lesion_precision"])
    assert obj_tpr(truth, pred, connectivity=3) == pytest.approx(result["lesion_sensitivity"])


def test_lesion_table_rows_and_partners():
    pred, truth = split_case()
    table = lesion_table(pred, truth, spacing=(1, 1, 2.0))
    assert list(table["source"]) == ["truth", "pred", "pred"]
    row = table.iloc[0]
    assert row["volume_mm3"] == 20.0 and row["n_partners"] == 2 and row["matched"]
    assert row["overlap_fraction"] == pytest.approx(0.8)
    assert row["lesion_dice"] == pytest.approx(2 * 8 / (10 + 8))
    assert row["centroid_z"] == pytest.approx(5.5)                 # voxels 1..10, in full-volume indices
    assert table.iloc[1]["best_iou"] == pytest.approx(0.4)
    merged = lesion_table(*merge_case(), spacing=(1, 1, 1))
    assert merged[merged["source"] == "pred"]["n_partners"].tolist() == [2]


def test_metrics_by_lesion_size():
    shape = (3, 12, 12)
    truth = bar(shape, np.s_[0, 0, 0:5], np.s_[:, 4:9, 4:9])      # 5 mm³ (missed) and 75 mm³ (found)
    pred = bar(shape, np.s_[:, 4:9, 4:9], np.s_[0, 11, 11])       # the big one and a 1 mm³ FP
    bins = metrics_by_lesion_size(lesion_table(pred, truth, spacing=(1, 1, 1)))
    small, medium, large = bins.to_dict("records")
    assert (small["n_truth"], small["detected"], small["n_pred"], small["false_positives"]) == (1, 0, 1, 1)
    assert medium["lesion_sensitivity"] == 1.0 and medium["lesion_precision"] == 1.0
    assert large["n_truth"] == 0 and np.isnan(large["lesion_sensitivity"])
    with pytest.raises(MSToolkitInputError, match="'bins' must be increasing"):
        metrics_by_lesion_size(lesion_table(pred, truth, spacing=(1, 1, 1)), bins=(0, 100, 10))


# --------------------------------------------------------------------------- errors


def test_input_errors_are_clear():
    a = bar(SHAPE, np.s_[1:3, 1:3, 1:3])
    with pytest.raises(MSToolkitInputError, match="'pred' has shape .* but 'truth' has shape"):
        evaluate(a, a[:-1], spacing=ANISO)
    with pytest.raises(MSToolkitInputError, match="'pred' is not binary"):
        evaluate(a * 0.5, a, spacing=ANISO)
    with pytest.raises(MSToolkitInputError, match="'truth' is not binary: it holds the values 0, 2"):
        evaluate(a, a * 2, spacing=ANISO)
    with pytest.raises(MSToolkitInputError, match=r"'spacing' must be 3 positive numbers \(mm\), got \(1.0, 0.0, 1.0\)"):
        evaluate(a, a, spacing=(1.0, 0.0, 1.0))
    with pytest.raises(MSToolkitInputError, match="'spacing' must be 3 positive numbers"):
        evaluate(a, a, spacing=None)
    with pytest.raises(MSToolkitInputError, match="'matching' must be one of any_overlap, iou, anima, got 'dice'"):
        evaluate(a, a, spacing=ANISO, matching="dice")
    with pytest.raises(MSToolkitInputError, match="'hd_mode' must be one of max_directed, pooled"):
        evaluate(a, a, spacing=ANISO, hd_mode="average")
    with pytest.raises(MSToolkitInputError, match="'iou_threshold' must be between 0 and 1"):
        evaluate(a, a, spacing=ANISO, matching="iou", iou_threshold=25)
    with pytest.raises(MSToolkitInputError, match="'min_lesion_mm3' must be 0 or more"):
        evaluate(a, a, spacing=ANISO, min_lesion_mm3=-1)
    with pytest.raises(MSToolkitInputError, match="must be a 3D mask"):
        evaluate(a[0], a[0], spacing=ANISO)
    with pytest.raises(MSToolkitInputError, match="'brain_mask' has shape"):
        evaluate(a, a, spacing=ANISO, brain_mask=np.ones((2, 2, 2)))


# --------------------------------------------------------------------------- cohort and report


def test_cohort_summary_shows_empty_policy():
    pairs = {}
    for i in range(4):
        truth = bar(SHAPE, np.s_[1:3 + i % 2, 1:4, 1:3 + i])
        pairs[f"case{i}"] = (simulate_rater(truth, spacing=ANISO, seed=i, n_false_positives=0), truth)
    pairs["both_empty"] = (np.zeros(SHAPE, bool), np.zeros(SHAPE, bool))
    pairs["missed"] = (np.zeros(SHAPE, bool), bar(SHAPE, np.s_[2:4, 2:4, 2:4]))
    table = evaluate_cohort(pairs, spacing=ANISO, progress=False)
    assert list(table.index) == list(pairs) and table.loc["both_empty", "dice"] == 1.0
    summary = summarize_cohort(table)
    assert summary.loc["hd95_mm", "n_left_out"] == 1
    assert "1 case(s) with both masks empty count as perfect" in summary.loc["dice", "note"]
    assert summary.loc["dice", "mean"] == pytest.approx(table["dice"].mean())
    strict = summarize_cohort(table, exclude_empty=True)
    assert strict.loc["dice", "n"] == 4 and "excluded" in strict.loc["dice", "note"]
    with pytest.raises(MSToolkitInputError, match="pass spacing="):
        evaluate_cohort(pairs)


def test_cohort_from_files_reads_spacing(tmp_path):
    affine = np.diag([*ANISO, 1.0])
    truth = bar(SHAPE, np.s_[1:4, 1:4, 1:4])
    pred = bar(SHAPE, np.s_[1:4, 1:4, 2:5])
    save_mask(tmp_path / "t.nii.gz", truth, affine)
    save_mask(tmp_path / "p.nii.gz", pred, affine)
    table = evaluate_cohort({"a": (tmp_path / "p.nii.gz", tmp_path / "t.nii.gz")}, progress=False)
    assert table.loc["a", "volume_truth_ml"] == pytest.approx(27 * np.prod(ANISO) / 1000)
    save_mask(tmp_path / "shifted.nii.gz", pred, np.diag([1.0, 1.0, 1.0, 1.0]))
    with pytest.raises(MSToolkitInputError, match="different affines"):
        evaluate_cohort({"a": (tmp_path / "shifted.nii.gz", tmp_path / "t.nii.gz")}, progress=False)


def test_volume_agreement_matches_scipy():
    import pandas as pd
    from scipy.stats import pearsonr

    table = pd.DataFrame({"volume_pred_ml": [1.0, 2.5, 4.0, 8.0], "volume_truth_ml": [1.2, 2.0, 4.5, 7.0]})
    stats = volume_agreement(table)
    assert stats["pearson_r"] == pytest.approx(pearsonr(table.volume_pred_ml, table.volume_truth_ml)[0])
    difference = table.volume_pred_ml - table.volume_truth_ml
    assert stats["bias_ml"] == pytest.approx(difference.mean())
    assert stats["loa_upper_ml"] == pytest.approx(difference.mean() + 1.96 * difference.std(ddof=1))
    fig = bland_altman_figure(table)
    assert fig.axes[1].get_title() == "Bland–Altman" and "Pearson r" in fig.axes[0].get_title()
    with pytest.warns(UserWarning, match="at least 3 cases"):
        assert np.isnan(volume_agreement(table.iloc[:2])["pearson_r"])


def test_simulate_rater_is_deterministic_and_exact_without_noise():
    truth = bar((20, 20, 20), np.s_[5:12, 6:10, 4:9], np.s_[14:16, 14:16, 14:16])
    same = simulate_rater(truth, spacing=(1, 1, 1), boundary_sd_mm=0.0, miss_probability=0.0, n_false_positives=0)
    assert np.array_equal(same.astype(bool), truth)
    a = simulate_rater(truth, spacing=ANISO, seed=3)
    assert np.array_equal(a, simulate_rater(truth, spacing=ANISO, seed=3))
    assert set(np.unique(a)) <= {0, 1} and 0.3 < dice(a, truth) < 1.0
    bigger = simulate_rater(truth, spacing=(1, 1, 1), boundary_sd_mm=0.0, bias_mm=1.0, miss_probability=0.0,
                            n_false_positives=0)
    assert bigger.sum() > truth.sum() and (bigger.astype(bool) >= truth).all()


def test_real_sample_lesions_against_scipy():
    from mstoolkit.data.datasets import real_sample_dir
    from mstoolkit.data.io import load_mask

    root = real_sample_dir()
    from scipy.ndimage import generate_binary_structure, label

    truth, affine = load_mask(next((root / "cross_sectional" / "MNI" / "patient26").glob("GOLD_STANDARD_*.nii.gz")))
    rater = simulate_rater(truth, spacing=(1, 1, 1), seed=0).astype(bool)
    result = evaluate(rater, truth, spacing=(1, 1, 1))
    assert result["n_lesions_truth"] == label(truth, generate_binary_structure(3, 3))[1]
    assert result["hd95_mm"] == pytest.approx(_monai_hd95(rater, truth.astype(bool), (1, 1, 1)), abs=1e-5)


# --------------------------------------------------------------------------- command line


def _write_pair(folder, name="sub-001.nii.gz", affine=None):
    affine = np.diag([*ANISO, 1.0]) if affine is None else affine
    save_mask(folder / "truth" / name, bar(SHAPE, np.s_[1:4, 1:4, 1:4]), affine)
    save_mask(folder / "pred" / name, bar(SHAPE, np.s_[1:4, 1:4, 2:5]), affine)


def test_cli_one_pair_json(tmp_path, capsys):
    from mstoolkit.cli import main

    _write_pair(tmp_path)
    code = main(["evaluate", "--pred", str(tmp_path / "pred/sub-001.nii.gz"),
                 "--truth", str(tmp_path / "truth/sub-001.nii.gz"), "--json", "--matching", "iou"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["dice"] == pytest.approx(2 * 18 / 54) and result["matching"] == "iou"
    for key in ("ndsc", "lesion_f1", "lesion_tp", "hd95_mm", "volume_difference_ml"):
        assert key in result


def test_cli_cohort_csv_and_errors(tmp_path, capsys):
    import pandas as pd

    from mstoolkit.cli import main

    _write_pair(tmp_path, "sub-001.nii.gz")
    _write_pair(tmp_path, "sub-002.nii.gz")
    out = tmp_path / "metrics.csv"
    assert main(["evaluate", "--pred-dir", str(tmp_path / "pred"), "--truth-dir", str(tmp_path / "truth"),
                 "--out", str(out)]) == 0
    table = pd.read_csv(out)
    assert list(table["case_id"]) == ["sub-001.nii.gz", "sub-002.nii.gz"]
    capsys.readouterr()
    # a prediction on another grid
    save_mask(tmp_path / "pred" / "sub-002.nii.gz", np.zeros(SHAPE), np.diag([1.0, 1.0, 1.0, 1.0]))
    assert main(["evaluate", "--pred-dir", str(tmp_path / "pred"), "--truth-dir", str(tmp_path / "truth")]) == 2
    assert "different affines" in capsys.readouterr().err
    # a probability map instead of a mask
    from mstoolkit.data.io import save_image

    save_image(tmp_path / "prob.nii.gz", np.full(SHAPE, 0.3), np.diag([*ANISO, 1.0]))
    assert main(["evaluate", "--pred", str(tmp_path / "prob.nii.gz"), "--truth",
                 str(tmp_path / "truth/sub-001.nii.gz")]) == 2
    assert "is not binary" in capsys.readouterr().err
    # a missing prediction, and a wrong combination of options
    (tmp_path / "pred" / "sub-001.nii.gz").unlink()
    from mstoolkit.cli import build_parser
    from mstoolkit.evaluation.report import cli_evaluate

    args = build_parser().parse_args(["evaluate", "--pred-dir", str(tmp_path / "pred"), "--truth-dir", str(tmp_path / "truth")])
    with pytest.raises(MSToolkitInputError, match="have no prediction of the same name"):
        cli_evaluate(args)
    args = build_parser().parse_args(["evaluate", "--pred", "a.nii.gz"])
    with pytest.raises(MSToolkitInputError, match="Give either --pred and --truth"):
        cli_evaluate(args)


def test_lesion_table_numbering_matches_label_lesions():
    """Lesion k of the table is lesion k of label_lesions on the full volume (notebook 05 relies on it)."""
    from scipy.ndimage import center_of_mass

    pred, truth = random_masks(5, shape=(24, 20, 18), p=0.06, smooth=False)
    table = lesion_table(pred, truth, spacing=ANISO)
    for source, mask in (("truth", truth), ("pred", pred)):
        labels, n = label_lesions(mask, spacing=ANISO)
        rows = table[table["source"] == source]
        assert len(rows) == n
        expected = np.array(center_of_mass(mask, labels, range(1, n + 1)))
        np.testing.assert_allclose(rows[["centroid_x", "centroid_y", "centroid_z"]].to_numpy(), expected, atol=1e-6)
