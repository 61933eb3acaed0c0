"""Attention-gate maps, the new losses, training on given targets, background training (notebooks 03 and 04)."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from mstoolkit.segmentation.attention_maps import attention_gate_maps, attention_gates
from mstoolkit.segmentation.background import training_progress, wait_for_training
from mstoolkit.segmentation.models import build_model, double_conv
from mstoolkit.segmentation.target_training import fit_to_targets
from mstoolkit.segmentation.train import TwoClassGeneralizedDice, build_loss


def test_attention_gate_maps_one_per_gate_at_input_size():
    torch.manual_seed(0)
    net = build_model("attention_unet", in_channels=2, features=(4, 8, 16, 32)).eval()
    maps = attention_gate_maps(net, torch.randn(1, 2, 24, 16, 32))
    assert len(maps) == len(attention_gates(net)) == 3
    for gate in maps:
        assert gate.shape == (24, 16, 32) and gate.dtype == np.float32
        assert 0 <= gate.min() and gate.max() <= 1
    # the hooks are removed afterwards: a second forward pass adds nothing
    assert all(not gate.psi._forward_hooks for _, gate in attention_gates(net))


def test_attention_gate_maps_follow_the_gate_output():
    """Force one gate shut and see its map go to 0 (guards against reading the wrong tensor)."""
    net = build_model("attention_unet", in_channels=1, features=(4, 8, 16)).eval()
    finest = attention_gates(net)[0][1]
    with torch.no_grad():
        conv = finest.psi[0].conv if hasattr(finest.psi[0], "conv") else finest.psi[0]
        conv.weight.zero_()
        conv.bias.fill_(-50.0)  # sigmoid(-50) ~ 0, whatever the batch norm does in eval
    finest.psi[1].eval()
    maps = attention_gate_maps(net, torch.randn(1, 1, 16, 16, 16))
    assert maps[0].max() < 0.05
    assert maps[1].max() > 0.05


def test_attention_gates_refuses_a_model_without_them():
    with pytest.raises(ValueError, match="no attention gates"):
        attention_gates(build_model("tiny_unet", in_channels=1))


def test_double_conv_keeps_the_size_and_has_two_convolutions():
    block = double_conv(2, 5)
    assert tuple(block(torch.zeros(1, 2, 7, 8, 9)).shape) == (1, 5, 7, 8, 9)
    assert sum(isinstance(m, torch.nn.Conv3d) for m in block) == 2
    assert not any(isinstance(m, torch.nn.Dropout3d) for m in block)


def test_generalized_dice_weights_the_rare_class():
    """With one lesion channel plain Dice ignores background; generalised Dice scores both classes."""
    truth = torch.zeros(1, 1, 8, 8, 8)
    truth[..., 2:4, 2:4, 2:4] = 1
    loss = TwoClassGeneralizedDice()
    perfect, inverted = (truth * 24 - 12), (12 - truth * 24)
    assert float(loss(perfect, truth)) < 0.01
    assert float(loss(inverted, truth)) > 0.99
    # missing the lesion: Sudre et al.'s formula with class weights 1/|G_c|^2, by hand
    missed = torch.full_like(truth, -12.0)
    n_lesion, n_background = float(truth.sum()), float((1 - truth).sum())
    weights = np.array([1 / n_background**2, 1 / n_lesion**2])
    overlap = np.array([n_background, 0.0])  # the background is predicted everywhere, the lesion nowhere
    sizes = np.array([n_background + truth.numel(), n_lesion])  # |P| + |G| per class
    expected = 1 - 2 * (weights * overlap).sum() / (weights * sizes).sum()
    assert float(loss(missed, truth)) == pytest.approx(expected, abs=1e-3)
    # a one-channel generalised Dice would be plain Dice, which puts the same answer at 1
    assert float(build_loss("dice")(missed, truth)) > 0.99 > expected


def test_focal_loss_down_weights_easy_voxels():
    truth = torch.zeros(1, 1, 4, 4, 4)
    truth[..., 0, 0, 0] = 1
    focal, bce = build_loss("focal"), torch.nn.BCEWithLogitsLoss()
    easy = truth * 8 - 4  # every voxel right with probability 0.98
    assert float(focal(easy, truth)) < 0.01 * float(bce(easy, truth))


def test_fit_to_targets_same_seed_same_patches_only_target_differs():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(1, 16, 16, 16)).astype(np.float32)
    hard = (image[0] > 1.0).astype(np.float32)
    first = fit_to_targets([image], [hard], steps=3, patch_size=8, features=(4, 8), seed=1)
    again = fit_to_targets([image], [hard], steps=3, patch_size=8, features=(4, 8), seed=1)
    soft = fit_to_targets([image], [hard * 0.6], steps=3, patch_size=8, features=(4, 8), seed=1, centres_from=[hard > 0])
    weights = [dict(m.named_parameters())["head.weight"].detach() for m in (first, again, soft)]
    assert torch.equal(weights[0], weights[1])
    assert not torch.equal(weights[0], weights[2])


def test_fit_to_targets_refuses_bad_targets():
    image = np.zeros((1, 8, 8, 8), np.float32)
    with pytest.raises(ValueError, match="lie in"):
        fit_to_targets([image], [np.full((8, 8, 8), 2.0)], steps=1, patch_size=8)
    with pytest.raises(ValueError, match="larger than a volume"):
        fit_to_targets([image], [np.zeros((8, 8, 8))], steps=1, patch_size=16)


def test_training_progress_reads_history_and_a_running_process(tmp_path):
    (tmp_path / "history.json").write_text(json.dumps({"loss": [1.0, 0.8, 0.7], "val_dice": [0.1, 0.2, 0.3]}))
    process = subprocess.Popen([sys.executable, "-c", "import time; print('ready', flush=True); time.sleep(30)"],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "ready"  # Python runs: before exec, the child is a tiny stub
        progress = training_progress(tmp_path, process)
        assert progress["epochs"] == 3 and progress["running"]
        assert progress["peak_mb"] is None or progress["peak_mb"] > 1
    finally:
        process.terminate()
        process.wait()
        process.stdout.close()
    assert not training_progress(tmp_path, process)["running"]
    assert training_progress(tmp_path / "missing")["epochs"] == 0


def test_wait_for_training_reports_a_failed_run(tmp_path):
    (tmp_path / "train.log").write_text("line 1\nTraceback: boom\n")
    process = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)"])
    with pytest.raises(RuntimeError, match="exit code 3"):
        wait_for_training(process, tmp_path, poll_seconds=0.05)
