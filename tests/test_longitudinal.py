"""Longitudinal change detection (mstoolkit.longitudinal.change), its metrics and `mstoolkit longitudinal`.

The synthetic pair: a smooth, noisy ellipsoidal "brain" (zero outside, i.e. skull stripped)
with four lesions: one stable, one that grows from a 2.5 mm to a 4 mm radius, one that
appears, one that disappears. Small (48 x 48 x 28 voxels) so the whole file runs in seconds.
"""

from __future__ import annotations

import gzip
import json

import nibabel as nib
import numpy as np
import pytest

from mstoolkit.cli import main
from mstoolkit.data.io import MSToolkitInputError
from mstoolkit.evaluation.change_metrics import change_detection, count_agreement, evaluate_change, is_active
from mstoolkit.longitudinal.change import ENLARGING, NEW, SHRINKING, classify_changes, detect_changes, gate_changes

SHAPE = (48, 48, 28)
CENTRES = {"stable": (16, 24, 14), "enlarging": (32, 24, 14), "new": (24, 14, 14), "resolved": (24, 34, 14)}


def _ball(centre, radius) -> np.ndarray:
    grid = np.indices(SHAPE).transpose(1, 2, 3, 0)
    return np.linalg.norm(grid - np.asarray(centre), axis=-1) <= radius


def _scan(rng, anatomy: np.ndarray, lesions: dict[str, float]) -> np.ndarray:
    """A FLAIR-like volume: the anatomy, lesions at 170, fresh scanner noise, zero outside the brain."""
    grid = np.indices(SHAPE).transpose(1, 2, 3, 0) - (np.asarray(SHAPE) - 1) / 2
    brain = np.sum((grid / np.array([21, 21, 12])) ** 2, axis=-1) <= 1
    image = anatomy.copy()
    for name, radius in lesions.items():
        image[_ball(CENTRES[name], radius)] = 170
    image = image + rng.normal(0, 2, SHAPE)
    return np.where(brain, image, 0).astype(np.float32)


@pytest.fixture(scope="module")
def pair():
    from scipy import ndimage

    rng = np.random.default_rng(1)
    anatomy = 100 + ndimage.gaussian_filter(rng.normal(0, 20, SHAPE), 1.0)  # smooth tissue texture, the same at both visits
    baseline = _scan(rng, anatomy, {"stable": 3, "enlarging": 2.5, "resolved": 3})
    followup = _scan(rng, anatomy, {"stable": 3, "enlarging": 4, "new": 3})
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = (-24, -24, -14)
    return baseline, followup, affine


def _class_at(labels: np.ndarray, name: str) -> set[int]:
    found = labels[_ball(CENTRES[name], 4.5)]
    return set(np.unique(found[found > 0]).tolist())


def test_finds_the_new_and_enlarging_lesion_and_ignores_the_stable_one(pair):
    baseline, followup, affine = pair
    result = detect_changes(baseline, affine, followup, affine, registered=True, skull_stripped=True)
    assert _class_at(result.labels, "new") == {NEW}
    assert _class_at(result.labels, "enlarging") == {ENLARGING}
    assert _class_at(result.labels, "resolved") == {SHRINKING}
    assert _class_at(result.labels, "stable") == set()
    assert sorted(row["class"] for row in result.lesions) == ["enlarging", "new", "shrinking_or_resolved"]
    grown = next(row for row in result.lesions if row["class"] == "enlarging")
    assert grown["volume_followup_mm3"] / grown["volume_baseline_mm3"] >= 1.5
    assert np.array_equal(result.transform, np.eye(4))


def test_a_misplaced_followup_is_registered_first(pair):
    baseline, followup, affine = pair
    moved = affine.copy()
    moved[:3, 3] += (2.0, -1.5, 1.0)  # the same scan, the head 2.7 mm elsewhere in the scanner's world
    result = detect_changes(baseline, affine, followup, moved, skull_stripped=True)
    assert np.allclose(result.transform[:3, 3], (2.0, -1.5, 1.0), atol=0.5)
    assert 0 < result.registration_quality <= 1
    assert _class_at(result.labels, "new") == {NEW}
    assert _class_at(result.labels, "enlarging") == {ENLARGING}
    assert _class_at(result.labels, "stable") == set()


