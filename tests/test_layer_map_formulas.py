"""Tests of the notebook-05 helpers: Grad-CAM and HiResCAM from one layer's tensors, and attribution by region."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mstoolkit.data.io import MSToolkitInputError
from mstoolkit.explain import interpret, interpret_checks


def _layer_tensors(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(3, 4, 5, 6, generator=generator), torch.randn(3, 4, 5, 6, generator=generator)


def test_grad_cam_by_hand():
    activations, gradients = _layer_tensors()
    weights = [float(gradients[k].mean()) for k in range(3)]
    by_hand = np.maximum(sum(w * activations[k].numpy() for k, w in enumerate(weights)), 0)
    np.testing.assert_allclose(interpret.grad_cam_from_gradients(activations, gradients).numpy(), by_hand, atol=1e-5)
    signed = interpret.grad_cam_from_gradients(activations, gradients, relu=False)
    assert (signed < 0).any(), "relu=False keeps the negative evidence"


def test_grad_cam_weights_depend_only_on_each_channels_mean_gradient():
    # Shuffling a channel's gradient over space keeps its mean, so Grad-CAM must not change;
    # averaging over the wrong axis (channels) would change it.
    activations, gradients = _layer_tensors(1)
    shuffled = gradients.flatten(1)[:, torch.randperm(gradients[0].numel())].reshape(gradients.shape)
    np.testing.assert_allclose(interpret.grad_cam_from_gradients(activations, shuffled).numpy(),
                               interpret.grad_cam_from_gradients(activations, gradients).numpy(), atol=1e-5)


def test_hires_cam_by_hand_and_a_cancelling_gradient():
    activations, gradients = _layer_tensors(2)
    by_hand = np.maximum((activations * gradients).sum(0).numpy(), 0)
    np.testing.assert_allclose(interpret.hires_cam_from_gradients(activations, gradients).numpy(), by_hand, atol=1e-5)
    cancelling = gradients - gradients.mean(dim=(1, 2, 3), keepdim=True)  # sums to zero over space
    assert float(interpret.grad_cam_from_gradients(activations, cancelling).abs().max()) < 1e-5
    assert float(interpret.hires_cam_from_gradients(activations, cancelling).max()) > 0.1


def test_formulas_match_the_whole_scan_maps_on_a_network_without_tiling_effects():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 1, 1)).eval()
    inputs = np.random.default_rng(0).normal(size=(1, 16, 16, 16)).astype(np.float32)
    region = np.zeros((16, 16, 16), bool)
    region[4:9, 5:10, 6:11] = True
    store = {}
    hook = net[1].register_forward_hook(lambda module, args, out: store.update(a=out))
    logits = net(torch.from_numpy(inputs)[None])[0, 0]
    (gradient,) = torch.autograd.grad(logits[torch.from_numpy(region)].sum(), store["a"])
    hook.remove()
    activation = store["a"][0].detach()
    options = {"target": region, "layer": "1", "patch_size": (16, 16, 16), "margin": 0}
    for formula, whole in ((interpret.grad_cam_from_gradients, interpret.grad_cam),
                           (interpret.hires_cam_from_gradients, interpret.hires_cam)):
        expected = whole(net, inputs, **options)
        found = formula(activation, gradient[0]).numpy()
        np.testing.assert_allclose(found, expected, atol=1e-4 * max(float(np.abs(expected).max()), 1e-12))


def test_formulas_reject_mismatched_shapes():
    activations, gradients = _layer_tensors()
    with pytest.raises(MSToolkitInputError, match="channels, x, y, z"):
        interpret.hires_cam_from_gradients(activations, gradients[:2])
    with pytest.raises(MSToolkitInputError, match="channels, x, y, z"):
        interpret.grad_cam_from_gradients(activations[0], gradients[0])


def test_attribution_by_region():
    brain = np.ones((9, 9, 9), bool)
    brain[0] = False
    region = np.zeros_like(brain)
    region[1, 4, 4] = True  # next to the slab outside the brain: the rim stays inside the brain
    heat = np.zeros(brain.shape)
    heat[1, 4, 5] = 3.0   # on the rim
    heat[1, 4, 4] = 1.0   # in the region
    heat[8, 8, 8] = -5.0  # negative evidence does not count
    heat[0, 0, 0] = 9.0   # outside the brain does not count
    table = interpret_checks.attribution_by_region(heat, region, brain_mask=brain, rim=1).set_index("place")
    np.testing.assert_allclose(table["share_of_map"], [0.25, 0.75, 0.0])
    assert table["voxels"].tolist() == [1, 17, int(brain.sum()) - 18]
    assert table["voxels"].sum() == brain.sum()
    np.testing.assert_allclose(table.loc["region", "enrichment"], 0.25 * brain.sum())
    assert table.loc["region", "enrichment"] == pytest.approx(interpret_checks.pointing_game(heat, region, brain_mask=brain))
    with pytest.raises(MSToolkitInputError, match="rim"):
        interpret_checks.attribution_by_region(heat, region, brain_mask=brain, rim=0)
    with pytest.raises(MSToolkitInputError, match="no voxel"):
        interpret_checks.attribution_by_region(heat, np.zeros_like(region), brain_mask=brain)
