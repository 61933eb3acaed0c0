"""The learned change detector (mstoolkit.longitudinal.learned) and `mstoolkit longitudinal --method learned`.

The network itself is replaced by a transparent stand-in where the test is about the wiring
(inputs, grids, threshold, classes); the shipped weights get one check of their own.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_longitudinal import _class_at, pair  # noqa: F401 - the synthetic pair fixture
from torch import nn

from mstoolkit.data.io import MSToolkitInputError
from mstoolkit.longitudinal import learned
from mstoolkit.longitudinal.change import ENLARGING, NEW, classify_changes, detect_changes


class DifferenceIsGrowth(nn.Module):
    """Logits that say "growth" wherever the scaled-difference channel is high: a network with known answers."""

    def __init__(self):
        super().__init__()
        self.seen_shapes = []

    def forward(self, x):
        self.seen_shapes.append(tuple(x.shape[2:]))
        return 10.0 * (x[:, 2:3] - 0.8)  # change_z / 5 > 0.8, i.e. change_z > 4


def test_network_inputs_are_clipped_scaled_and_zero_outside_the_brain():
    brain = np.zeros((10, 10, 10), bool)
    brain[2:8, 2:8, 2:8] = True
    z_baseline = np.full(brain.shape, 1.0, np.float32)
    z_followup = np.full(brain.shape, 30.0, np.float32)  # far brighter than any tissue: clipped
    change_z = np.full(brain.shape, 20.0, np.float32)
    inputs = learned.network_inputs(z_baseline, z_followup, change_z, brain)
    assert inputs.shape == (3, 10, 10, 10) and inputs.dtype == np.float32
    assert np.abs(inputs[:, ~brain]).max() == 0
    assert inputs[0][brain].max() == 1.0 and inputs[1][brain].max() == 10.0
    assert inputs[2][brain].max() == pytest.approx(4.0)  # 20 / 5


def test_growth_probability_runs_on_a_1mm_grid_and_returns_the_input_grid():
    inputs = np.zeros((3, 40, 40, 10), np.float32)
    inputs[2, 15:25, 15:25, 4:6] = 2.0
    network = DifferenceIsGrowth()
    probability = learned.growth_probability(network, inputs, (0.5, 0.5, 3.0))
    assert probability.shape == (40, 40, 10)
    assert network.seen_shapes[0] == (20, 20, 10)  # 0.5 mm in-plane seen at 1 mm; 3 mm slices kept
    assert probability[20, 20, 5] > 0.99 and probability[2, 2, 2] < 0.01
    with pytest.raises(MSToolkitInputError, match=r"\(3, x, y, z\)"):
        learned.growth_probability(network, inputs[:2], (1.0, 1.0, 1.0))


def test_appeared_mask_replaces_the_thresholded_map_but_not_the_shrinking_side():
    shape = (20, 20, 20)
    brain = np.ones(shape, bool)
    appeared = np.zeros(shape, bool)
    appeared[5:9, 5:9, 5:9] = True  # the network's growth, with no change in the map at all
    nothing = np.zeros(shape, bool)
    labels, lesions = classify_changes(np.zeros(shape, np.float32), nothing, nothing, brain, np.eye(4),
                                       appeared=appeared)
    assert (labels[appeared] == NEW).all() and [row["class"] for row in lesions] == ["new"]
    labels, _ = classify_changes(np.zeros(shape, np.float32), nothing, nothing, brain, np.eye(4))
    assert not labels.any()


def test_learned_method_finds_the_new_and_enlarging_lesion(pair):  # noqa: F811 - the fixture
    baseline, followup, affine = pair
    result = detect_changes(baseline, affine, followup, affine, registered=True, skull_stripped=True,
                            bias_correct=False, method="learned",
                            change_network=(DifferenceIsGrowth(), {"threshold": 0.5}))
    assert _class_at(result.labels, "new") == {NEW}
    assert _class_at(result.labels, "enlarging") == {ENLARGING}
    assert not _class_at(result.labels, "stable")
    assert result.growth_probability.shape == followup.shape
    # The threshold comes from the model's config: above every probability, no growth is left.
    strict = detect_changes(baseline, affine, followup, affine, registered=True, skull_stripped=True,
                            bias_correct=False, method="learned",
                            change_network=(DifferenceIsGrowth(), {"threshold": 1.0}))
    assert not _class_at(strict.labels, "new")


def test_unknown_method_is_refused(pair):  # noqa: F811
    baseline, followup, affine = pair
    with pytest.raises(MSToolkitInputError, match="unknown change method 'deep'"):
        detect_changes(baseline, affine, followup, affine, registered=True, method="deep")


def test_load_change_model_refuses_a_missing_file_and_a_segmentation_checkpoint(tmp_path):
    with pytest.raises(MSToolkitInputError, match="no change model"):
        learned.load_change_model(tmp_path / "missing.pt")
    from mstoolkit.segmentation.models import build_model, save_model

    segmentation = save_model(tmp_path / "seg.pt", build_model("tiny_unet", in_channels=2),
                              {"name": "tiny_unet", "sequences": ["FLAIR", "T1"]})
    with pytest.raises(MSToolkitInputError, match="not a change model"):
        learned.load_change_model(segmentation)


def test_training_keeps_the_checkpoint_and_threshold_that_f1_and_dice_prefer(tmp_path):
    rng = np.random.default_rng(0)
    inputs = rng.normal(0, 1, (3, 24, 24, 24)).astype(np.float32)
    truth = np.zeros((24, 24, 24), np.uint8)
    truth[10:14, 10:14, 10:14] = 1

    def score(network, threshold):
        # One huge blob (threshold 0.3) touches every change: F1 1.0 but Dice near 0. It must not win.
        return {0.3: (1.0, 0.01), 0.5: (0.6, 0.5), 0.7: (0.4, 0.3)}[threshold]

    record = learned.train_change_model([(inputs, truth, {"seed": 0})], tmp_path / "change.pt", score=score,
                                        iterations=2, patch=16, batch=2, validate_every=1, log=lambda line: None)
    assert record["threshold"] == 0.5
    network, config = learned.load_change_model(tmp_path / "change.pt")
    assert config["threshold"] == 0.5 and tuple(config["sequences"]) == learned.CHANNELS
    assert network.eval()(torch.zeros(1, 3, 16, 16, 16)).shape == (1, 1, 16, 16, 16)


@pytest.mark.skipif(not learned.MODEL_PATH.is_file(), reason="the change network's weights are not built")
def test_shipped_change_network_loads_with_its_selection_record():
    network, config = learned.load_change_model()
    assert 0 < config["threshold"] < 1
    assert config["training_pairs"] and all(p["seed"] in learned.TRAINING_SEEDS for p in config["training_pairs"])
    assert network.eval()(torch.zeros(1, 3, 16, 16, 16)).shape == (1, 1, 16, 16, 16)


def test_phantom_pair_refuses_an_unknown_followup_profile():
    from mstoolkit.phantom.generator import generate_longitudinal_pair

    with pytest.raises(MSToolkitInputError, match="Unknown profile 'mri7t'"):
        generate_longitudinal_pair(seed=1, followup_profile="mri7t")