def test_a_lesion_that_grows_less_than_the_ratio_is_stable():
    lesion_before = np.zeros((20, 20, 20), bool)
    lesion_before[5:10, 5:10, 5:10] = True  # 125 mm³
    lesion_after = lesion_before.copy()
    lesion_after[10:12, 5:10, 5:10] = True  # +50 mm³: ratio 1.4
    change = np.where(lesion_after & ~lesion_before, 10.0, 0.0).astype(np.float32)
    brain = np.ones((20, 20, 20), np.uint8)
    labels, lesions = classify_changes(change, lesion_before, lesion_after, brain, np.eye(4), enlarging_ratio=1.5)
    assert lesions == [] and not labels.any()
    labels, lesions = classify_changes(change, lesion_before, lesion_after, brain, np.eye(4), enlarging_ratio=1.3)
    assert [row["class"] for row in lesions] == ["enlarging"] and lesions[0]["changed_mm3"] == 50.0
    assert set(np.unique(labels)) == {0, ENLARGING}
    # Below the smallest size, nothing counts.
    labels, lesions = classify_changes(change, lesion_before, lesion_after, brain, np.eye(4), enlarging_ratio=1.3,
                                       min_size_mm3=51)
    assert lesions == []


def test_the_component_gate_keeps_a_changed_component_whole_when_part_of_it_is_bright():
    changed = np.zeros((20, 20, 20), bool)
    changed[4:10, 4:10, 4:10] = True  # a new lesion, 216 mm³ of changed tissue ...
    bright = np.zeros_like(changed)
    bright[6:8, 6:8, 6:8] = True  # ... of which only the core (8 mm³) passes the brightness gate
    changed[14:17, 14:17, 14:17] = True  # a change with no bright voxel at all (e.g. CSF-dark to normal)
    assert gate_changes(changed, bright, "voxel").sum() == 8
    kept = gate_changes(changed, bright, "component")
    assert kept.sum() == 216 and not kept[14:17, 14:17, 14:17].any()
    change = np.where(changed, 10.0, 0.0).astype(np.float32)
    brain, none = np.ones_like(changed, np.uint8), np.zeros_like(changed)
    for gate, volume in (("voxel", 8.0), ("component", 216.0)):
        labels, lesions = classify_changes(change, none, bright, brain, np.eye(4), gate=gate)
        assert [(row["class"], row["changed_mm3"]) for row in lesions] == [("new", volume)]
    with pytest.raises(MSToolkitInputError, match="unknown gate 'lesion'; allowed: voxel, component"):
        gate_changes(changed, bright, "lesion")


def test_both_gates_find_the_new_and_enlarging_lesion_and_ignore_the_stable_one(pair):
    baseline, followup, affine = pair
    result = detect_changes(baseline, affine, followup, affine, registered=True, skull_stripped=True, gate="component")
    assert _class_at(result.labels, "new") == {NEW}
    assert _class_at(result.labels, "enlarging") == {ENLARGING}
    assert _class_at(result.labels, "resolved") == {SHRINKING}
    assert _class_at(result.labels, "stable") == set()


# --------------------------------------------------------------------------- metrics


