"""Tests of mstoolkit.explain.interpret_checks: are the maps faithful for the reference U-Net, and the helpers to read maps.

The faithfulness tests are method-agnostic: each runs for every method in ``FAITHFUL`` on the
reference model and a 96³ box of the shipped real scan (open_ms_data patient26, Lesjak et al.
2018, CC-BY). ``grad_cam`` is not in ``FAITHFUL``: in this network it is degenerate, which
``test_grad_cam_is_degenerate_in_this_network`` checks.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch

from mstoolkit.data.io import MSToolkitInputError
from mstoolkit.explain import interpret, interpret_checks

#: The maps that must pass every faithfulness test ("name", layer role or None for input attributions).
FAITHFUL = [("hires_cam", "decoder"), ("gradient_x_input", None)]
IDS = [name for name, _ in FAITHFUL]
BOX = (slice(40, 136),) * 3  # holds a true-positive lesion, a false positive and healthy brain
WHOLE, TILED = dict(patch_size=(96, 96, 96), margin=8), dict(patch_size=(64, 64, 64), margin=16)


@pytest.fixture(scope="module")
def scan():
    """The reference model, a box of the real scan, its ground truth, and three targets."""
    from mstoolkit.data.datasets import load_dataset_case, real_sample_dir
    from mstoolkit.segmentation.inference import prepare_inputs
    from mstoolkit.segmentation.models import load_model

    torch.set_num_threads(1)  # small, shared machines; also makes the sums reproducible
    model, config = load_model("reference")
    case = load_dataset_case(real_sample_dir(), "patient26", sequences=tuple(config["sequences"]))
    inputs = prepare_inputs(case, tuple(config["sequences"]))[(slice(None),) + BOX].copy()
    truth = case.mask[BOX] > 0
    with torch.no_grad():
        prediction = model(torch.from_numpy(inputs)[None])[0, 0].numpy() > 0
    targets = interpret_checks.example_targets(prediction, truth, brain_mask=inputs[0] != 0)
    regions = {name: targets[name] for name in ("true positive", "false positive", "background")}
    return {"model": model, "inputs": inputs, "truth": truth, "targets": regions, "maps": {}}


def _map(scan, method: str, role: str | None, target: str, tiles: dict = WHOLE, model=None) -> np.ndarray:
    """The signed map of one target (cached for the default model)."""
    key = (method, role, target, tiles["patch_size"])
    if model is None and key in scan["maps"]:
        return scan["maps"][key]
    net = scan["model"] if model is None else model
    region = scan["targets"][target]
    if method in interpret_checks.LAYER_METHODS:
        layer = interpret.candidate_layers(scan["model"])[role]
        found = interpret_checks.LAYER_METHODS[method](net, scan["inputs"], target=region, layer=layer, relu=False, **tiles)
    else:
        found = interpret.input_attribution(net, scan["inputs"], method=method, target=region, **tiles).sum(0)
    if model is None:
        scan["maps"][key] = found
    return found


# --------------------------------------------------------------------------- faithfulness (method-agnostic)


@pytest.mark.parametrize("method, role", FAITHFUL, ids=IDS)
@pytest.mark.parametrize("target", ["true positive", "false positive", "background"])
def test_tiling_invariance(scan, method, role, target):
    """The same target with one 96³ tile and with 64³ tiles: the same map near the target."""
    whole, tiled = _map(scan, method, role, target), _map(scan, method, role, target, TILED)
    r = interpret_checks.map_agreement(whole, tiled, near=scan["targets"][target], within=15)
    assert r >= 0.8, f"{method}: Pearson r {r:.2f} between tile sizes near the {target}"


@pytest.mark.parametrize("method, role", FAITHFUL, ids=IDS)
def test_target_specificity(scan, method, role):
    """A true positive, a false positive and healthy brain: three different maps."""
    names = list(scan["targets"])
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            rho = interpret_checks.map_agreement(
                _map(scan, method, role, first), _map(scan, method, role, second), method="spearman",
                near=[scan["targets"][first], scan["targets"][second]], within=15)
            assert rho < 0.8, f"{method}: Spearman ρ {rho:.2f} between the {first} and {second} maps"


@pytest.mark.parametrize("method, role", FAITHFUL, ids=IDS)
def test_model_randomisation(scan, method, role):
    """Adebayo et al. 2018: with every layer randomised, the map near the target no longer ranks the same."""
    layer = interpret.candidate_layers(scan["model"])[role] if role else None
    options = {"layer": layer, "relu": False} if layer else {}
    table = interpret_checks.randomization_test(scan["model"], scan["inputs"], method, scan["targets"]["true positive"],
                                                steps=2, within=15, **options, **WHOLE)
    assert table["spearman"].iloc[0] == 1.0
    assert abs(table["spearman"].iloc[-1]) < 0.3, table


@pytest.mark.parametrize("method, role", FAITHFUL, ids=IDS)
def test_data_randomisation(scan, method, role):
    """Adebayo et al. 2018: a model trained on shuffled labels gets a different map of the same lesion."""
    layer = interpret.candidate_layers(scan["model"])[role] if role else None
    options = {"layer": layer, "relu": False} if layer else {}
    found = interpret_checks.data_randomization_test(scan["model"], scan["inputs"], scan["truth"], method,
                                                     scan["targets"]["true positive"], within=15, train_steps=8,
                                                     **options, **WHOLE)
    assert abs(found["spearman"]) < 0.5, found
    assert np.isfinite(found["final_loss"])


def test_hires_cam_equals_captum_at_every_candidate_layer(scan):
    """HiResCAM is captum's LayerGradientXActivation summed over channels, upsampled as captum does."""
    from captum.attr import LayerAttribution, LayerGradientXActivation

    model, inputs = scan["model"], scan["inputs"][:, 48:96, 56:104, 40:88]  # one 48³ tile around the lesion
    region = scan["targets"]["true positive"][48:96, 56:104, 40:88]
    weight = torch.from_numpy(region).float()
    modules = dict(model.named_modules())
    for role, layer in interpret.candidate_layers(model).items():
        ours = interpret.hires_cam(model, inputs, target=region, layer=layer, relu=False, patch_size=(48, 48, 48))
        found = LayerGradientXActivation(lambda x: (model(x)[:, 0] * weight).sum(dim=(1, 2, 3)), modules[layer])
        found = found.attribute(torch.from_numpy(inputs)[None]).sum(1, keepdim=True)
        reference = LayerAttribution.interpolate(found, region.shape, interpolate_mode="trilinear")[0, 0].detach().numpy()
        assert np.abs(reference).max() > 1e-3, role
        np.testing.assert_allclose(ours, reference, atol=1e-4 * np.abs(reference).max(), rtol=0, err_msg=role)


