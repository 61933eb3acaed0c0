"""Tests of mstoolkit.explain.interpret on a toy network: HiResCAM and Grad-CAM against captum, tiling, attributions.

Whether the maps are faithful for the reference U-Net: tests/test_interpret_checks.py.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from torch import nn

from mstoolkit.data.io import MSToolkitInputError
from mstoolkit.explain import interpret, interpret_checks

SHAPE = (32, 16, 48)


class Toy(nn.Module):
    """A two-level toy U-Net without normalisation (so tiling does not change its output)."""

    def __init__(self, in_channels: int = 2) -> None:
        super().__init__()
        self.enc = nn.Conv3d(in_channels, 4, 3, padding=1)
        self.down = nn.Conv3d(4, 8, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose3d(8, 4, 2, stride=2)
        self.dec = nn.Conv3d(8, 4, 3, padding=1)
        self.drop = nn.Dropout3d(0.5)
        self.head = nn.Conv3d(4, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.enc(x))
        b = torch.relu(self.down(a))
        c = torch.relu(self.up(b))
        return self.head(self.drop(torch.relu(self.dec(torch.cat([a, c], 1)))))


@pytest.fixture
def toy() -> Toy:
    torch.manual_seed(0)
    return Toy().eval()


@pytest.fixture
def inputs() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(2,) + SHAPE).astype(np.float32)


@pytest.fixture
def region() -> np.ndarray:
    mask = np.zeros(SHAPE, bool)
    mask[6:20, 4:9, 5:30] = True
    return mask


def _captum_grad_cam(model, inputs, region, layer, relu):
    from captum.attr import LayerAttribution, LayerGradCam

    weight = torch.from_numpy(region).float()

    def region_logit(x):  # LayerGradCam explains one scalar per example: the region's summed logits
        return (model(x)[:, 0] * weight).sum(dim=(1, 2, 3))

    found = LayerGradCam(region_logit, dict(model.named_modules())[layer]).attribute(
        torch.from_numpy(inputs)[None], relu_attributions=relu)
    return LayerAttribution.interpolate(found, SHAPE, interpolate_mode="trilinear")[0, 0].detach().numpy()


def _captum_hires_cam(model, inputs, region, layer, relu):
    from captum.attr import LayerAttribution, LayerGradientXActivation

    weight = torch.from_numpy(region).float()
    found = LayerGradientXActivation(lambda x: (model(x)[:, 0] * weight).sum(dim=(1, 2, 3)),
                                     dict(model.named_modules())[layer]).attribute(torch.from_numpy(inputs)[None])
    found = found.sum(1, keepdim=True)  # HiResCAM: gradient × activation summed over channels
    found = torch.relu(found) if relu else found
    return LayerAttribution.interpolate(found, SHAPE, interpolate_mode="trilinear")[0, 0].detach().numpy()


@pytest.mark.parametrize("layer", ["enc", "down", "dec"])
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("method", ["grad_cam", "hires_cam"])
def test_layer_maps_equal_captum(toy, inputs, region, layer, relu, method):
    ours = getattr(interpret, method)(toy, inputs, target=region, layer=layer, relu=relu)
    reference = (_captum_grad_cam if method == "grad_cam" else _captum_hires_cam)(toy, inputs, region, layer, relu)
    assert ours.shape == SHAPE and ours.dtype == np.float32
    assert np.abs(reference).max() > 1e-4  # a real map, not zeros
    np.testing.assert_allclose(ours, reference, atol=1e-5 * max(1.0, np.abs(reference).max()), rtol=0)


def test_candidate_layers(toy):
    assert interpret.candidate_layers(toy, in_channels=2) == {"encoder": "enc", "bottleneck": "down", "decoder": "dec",
                                                              "pre_head": "dec"}
    from mstoolkit.segmentation.models import build_model

    model = build_model("tiny_unet", in_channels=2, features=(4, 8, 16))
    layers = interpret.candidate_layers(model)
    # block outputs after their activation; the decoder one still has a level of 3x3x3 convolutions after it
    assert layers == {"encoder": "encoders.0.5", "bottleneck": "bottleneck.5", "decoder": "decoders.0.5",
                      "pre_head": "decoders.1.5"}
    modules = dict(model.named_modules())
    assert all(isinstance(modules[n], nn.LeakyReLU) for n in layers.values())


def test_tiles_cover_the_volume_once():
    pads, grid, tiles = interpret._tiles((70, 50, 20), (48, 48, 48), 16, 16)
    covered = np.zeros(grid, int)
    for _, inner, out in tiles:
        covered[out] += 1
        assert all(i.stop - i.start == o.stop - o.start for i, o in zip(inner, out))
    assert (covered == 1).all() and grid[0] >= 70 and grid[2] == 32 and pads[2] == (0, 12)


def test_tiled_maps_match_the_whole_volume(toy):
    x = np.random.default_rng(1).normal(size=(2, 60, 16, 16)).astype(np.float32)
    target = np.zeros(x.shape[1:], bool)
    target[10:50, 4:12, 4:12] = True
    whole = interpret.grad_cam(toy, x, target=target, patch_size=(128, 128, 128))
    tiled = interpret.grad_cam(toy, x, target=target, patch_size=(48, 48, 48), margin=16)
    assert np.corrcoef(whole.ravel(), tiled.ravel())[0, 1] > 0.98
    for layer in ("enc", "down", "dec"):  # no normalisation, receptive field < margin: exact
        whole = interpret.hires_cam(toy, x, target=target, layer=layer, relu=False, patch_size=(128, 128, 128))
        tiled = interpret.hires_cam(toy, x, target=target, layer=layer, relu=False, patch_size=(48, 48, 48), margin=16)
        np.testing.assert_allclose(tiled, whole, atol=1e-5 * np.abs(whole).max())
    for method in ("gradient_x_input", "integrated_gradients"):  # the toy's receptive field < margin: exact
        whole = interpret.input_attribution(toy, x, method=method, target=target, patch_size=(128, 128, 128), n_steps=4)
        tiled = interpret.input_attribution(toy, x, method=method, target=target, patch_size=(48, 48, 48), n_steps=4)
        np.testing.assert_allclose(tiled, whole, atol=1e-5)


def test_saliency_is_the_absolute_gradient(toy, inputs, region):
    x = torch.from_numpy(inputs)[None].requires_grad_(True)
    (toy(x)[0, 0] * torch.from_numpy(region).float()).sum().backward()
    found = interpret.input_attribution(toy, inputs, method="saliency", target=region)
    np.testing.assert_allclose(found, x.grad[0].abs().numpy(), atol=1e-6)


def test_integrated_gradients_completeness(toy, inputs, region):
    inputs, region = inputs[:, :16, :, :16], region[:16, :, :16]
    found = interpret.input_attribution(toy, inputs, method="integrated_gradients", target=region, n_steps=32,
                                        internal_batch_size=8)
    weight = torch.from_numpy(region).float()
    with torch.no_grad():
        def score(v):
            return float((toy(torch.from_numpy(v)[None])[0, 0] * weight).sum())

        change = score(inputs) - score(np.zeros_like(inputs))
    assert found.sum() == pytest.approx(change, rel=0.02)


def test_ignored_sequence_gets_no_attribution(toy, inputs, region):
    with torch.no_grad():
        toy.enc.weight[:, 1] = 0.0  # the toy never looks at channel 1
    small = np.zeros(SHAPE, bool)
    small[12:16, 6:8, 10:14] = True
    occlusion = interpret.input_attribution(toy, inputs, method="occlusion", target=small, window=8, margin=0)
    assert np.abs(occlusion[0]).max() > 1e-3 > 1e-5 > np.abs(occlusion[1]).max()  # float noise only
    table = interpret_checks.sequence_importance(toy, inputs, sequences=("FLAIR", "T1"), target=region,
                                                 method="gradient_x_input")
    t1 = table.set_index("sequence").loc["T1"]
    assert t1["attribution_share"] == 0 and t1["dice_drop"] == 0
    assert table["attribution_share"].sum() == pytest.approx(1.0)


@pytest.mark.parametrize("method", ["grad_cam", "hires_cam"])
def test_modes_are_restored_and_dropout_is_off(toy, inputs, region, method):
    toy.train()
    first = getattr(interpret, method)(toy, inputs, target=region)
    second = getattr(interpret, method)(toy, inputs, target=region)
    np.testing.assert_array_equal(first, second)  # dropout off while explaining
    assert toy.training and toy.drop.training


def test_prediction_target_and_roi_mask(toy, inputs):
    brain = np.zeros(SHAPE, bool)
    brain[4:28, 2:14, 6:40] = True
    with torch.no_grad():
        predicted = toy(torch.from_numpy(inputs)[None])[0, 0].numpy() > 0
    found = interpret.hires_cam(toy, inputs, target="prediction", relu=False)
    np.testing.assert_allclose(found, interpret.hires_cam(toy, inputs, target=predicted, relu=False), atol=1e-6)
    inside = interpret.hires_cam(toy, inputs, target="prediction", roi_mask=brain)
    assert inside[~brain].max() == 0 and inside[brain].max() > 0


def test_randomization_decorrelates_grad_cam(toy, inputs, region):
    # the toy has no normalisation layer, so Grad-CAM is not degenerate here
    table = interpret_checks.randomization_test(toy, inputs, "grad_cam", region, layer="dec")
    assert list(table["randomised_to"]) == ["none", "head", "dec", "up", "down", "enc"]
    assert table["spearman"].iloc[0] == 1.0 and table["spearman"].iloc[-1] < 0.3
    near = interpret_checks.randomization_test(toy, inputs, "hires_cam", region, layer="up", within=3, steps=1)
    assert len(near) == 2 and near["spearman"].iloc[-1] < 0.3
    merged = interpret_checks.randomization_test(toy, inputs, "gradient_x_input", region, steps=2)
    assert len(merged) == 3 and merged["randomised_to"].iloc[-1] == "enc"
    assert torch.isfinite(toy.head.weight).all()  # the original model is untouched
    shuffled = interpret_checks.data_randomization_test(toy, inputs, region, "hires_cam", region, layer="dec",
                                                        train_steps=3, patch=16)
    assert abs(shuffled["spearman"]) < 0.5 and np.isfinite(shuffled["final_loss"])
    ax = interpret_checks.plot_randomization({"HiResCAM": table, "gradient × input": merged})
    assert ax.get_title().startswith("Cascading")


def test_errors(toy, inputs, region):
    with pytest.raises(MSToolkitInputError, match="'target' must be 'prediction'"):
        interpret.grad_cam(toy, inputs, target="lesions")
    with pytest.raises(MSToolkitInputError, match="empty region"):
        interpret.grad_cam(toy, inputs, target=np.zeros(SHAPE, bool))
    with pytest.raises(MSToolkitInputError, match="shape"):
        interpret.grad_cam(toy, inputs, target=np.ones((3, 3, 3), bool))
    with pytest.raises(MSToolkitInputError, match="No layer named 'nope'"):
        interpret.grad_cam(toy, inputs, target=region, layer="nope")
    with pytest.raises(MSToolkitInputError, match=r"\(channels, x, y, z\)"):
        interpret.grad_cam(toy, inputs[0], target=region)
    with pytest.raises(MSToolkitInputError, match="allowed: integrated_gradients"):
        interpret.input_attribution(toy, inputs, method="lime", target=region)
    with pytest.raises(MSToolkitInputError, match="occlusion needs a small target"):
        interpret.input_attribution(toy, inputs, method="occlusion")
    with pytest.raises(MSToolkitInputError, match="multiples of 2"):
        interpret.grad_cam(toy, inputs, target=region, patch_size=(41, 41, 41))
    with pytest.raises(MSToolkitInputError, match="allowed: hires_cam, grad_cam, integrated_gradients"):
        interpret_checks.randomization_test(toy, inputs, "guided_backprop", region)
    with pytest.raises(MSToolkitInputError, match="allowed: hires_cam"):
        interpret_checks.data_randomization_test(toy, inputs, region, "lime", region)
    with pytest.raises(MSToolkitInputError, match="'target' has shape"):
        interpret_checks.grad_cam_weights(toy, inputs, target=region[:4])