def test_change_metrics_by_hand():
    truth = np.zeros((10, 10, 10), np.uint8)
    truth[1:3, 1:3, 1:3] = 1   # true change A (8 voxels): overlapped by P1
    truth[6, 6, 6] = 1         # true change B (1 voxel): missed
    truth[8, 1, 8] = 1         # true change C (1 voxel): overlapped by P1's neighbour P2
    pred = np.zeros_like(truth)
    pred[2:4, 2:4, 2:4] = 1    # P1 (8 voxels), 1 voxel in common with A
    pred[8, 1, 8] = 1          # P2 on C
    pred[5, 8, 1] = 1          # P3: a false change
    scores = evaluate_change(pred, truth, spacing=(1, 1, 1))
    # sensitivity 2/3 (A, C found), precision 2/3 (P1, P2 hit), F1 = 2/3.
    assert scores["sensitivity"] == pytest.approx(2 / 3) and scores["precision"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(2 / 3)
    # Dice: overlap 1 (A∩P1) + 1 (C∩P2) = 2; sizes 10 and 10 → 2·2/20.
    assert scores["dice"] == pytest.approx(0.2)
    # A size limit of 2 mm³ removes B, C, P2 and P3: one true change, one prediction, found.
    small = change_detection(pred, truth, spacing=(1, 1, 1), min_lesion_mm3=2)
    assert (small["n_true"], small["n_pred"], small["f1"]) == (1, 1, 1.0)
    # Both empty: nothing missed, nothing claimed.
    empty = np.zeros_like(truth)
    assert change_detection(empty, empty, spacing=(1, 1, 1))["f1"] == 1.0
    assert change_detection(pred, empty, spacing=(1, 1, 1))["f1"] == 0.0


def test_change_metrics_agree_with_cc3d_and_medpy(rng):
    import cc3d
    from medpy.metric.binary import dc

    truth = (rng.random((20, 20, 20)) > 0.97).astype(np.uint8)
    pred = (rng.random((20, 20, 20)) > 0.97).astype(np.uint8)
    scores = evaluate_change(pred, truth, spacing=(1, 1, 1))
    assert scores["n_true"] == int(cc3d.connected_components(truth, connectivity=26).max())
    assert scores["n_pred"] == int(cc3d.connected_components(pred, connectivity=26).max())
    assert scores["dice"] == pytest.approx(dc(pred, truth))


def test_counts_and_activity():
    assert count_agreement({"new": 2, "enlarging": 0}, {"new": 1, "enlarging": 2}) == {"new": 1, "enlarging": -2}
    assert is_active({"new": 1}) and is_active({"new": 0, "enlarging": 1}) and not is_active({"new": 0, "enlarging": 0, "shrinking_or_resolved": 3})
    scores = evaluate_change(np.zeros((3, 3, 3)), np.zeros((3, 3, 3)), spacing=(1, 1, 1),
                             pred_counts={"new": 0, "enlarging": 0}, true_counts={"new": 1, "enlarging": 0})
    assert scores["active_pred"] is False and scores["active_true"] is True and scores["activity_agrees"] is False


# --------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def pair_files(pair, tmp_path_factory):
    baseline, followup, affine = pair
    folder = tmp_path_factory.mktemp("pair")
    paths = {}
    for name, image in (("baseline", baseline), ("followup", followup)):
        paths[name] = folder / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(image, affine), paths[name])
    return paths, affine


def test_cli_writes_the_four_outputs_on_the_followup_grid(pair_files, tmp_path, capsys):
    paths, affine = pair_files
    out = tmp_path / "out"
    code = main(["longitudinal", "--baseline", str(paths["baseline"]), "--followup", str(paths["followup"]),
                 "--out", str(out), "--registered", "--skull-stripped", "--device", "cpu"])
    assert code == 0
    assert "1 new, 1 enlarging, 1 shrinking" in capsys.readouterr().out
    for name in ("change_mask.nii.gz", "change_labels.nii.gz", "baseline_registered.nii.gz"):
        img = nib.load(out / name)
        assert img.shape == SHAPE and np.allclose(img.affine, affine)
    labels = np.asarray(nib.load(out / "change_labels.nii.gz").dataobj)
    mask = np.asarray(nib.load(out / "change_mask.nii.gz").dataobj)
    assert set(np.unique(labels)) == {0, 1, 2, 3} and np.array_equal(mask > 0, labels > 0)
    report = json.loads((out / "change_report.json").read_text())
    assert report["counts"] == {"new": 1, "enlarging": 1, "shrinking_or_resolved": 1} and report["active"] is True
    row = report["lesions"][0]
    assert {"id", "class", "volume_baseline_mm3", "volume_followup_mm3", "centroid_mm"} <= set(row)
    assert report["registration"]["registered_beforehand"] is True
    assert {"baseline", "followup"} <= set(report["inputs"]) and "mstoolkit_version" in report
    assert report["model"] is None  # the default: FLAIR hyperintensity alone (DEFAULT_MODEL)