def test_grad_cam_is_degenerate_in_this_network(scan):
    """Instance norm after every convolution: Grad-CAM's channel weights cancel, and at the head's input
    they are the head's weights, so the map is the logit map whatever the target."""
    model, inputs, tp = scan["model"], scan["inputs"], scan["targets"]["true positive"]
    table = interpret_checks.grad_cam_weights(model, inputs, target=tp)
    balance = table.groupby("role", sort=False)["balance"].max()
    assert list(balance.index) == ["encoder", "bottleneck", "decoder", "pre_head"]
    assert balance[["encoder", "bottleneck", "decoder"]].max() < 0.1 and balance["pre_head"] == pytest.approx(1.0)
    alpha = table.query("role == 'pre_head'")["alpha"].to_numpy()
    head = model.head.weight.detach().numpy().ravel()
    np.testing.assert_allclose(alpha, head * tp.sum() / tp.size, rtol=1e-4)  # α_k = w_k |target| / N
    cams = [_map(scan, "grad_cam", "pre_head", name) for name in ("true positive", "background")]
    assert interpret_checks.map_agreement(*cams, method="spearman") > 0.99  # the same map for any target


# --------------------------------------------------------------------------- helpers for reading maps


def test_map_agreement():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(10, 11, 12))
    near = np.zeros(a.shape, bool)
    near[5, 5, 5] = True
    b = a.copy()
    b[0, 0, 0] = 100.0  # far from `near`: ignored within 3 voxels
    assert interpret_checks.map_agreement(a, b, near=near, within=3) == pytest.approx(1.0)
    assert interpret_checks.map_agreement(a, b) < 0.5
    assert interpret_checks.map_agreement(np.stack([a, a]), 2 * a, method="spearman") == pytest.approx(1.0)
    assert interpret_checks.map_agreement(a, np.zeros_like(a)) == 0.0
    with pytest.raises(MSToolkitInputError, match="'method' must be 'pearson' or 'spearman'"):
        interpret_checks.map_agreement(a, b, method="kendall")
    with pytest.raises(MSToolkitInputError, match="3D on one grid"):
        interpret_checks.map_agreement(a, b[:5])
    with pytest.raises(MSToolkitInputError, match="'near' is empty"):
        interpret_checks.map_agreement(a, b, near=np.zeros(a.shape, bool))


def test_pointing_game_edge_map_and_display():
    brain = np.ones((8, 8, 8), bool)
    lesion = np.zeros_like(brain)
    lesion[2:4, 2:4, 2:4] = True
    assert interpret_checks.pointing_game(np.ones((8, 8, 8)), lesion, brain_mask=brain) == pytest.approx(1.0)
    assert interpret_checks.pointing_game(lesion * 2.0 - 1.0, lesion, brain_mask=brain) == pytest.approx(64.0)
    step = np.zeros((9, 8, 7), np.float32)
    step[5:] = 1.0
    edges = interpret_checks.edge_map(step)
    assert edges[4:6].min() > 0 and edges[:3].max() == 0 and edges[7:].max() == 0
    shown = interpret_checks.normalize_for_display(np.linspace(-1, 3, 8 * 8 * 8).reshape(8, 8, 8))
    assert shown.min() == 0 and shown.max() == 1
    ax = interpret_checks.plot_map(step, step, contour=step > 0, title="toy")
    assert ax.get_title() == "toy"


def test_lesion_region_matches_metrics_numbering():
    from mstoolkit.evaluation.metric_tables import lesion_table

    mask = np.zeros((12, 10, 9), np.uint8)
    mask[1:3, 1:3, 1:3] = 1  # 8 voxels
    mask[7:10, 5:8, 4:7] = 1  # 27 voxels
    table = lesion_table(mask, mask, spacing=(1, 1, 1)).query("source == 'pred'")
    for _, row in table.iterrows():
        assert interpret_checks.lesion_region(mask, int(row["lesion"])).sum() == row["volume_mm3"]
    with pytest.raises(MSToolkitInputError, match="between 1 and 2"):
        interpret_checks.lesion_region(mask, 3)


def test_errors():
    with pytest.raises(MSToolkitInputError, match="no voxel inside the brain"):
        interpret_checks.pointing_game(np.ones((4, 4, 4)), np.zeros((4, 4, 4)), brain_mask=np.ones((4, 4, 4)))