def test_cli_settings_reach_the_method_and_the_report(pair_files, tmp_path):
    """--gate, --change-z and --hyperintensity-z change what is found and are recorded."""
    paths, _ = pair_files
    reports = {}
    for name, extra in (("default", []), ("strict", ["--change-z", "1000"]),
                        ("component", ["--gate", "component", "--change-z", "4", "--hyperintensity-z", "3"])):
        out = tmp_path / name
        assert main(["longitudinal", "--baseline", str(paths["baseline"]), "--followup", str(paths["followup"]),
                     "--out", str(out), "--registered", "--skull-stripped", "--device", "cpu", *extra]) == 0
        reports[name] = json.loads((out / "change_report.json").read_text())
    assert (reports["default"]["settings"]["gate"], reports["default"]["settings"]["change_z"]) == ("voxel", 5.0)
    assert sum(reports["strict"]["counts"].values()) == 0 < sum(reports["default"]["counts"].values())
    assert {k: reports["component"]["settings"][k] for k in ("gate", "change_z", "hyperintensity_z")} == \
        {"gate": "component", "change_z": 4.0, "hyperintensity_z": 3.0}


def test_cli_with_the_reference_model_and_t1(pair_files, tmp_path):
    """The model's lesion calls are fused in (FLAIR + T1); the outputs stay on the follow-up grid."""
    paths, affine = pair_files
    out = tmp_path / "out"
    code = main(["longitudinal", "--baseline", str(paths["baseline"]), "--followup", str(paths["followup"]),
                 "--baseline-t1", str(paths["baseline"]), "--followup-t1", str(paths["followup"]),
                 "--out", str(out), "--registered", "--skull-stripped", "--model", "reference", "--device", "cpu"])
    assert code == 0
    report = json.loads((out / "change_report.json").read_text())
    assert report["model"]["used"] is True
    assert "lesion by the model" in " ".join(report["steps"])
    assert nib.load(out / "change_labels.nii.gz").shape == SHAPE


def _bad_inputs(folder, paths, affine) -> dict[str, list[str]]:
    """Each bad input case as the command-line arguments that make it."""
    base, follow = str(paths["baseline"]), str(paths["followup"])
    other = affine.copy()
    other[:3, 3] += 5.0
    nib.save(nib.Nifti1Image(nib.load(base).get_fdata().astype(np.float32), other), folder / "shifted.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.float32), affine), folder / "empty.nii.gz")
    with_nan = nib.load(base).get_fdata().astype(np.float32)
    with_nan[10, 10, 10] = np.nan
    nib.save(nib.Nifti1Image(with_nan, affine), folder / "nan.nii.gz")
    nib.save(nib.Nifti1Image(np.ones((*SHAPE, 2), np.float32), affine), folder / "four_d.nii.gz")
    nib.save(nib.Nifti1Image(np.ones(SHAPE[:2], np.float32), np.eye(4)), folder / "two_d.nii.gz")
    data = gzip.open(base).read()
    with gzip.open(folder / "corrupt.nii.gz", "wb") as handle:
        handle.write(data[: len(data) // 2])
    return {
        "grids differ under --registered": ["--baseline", str(folder / "shifted.nii.gz"), "--followup", follow, "--registered"],
        "empty scan": ["--baseline", str(folder / "empty.nii.gz"), "--followup", follow],
        "NaN voxel": ["--baseline", base, "--followup", str(folder / "nan.nii.gz")],
        "corrupt file": ["--baseline", str(folder / "corrupt.nii.gz"), "--followup", follow],
        "4D scan": ["--baseline", str(folder / "four_d.nii.gz"), "--followup", follow],
        "2D scan": ["--baseline", base, "--followup", str(folder / "two_d.nii.gz")],
        "missing file": ["--baseline", str(folder / "nowhere.nii.gz"), "--followup", follow],
        "ratio not above 1": ["--baseline", base, "--followup", follow, "--enlarging-ratio", "0.8"],
        "change threshold not above 0": ["--baseline", base, "--followup", follow, "--change-z", "0"],
        "brightness threshold not above 0": ["--baseline", base, "--followup", follow, "--hyperintensity-z", "-1"],
    }


def test_each_bad_input_gives_exit_code_2_a_one_line_error_and_no_output(pair_files, tmp_path, capsys):
    paths, affine = pair_files
    for case, arguments in _bad_inputs(tmp_path, paths, affine).items():
        out = tmp_path / f"out-{case.replace(' ', '_')}"
        code = main(["longitudinal", *arguments, "--out", str(out), "--skull-stripped", "--model", "none",
                     "--device", "cpu"])
        error = capsys.readouterr().err.strip()
        assert code == 2, case
        assert error.startswith("mstoolkit longitudinal: error:") and "\n" not in error, (case, error)
        assert not out.exists(), case


def test_registered_refuses_a_grid_mismatch_with_a_fix(pair_files, tmp_path, capsys):
    paths, affine = pair_files
    other = affine.copy()
    other[:3, :3] *= 1.5
    nib.save(nib.Nifti1Image(nib.load(paths["baseline"]).get_fdata().astype(np.float32), other), tmp_path / "coarse.nii.gz")
    code = main(["longitudinal", "--baseline", str(tmp_path / "coarse.nii.gz"), "--followup", str(paths["followup"]),
                 "--out", str(tmp_path / "out"), "--registered", "--skull-stripped", "--model", "none"])
    error = capsys.readouterr().err
    assert code == 2 and "different grids" in error and "drop --registered" in error
    assert not (tmp_path / "out").exists()


def test_scoring_in_the_common_space_of_the_shipped_pair(tmp_path):
    """The shipped real pair is scored where its truth lives; a mask on another grid is refused, not misread."""
    from mstoolkit.data.datasets import real_longitudinal_patient
    from mstoolkit.data.io import MSToolkitInputError, load_image, save_mask
    from mstoolkit.longitudinal.change import score_in_common_space, to_common_space

    patient = real_longitudinal_patient()
    perfect = score_in_common_space(patient / "gt.nii.gz", patient, study=None)
    assert perfect["f1"] == 1.0 and perfect["dice"] == 1.0 and perfect["n_true"] > 0
    # A FLAIR carried into the common space lands on the truth's grid, with the brain inside it.
    carried, affine = to_common_space(patient / "study2_FLAIR.nii.gz", patient, "study2", is_mask=False)
    truth, truth_affine = load_image(patient / "gt.nii.gz")
    assert carried.shape == truth.shape and np.allclose(affine, truth_affine)
    assert carried[truth > 0].mean() > np.percentile(carried[carried > 0], 50)  # lesion change sits in bright tissue
    empty = tmp_path / "empty.nii.gz"
    save_mask(empty, np.zeros(load_image(patient / "study2_FLAIR.nii.gz")[0].shape, np.uint8),
              load_image(patient / "study2_FLAIR.nii.gz")[1])
    with pytest.raises(MSToolkitInputError, match="the change mask"):  # on the follow-up grid, not the truth's
        score_in_common_space(empty, patient, study=None)
    nothing = score_in_common_space(empty, patient)
    assert nothing["f1"] == 0.0 and nothing["n_pred"] == 0 and nothing["sensitivity"] == 0.0


def test_phantom_pair_scoring_counts_new_and_enlarging_on_the_baseline_grid():
    """A phantom pair's truth is growth on the baseline grid: shrinking labels are not counted, and the
    labels are carried back through the registration transform."""
    from mstoolkit.data.io import Case
    from mstoolkit.longitudinal.change import ENLARGING, NEW, SHRINKING, score_phantom_pair

    shape, affine = (20, 20, 20), np.eye(4)
    truth = np.zeros(shape, np.uint8)
    truth[4:8, 4:8, 4:8] = 1
    truth[12:16, 12:16, 12:16] = 1
    baseline = Case("baseline", {"FLAIR": np.zeros(shape, np.float32)}, affine)
    labels = np.zeros(shape, np.uint8)
    labels[4:8, 4:8, 4:8] = NEW
    labels[12:16, 12:16, 12:16] = ENLARGING
    labels[1:3, 15:18, 1:3] = SHRINKING
    perfect = score_phantom_pair(labels, np.eye(4), affine, baseline, truth)
    assert perfect["f1"] == 1.0 and perfect["n_pred"] == 2  # the shrinking lesion is not a prediction of growth
    shifted = np.eye(4)
    shifted[0, 3] = 6.0  # the follow-up sits 6 mm further along x: the labels must be moved back
    moved = np.zeros(shape, np.uint8)
    moved[10:14, 4:8, 4:8] = NEW
    assert score_phantom_pair(moved, shifted, affine, baseline, truth)["sensitivity"] == 0.5
