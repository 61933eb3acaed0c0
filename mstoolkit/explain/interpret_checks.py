"""Can a saliency map be trusted, and what does it point at? Sanity checks and helpers to read maps.

The sanity checks of Adebayo et al. (NeurIPS 2018): the cascading *model* randomisation
test (:func:`randomization_test`) randomises the weights from the output layer back, and
the *data* randomisation test (:func:`data_randomization_test`) retrains the network on
shuffled labels; a map that barely changes does not explain the model, and a map that looks
like an edge detector's output (:func:`edge_map`) shows the image rather than the model's
reasoning. :func:`map_agreement` compares two maps near a target: the same target with two
tile sizes must agree, different targets must not. :func:`grad_cam_weights` shows why
Grad-CAM is empty in a network with normalisation layers. :func:`sequence_importance` sets
the per-sequence attributions beside what happens when a sequence is removed. The
energy-based :func:`pointing_game` scores how much of a map falls on a region;
:func:`lesion_region` and :func:`example_targets` pick regions worth explaining; and
:func:`normalize_for_display` and :func:`plot_map` show a map (for pictures only: keep
the raw map for any computation).

The maps come from :mod:`mstoolkit.explain.interpret`. Introduced in notebook 05 (Grad-CAM and
interpretability).
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from mstoolkit.data.io import MSToolkitInputError
from mstoolkit.display.plots import LINE_COLOURS
from mstoolkit.evaluation.metrics import dice
from mstoolkit.explain.interpret import (
    ATTRIBUTION_METHODS,
    CONV_TYPES,
    candidate_layers,
    check_region,
    evaluation_mode,
    explained_box,
    find_layer,
    grad_cam,
    hires_cam,
    input_attribution,
    lesion_logit,
    model_device,
    resolve_target,
    tiled_logits,
)
from mstoolkit.segmentation.inference import check_model_inputs

#: Layer maps the sanity checks accept, besides :data:`mstoolkit.explain.interpret.ATTRIBUTION_METHODS`.
LAYER_METHODS = {"hires_cam": hires_cam, "grad_cam": grad_cam}

__all__ = [
    "LAYER_METHODS",
    "attribution_by_region",
    "data_randomization_test",
    "edge_map",
    "example_targets",
    "grad_cam_weights",
    "lesion_region",
    "map_agreement",
    "normalize_for_display",
    "plot_map",
    "plot_randomization",
    "pointing_game",
    "randomization_test",
    "sequence_importance",
]


# --------------------------------------------------------------------------- per-sequence importance


def sequence_importance(
    model: nn.Module,
    inputs: np.ndarray | torch.Tensor,
    *,
    sequences: tuple[str, ...] = ("FLAIR", "T1"),
    target: str | np.ndarray = "prediction",
    method: str = "integrated_gradients",
    truth: np.ndarray | None = None,
    roi_mask: np.ndarray | None = None,
    **options: Any,
):
    """How much each input sequence matters: attribution share and Dice drop when it is removed.

    ``attribution_share`` is each sequence's part of the absolute attribution (``method``, see
    :func:`input_attribution`) inside the target region. ``dice_drop`` is the Dice lost when that
    sequence is *ablated* (set to 0, its normalised mean) and the whole prediction is redone:
    against ``truth`` when given, else against the unablated prediction.

    Returns
    -------
    pandas.DataFrame
        Columns ``sequence``, ``attribution_share``, ``dice``, ``dice_ablated``, ``dice_drop``.

    Introduced in notebook 05.
    """
    import pandas as pd

    x = check_model_inputs(inputs)
    shape = tuple(x.shape[1:])
    if len(sequences) != x.shape[0]:
        raise MSToolkitInputError(f"'sequences' names {len(sequences)} channels but 'inputs' has {x.shape[0]}.")
    patch_size, margin = options.get("patch_size", (96, 96, 96)), options.get("margin", 8)
    box = explained_box(roi_mask, shape, margin)
    predicted = np.zeros(shape, dtype=bool)
    predicted[box] = tiled_logits(model, x, box, patch_size, margin) > 0
    region = predicted if isinstance(target, str) and target == "prediction" else resolve_target(target, shape)
    if not region.any():
        raise MSToolkitInputError("the model predicts no lesion here, so 'prediction' is empty; pass a region as target.")
    reference = predicted if truth is None else check_region(truth, shape, "truth")
    attribution = input_attribution(model, x, method=method, target=region, roi_mask=roi_mask, **options)
    inside = np.abs(attribution[:, region]).sum(axis=1)
    shares = inside / max(float(inside.sum()), 1e-12)
    rows = []
    baseline_dice = dice(predicted, reference)
    for c, name in enumerate(sequences):
        ablated = x.clone()
        ablated[c] = 0.0
        without = np.zeros(shape, dtype=bool)
        without[box] = tiled_logits(model, ablated, box, patch_size, margin) > 0
        dice_without = dice(without, reference)
        rows.append({"sequence": name, "attribution_share": float(shares[c]), "dice": baseline_dice,
                     "dice_ablated": dice_without, "dice_drop": baseline_dice - dice_without})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- sanity checks


def _randomisation_steps(model: nn.Module, in_channels: int, steps: int | None) -> list[tuple[str, list[nn.Module]]]:
    """Groups of parametrised layers, from the output back: each convolution with what follows it."""
    names = {m: n for n, m in model.named_modules()}
    order: list[nn.Module] = []
    leaves = [m for m in model.modules() if not list(m.children()) and any(True for _ in m.parameters(recurse=False))]
    hooks = [m.register_forward_hook(lambda m, i, o: order.append(m) if m not in order else None) for m in leaves]
    try:
        with evaluation_mode(model), torch.no_grad():
            model(torch.zeros(1, in_channels, 32, 32, 32, device=model_device(model)))
    finally:
        for hook in hooks:
            hook.remove()
    groups: list[list[nn.Module]] = []
    for module in order:
        if isinstance(module, CONV_TYPES) or not groups:
            groups.append([module])
        else:
            groups[-1].append(module)
    groups.reverse()
    if steps is not None and 0 < steps < len(groups):
        merged = np.array_split(np.arange(len(groups)), steps)
        groups = [[m for i in chunk for m in groups[i]] for chunk in merged]
    # Label each step by its convolution closest to the input: the cascade has reached it.
    return [(names[[m for m in group if isinstance(m, CONV_TYPES)][-1] if any(isinstance(m, CONV_TYPES) for m in group)
             else group[0]], group) for group in groups]


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0  # a constant map (e.g. all zero after the ReLU) has no ranking to agree with
    return float(spearmanr(a, b).statistic)


def _near(regions: Any, shape: tuple[int, ...], within: float) -> np.ndarray:
    """Voxels at most ``within`` voxels from any of ``regions`` (one mask or a list of masks)."""
    from scipy import ndimage

    masks = [regions] if isinstance(regions, np.ndarray) else list(regions)
    union = np.zeros(shape, dtype=bool)
    for mask in masks:
        union |= check_region(mask, shape, "near")
    if not union.any():
        raise MSToolkitInputError("'near' is empty; pass the target region(s) the maps explain.")
    return ndimage.distance_transform_edt(~union) <= within


def map_agreement(first: np.ndarray, second: np.ndarray, *, near: Any = None, within: float = 15,
                  method: str = "pearson") -> float:
    """Correlation of two maps, on the voxels within ``within`` voxels of ``near``.

    Two uses, both in notebook 05. *Tiling invariance*: the same target explained with two tile
    sizes must give the same map near the target (Pearson r close to 1); a map that changes
    with the tiles shows the tiling, not the model. *Target specificity*: maps of different
    targets (a true-positive lesion, a false positive, a background region; ``near`` = both
    regions) must differ (rank correlation well below 1); a map that is the same whatever the
    target explains nothing about the target.

    Parameters
    ----------
    first, second : array (x, y, z) or (channels, x, y, z)
        Raw maps on one grid; several channels (per-sequence attributions) are summed first.
    near : binary array or list of binary arrays, optional
        Target region(s); default every voxel.
    within : float
        Distance in voxels (Euclidean) from ``near``.
    method : {"pearson", "spearman"}

    >>> a = np.zeros((5, 5, 5)); a[2, 2, 2] = 1.0; a[1, 1, 1] = 0.5
    >>> map_agreement(a, 2 * a), map_agreement(a, -a, method="spearman")
    (1.0, -1.0)
    """
    first, second = (np.asarray(m, dtype=np.float64) for m in (first, second))
    first, second = (m.sum(0) if m.ndim == 4 else m for m in (first, second))
    if first.shape != second.shape or first.ndim != 3:
        raise MSToolkitInputError(f"the maps must be 3D on one grid, got shapes {first.shape} and {second.shape}.")
    if method not in ("pearson", "spearman"):
        raise MSToolkitInputError(f"'method' must be 'pearson' or 'spearman', got {method!r}.")
    inside = np.ones(first.shape, bool) if near is None else _near(near, first.shape, within)
    a, b = first[inside], second[inside]
    if method == "spearman":
        return _spearman(a, b)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0  # a constant map agrees with nothing
    return round(float(np.corrcoef(a, b)[0, 1]), 12)


def grad_cam_weights(model: nn.Module, inputs: np.ndarray | torch.Tensor, *, target: np.ndarray,
                     layers: dict[str, str] | None = None):
    """Grad-CAM's channel weights ``α_k`` at each layer, and how much of each channel's gradient cancels.

    One pass over the whole ``inputs`` (a box of at most about 128³ voxels; no tiles). For each
    channel ``k`` of each layer: ``alpha`` (the gradient of the target averaged over the layer's
    positions, Grad-CAM's weight) and ``balance`` = ``|Σ_u ∂y/∂A_k,u| / Σ_u |∂y/∂A_k,u|``.
    A balance near 0 means the gradient's positive and negative parts cancel, so ``α_k`` is
    zero up to rounding however strongly the channel matters: what instance normalisation after
    a layer does, since it removes each channel's mean. A balance of 1 means the gradient has one
    sign everywhere (as at the input of a 1×1 head, where it is the head's weight).

    Parameters
    ----------
    target : binary array (x, y, z)
        The region whose summed lesion logits are explained.
    layers : dict, optional
        Label → layer name; default :func:`mstoolkit.explain.interpret.candidate_layers`.

    Returns
    -------
    pandas.DataFrame
        One row per channel: ``role`` (the label), ``layer``, ``channel``, ``alpha``, ``balance``.
        ``table.groupby("role", sort=False)["balance"].max()`` gives the figure of each layer.

    Introduced in notebook 05.
    """
    import pandas as pd

    x = check_model_inputs(inputs)
    region = torch.from_numpy(check_region(target, tuple(x.shape[1:]), "target"))
    layers = dict(layers or candidate_layers(model, in_channels=x.shape[0]))
    modules = {role: find_layer(model, name) for role, name in layers.items()}
    captured: dict[str, torch.Tensor] = {}
    hooks = [module.register_forward_hook(lambda m, i, o, role=role: captured.__setitem__(role, o))
             for role, (_, module) in modules.items()]
    try:
        with evaluation_mode(model):
            logits = lesion_logit(model(x[None].to(model_device(model))))[0]
            gradients = torch.autograd.grad(logits[region.to(logits.device)].sum(), list(captured.values()))
    finally:
        for hook in hooks:
            hook.remove()
    rows = []
    for role, gradient in zip(captured, gradients):
        gradient = gradient[0].detach().double().cpu().flatten(1)
        balance = gradient.sum(1).abs() / gradient.abs().sum(1).clamp_min(1e-30)
        rows += [{"role": role, "layer": modules[role][0], "channel": k, "alpha": float(gradient[k].mean()),
                  "balance": float(balance[k])} for k in range(gradient.shape[0])]
    return pd.DataFrame(rows)


def _check_method(method: str) -> None:
    if method not in LAYER_METHODS and method not in ATTRIBUTION_METHODS:
        raise MSToolkitInputError(f"Unknown method {method!r}; allowed: {', '.join(LAYER_METHODS)}, "
                                  f"{', '.join(ATTRIBUTION_METHODS)}.")


def _explainer(method: str, x: torch.Tensor, region: np.ndarray, roi_mask: Any, layer: Any, options: dict):
    """A function model → map (x, y, z) for one of the sanity checks' methods."""

    def explain(net: nn.Module) -> np.ndarray:
        if method in LAYER_METHODS:
            return LAYER_METHODS[method](net, x, target=region, layer=layer, roi_mask=roi_mask, **options)
        return input_attribution(net, x, method=method, target=region, roi_mask=roi_mask, signed=method == "saliency",
                                 **options).sum(0)  # signed gradient for saliency; summed over sequences

    return explain


def _compared_voxels(shape, roi_mask, region, within, max_voxels, seed) -> np.ndarray:
    """Flat indices of the voxels a randomisation check compares (at most ``max_voxels``, sampled)."""
    inside = np.ones(shape, bool) if roi_mask is None else check_region(roi_mask, shape, "roi_mask")
    if within is not None:
        inside = inside & _near(region, shape, within)
    candidates = np.flatnonzero(inside)
    return np.random.default_rng(seed).choice(candidates, size=min(max_voxels, candidates.size), replace=False)


def randomization_test(
    model: nn.Module,
    inputs: np.ndarray | torch.Tensor,
    method: str = "hires_cam",
    target: str | np.ndarray = "prediction",
    *,
    layer: str | None = None,
    steps: int | None = None,
    roi_mask: np.ndarray | None = None,
    within: float | None = None,
    max_voxels: int = 300_000,
    seed: int = 0,
    **options: Any,
):
    """Cascading model-parameter randomisation test (Adebayo et al. 2018).

    Re-initialises the layers of a *copy* of the model one step at a time, from the output layer
    back to the input, recomputes the map after each step, and compares it with the original map
    by Spearman rank correlation (inside ``roi_mask`` and within ``within`` voxels of the target
    when given; at most ``max_voxels`` voxels, sampled with ``seed``). A faithful explanation
    decorrelates quickly: a map that survives random weights shows the image (edges), not the model.

    Parameters
    ----------
    method : "hires_cam", "grad_cam" or one of :data:`mstoolkit.explain.interpret.ATTRIBUTION_METHODS`
    target : "prediction" or binary array
        "prediction" is fixed to the *original* model's prediction, so every step explains the
        same region.
    layer : str, optional
        The layer of a layer map; default ``candidate_layers(model)["decoder"]``.
    steps : int, optional
        Merge the layers into this many steps (faster); default one step per convolution.
    options
        Passed to the map's function (:func:`mstoolkit.explain.interpret.hires_cam`, ``grad_cam`` or
        ``input_attribution``).

    Returns
    -------
    pandas.DataFrame
        One row per step: ``step``, ``randomised_to`` (the layer reached), ``spearman`` (signed map,
        summed over sequences; for saliency the signed gradient) and ``spearman_abs`` (absolute map,
        for saliency the usual |gradient| map).

    Introduced in notebook 05.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from mstoolkit.segmentation.models import model_in_channels

    x, explain, voxels = _randomisation_setup(model, inputs, method, target, layer, roi_mask, within, max_voxels, seed,
                                              options)

    def flat(found: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        values = found.reshape(-1)[voxels]
        return values, np.abs(values)

    original = flat(explain(model))
    rows = [{"step": 0, "randomised_to": "none", "spearman": 1.0, "spearman_abs": 1.0}]
    randomised = copy.deepcopy(model)
    layers = _randomisation_steps(randomised, model_in_channels(model), steps)
    with torch.random.fork_rng(devices=[]):
        for step, (name, group) in enumerate(tqdm(layers, desc="randomising layers", leave=False), start=1):
            torch.manual_seed(seed + step)
            for module in group:
                _reinitialise(module)
            now = flat(explain(randomised))
            rows.append({"step": step, "randomised_to": name, "spearman": _spearman(original[0], now[0]),
                         "spearman_abs": _spearman(original[1], now[1])})
    return pd.DataFrame(rows)


def _randomisation_setup(model: nn.Module, inputs: Any, method: str, target: Any, layer: Any, roi_mask: Any,
                         within: Any, max_voxels: int, seed: int, options: dict) -> tuple[torch.Tensor, Any, np.ndarray]:
    """What both randomisation tests share: the inputs, the map of one fixed target, and the voxels compared."""
    _check_method(method)
    x = check_model_inputs(inputs)
    region = _fixed_target(model, x, target, roi_mask, options)
    layer_name = find_layer(model, layer)[0] if method in LAYER_METHODS else None
    explain = _explainer(method, x, region, roi_mask, layer_name, options)
    return x, explain, _compared_voxels(tuple(x.shape[1:]), roi_mask, region, within, max_voxels, seed)


def _fixed_target(model: nn.Module, x: torch.Tensor, target: Any, roi_mask: Any, options: dict) -> np.ndarray:
    """The target as a region; "prediction" becomes the original model's predicted mask."""
    shape = tuple(x.shape[1:])
    if isinstance(target, str) and target == "prediction":
        margin = options.get("margin", 8)
        box = explained_box(roi_mask, shape, margin)
        target = np.zeros(shape, dtype=bool)
        target[box] = tiled_logits(model, x, box, options.get("patch_size", (96, 96, 96)), margin) > 0
    return resolve_target(target, shape)


def _reinitialise(module: nn.Module) -> None:
    if hasattr(module, "reset_parameters"):
        module.reset_parameters()
    else:
        for p in module.parameters(recurse=False):
            torch.nn.init.normal_(p.data, std=float(p.data.std()) or 0.1)


def data_randomization_test(
    model: nn.Module,
    inputs: np.ndarray | torch.Tensor,
    labels: np.ndarray,
    method: str = "hires_cam",
    target: str | np.ndarray = "prediction",
    *,
    layer: str | None = None,
    roi_mask: np.ndarray | None = None,
    within: float | None = None,
    train_steps: int = 40,
    patch: int = 32,
    learning_rate: float = 3e-3,
    max_voxels: int = 300_000,
    seed: int = 0,
    **options: Any,
) -> dict[str, float]:
    """Data randomisation test (Adebayo et al. 2018): the map of a model trained on shuffled labels.

    A fresh copy of the architecture is trained (Adam, ``train_steps`` steps on random
    ``patch``³ crops of ``inputs``) on ``labels`` whose voxels were shuffled inside ``roi_mask``:
    the same lesion load, no relation left between image and label. Whatever that model does,
    it cannot be what the real model learnt, so a faithful map of the same target must differ
    from the real model's map (Spearman ρ near 0). A map that stays the same shows the image
    or the architecture, not what was learnt.

    Parameters
    ----------
    labels : binary array (x, y, z)
        The lesion mask the scan would train with (the ground truth).
    method, target, layer, roi_mask, within, max_voxels, seed, options
        As in :func:`randomization_test`.
    train_steps, patch, learning_rate
        The shuffled-label training: a short one is enough, as the test asks only whether the
        map follows the weights that data produce.

    Returns
    -------
    dict
        ``spearman`` and ``spearman_abs`` (as in :func:`randomization_test`) and ``final_loss``
        (the shuffled-label model's training loss on its last step).

    Introduced in notebook 05.
    """
    x, explain, voxels = _randomisation_setup(model, inputs, method, target, layer, roi_mask, within, max_voxels, seed,
                                              options)
    shuffled, loss = _train_on_shuffled_labels(model, x, check_region(labels, tuple(x.shape[1:]), "labels"), roi_mask,
                                               steps=train_steps, patch=patch, learning_rate=learning_rate, seed=seed)
    original, now = explain(model).reshape(-1)[voxels], explain(shuffled).reshape(-1)[voxels]
    return {"spearman": _spearman(original, now), "spearman_abs": _spearman(np.abs(original), np.abs(now)),
            "final_loss": loss}


def _train_on_shuffled_labels(model: nn.Module, x: torch.Tensor, labels: np.ndarray, roi_mask: Any, *, steps: int,
                              patch: int, learning_rate: float, seed: int) -> tuple[nn.Module, float]:
    """A re-initialised copy of ``model`` trained on ``labels`` shuffled inside ``roi_mask``."""
    rng = np.random.default_rng(seed)
    inside = np.ones(labels.shape, bool) if roi_mask is None else check_region(roi_mask, labels.shape, "roi_mask")
    shuffled = labels.copy()
    shuffled[inside] = rng.permutation(labels[inside])
    y = torch.from_numpy(shuffled).float()
    net = copy.deepcopy(model)
    sizes = [min(patch, n) for n in labels.shape]
    loss = torch.tensor(float("nan"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in net.modules():
            if any(True for _ in module.parameters(recurse=False)):
                _reinitialise(module)
        optimiser = torch.optim.Adam(net.parameters(), lr=learning_rate)
        net.train()
        device = model_device(net)
        for _ in range(steps):
            start = [int(rng.integers(0, n - s + 1)) for n, s in zip(labels.shape, sizes)]
            box = tuple(slice(a, a + s) for a, s in zip(start, sizes))
            logits = lesion_logit(net(x[(slice(None),) + box][None].to(device)))
            loss = F.binary_cross_entropy_with_logits(logits, y[box][None].to(device))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return net.eval(), float(loss.detach())


def plot_randomization(tables: dict[str, Any], *, ax: Any = None, absolute: bool = False):
    """Plot Spearman correlation against randomisation step, one line per method.

    ``tables`` maps a label (e.g. "Grad-CAM") to a :func:`randomization_test` table.
    Introduced in notebook 05.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.6))
    column = "spearman_abs" if absolute else "spearman"
    markers = itertools.cycle("osD^v")
    for (label, table), colour in zip(tables.items(), itertools.cycle(LINE_COLOURS)):
        ax.plot(table["step"], table[column], marker=next(markers), color=colour, label=label)
    first = next(iter(tables.values()))
    ax.set_xticks(first["step"], [str(n).replace("model.", "")[-22:] for n in first["randomised_to"]], rotation=60,
                  ha="right", fontsize=7)
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_ylim(-0.5, 1.05)
    ax.set_xlabel("layers randomised, from the output back to …")
    ax.set_ylabel("Spearman ρ with the original map")
    ax.set_title("Cascading randomisation (Adebayo et al. 2018)")
    ax.legend(fontsize=8)
    ax.figure.tight_layout()
    return ax


# --------------------------------------------------------------------------- helpers for reading maps


def pointing_game(heatmap: np.ndarray, region: np.ndarray, *, brain_mask: np.ndarray) -> float:
    """Energy-based pointing game: positive map mass inside ``region`` relative to its volume share.

    ``(Σ_region max(map, 0) / Σ_brain max(map, 0)) / (|region| / |brain|)``, both inside the brain.
    1 means the map is no more concentrated on the region than a uniform map; higher is better.

    >>> brain = np.ones((4, 4, 4), bool); lesion = np.zeros_like(brain); lesion[0, 0, :2] = True
    >>> round(pointing_game(lesion * 1.0, lesion, brain_mask=brain), 1)  # all mass on 2 of 64 voxels
    32.0

    Introduced in notebook 05.
    """
    heatmap = np.asarray(heatmap, dtype=np.float64)
    brain = check_region(brain_mask, heatmap.shape, "brain_mask")
    region = check_region(region, heatmap.shape, "region") & brain
    if not region.any():
        raise MSToolkitInputError("'region' has no voxel inside the brain mask.")
    positive = np.clip(heatmap, 0, None)
    total = positive[brain].sum()
    if total == 0:
        return 0.0
    return float((positive[region].sum() / total) / (region.sum() / brain.sum()))


def attribution_by_region(heatmap: np.ndarray, region: np.ndarray, *, brain_mask: np.ndarray, rim: int = 3):
    """Where a map's positive mass lies: inside ``region``, on its rim, or in the rest of the brain.

    The rim is the brain within ``rim`` voxels of the region (26-connected dilation), outside it.
    Columns: ``place`` ("region", "rim", "rest of brain"), ``voxels``, ``share_of_map`` (share of
    the positive mass inside the brain), ``share_of_brain`` (share of the brain's voxels) and
    ``enrichment`` (their ratio: 1 = no more than a uniform map would put there; the pointing
    game of :func:`pointing_game` is the region's row).

    >>> brain = np.ones((5, 5, 5), bool); spot = np.zeros_like(brain); spot[2, 2, 2] = True
    >>> attribution_by_region(spot * 1.0, spot, brain_mask=brain, rim=1)["share_of_map"].tolist()
    [1.0, 0.0, 0.0]

    Introduced in notebook 05 (reading the map of a false positive).
    """
    import pandas as pd
    from scipy import ndimage

    heatmap = np.asarray(heatmap, dtype=np.float64)
    brain = check_region(brain_mask, heatmap.shape, "brain_mask")
    region = check_region(region, heatmap.shape, "region") & brain
    if not region.any():
        raise MSToolkitInputError("'region' has no voxel inside the brain mask.")
    if rim < 1:
        raise MSToolkitInputError(f"'rim' must be a positive number of voxels, got {rim!r}.")
    around = ndimage.binary_dilation(region, structure=np.ones((3, 3, 3), bool), iterations=rim) & brain & ~region
    places = {"region": region, "rim": around, "rest of brain": brain & ~region & ~around}
    positive = np.clip(heatmap, 0, None)
    total = positive[brain].sum()
    rows = []
    for place, voxels in places.items():
        share_of_map = float(positive[voxels].sum() / total) if total > 0 else 0.0
        share_of_brain = float(voxels.sum() / brain.sum())
        rows.append({"place": place, "voxels": int(voxels.sum()), "share_of_map": share_of_map,
                     "share_of_brain": share_of_brain,
                     "enrichment": share_of_map / share_of_brain if share_of_brain > 0 else float("nan")})
    return pd.DataFrame(rows)


def edge_map(image: np.ndarray) -> np.ndarray:
    """Sobel gradient magnitude of an image: the 'explanation' any edge detector gives for free.

    A saliency map that correlates strongly with this (and survives weight randomisation) shows
    the image's edges rather than the model's reasoning. Introduced in notebook 05.
    """
    from scipy import ndimage

    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3:
        raise MSToolkitInputError(f"'image' must be 3D (x, y, z), got shape {image.shape}.")
    return np.sqrt(sum(ndimage.sobel(image, axis=a) ** 2 for a in range(3))).astype(np.float32)


def lesion_region(mask: np.ndarray, lesion_id: int, *, connectivity: int = 26) -> np.ndarray:
    """Boolean region of lesion ``lesion_id`` of a mask, numbered as in ``mstoolkit.evaluation.metric_tables.lesion_table``.

    Introduced in notebook 05.
    """
    from mstoolkit.evaluation.metrics import label_lesions

    labels, n = label_lesions(mask, spacing=(1.0, 1.0, 1.0), connectivity=connectivity)
    if not 1 <= int(lesion_id) <= n:
        raise MSToolkitInputError(f"'lesion_id' must be between 1 and {n} (the mask's lesions), got {lesion_id!r}.")
    return labels == int(lesion_id)


def example_targets(pred: np.ndarray, truth: np.ndarray, *, brain_mask: np.ndarray | None = None,
                    connectivity: int = 26) -> dict[str, np.ndarray]:
    """Regions worth explaining: the whole prediction and the largest true-positive lesion,
    false-positive lesion and missed (truth) lesion, where they exist (any-overlap matching).

    With ``brain_mask``, also ``"background"``: a 6³ cube of healthy brain, more than 20 voxels
    from any predicted or true lesion and 5 from the brain's edge: a target the model has no
    reason to call lesion, whose map must differ from a lesion's.

    Introduced in notebook 05.
    """
    from scipy import ndimage

    from mstoolkit.evaluation.metrics import label_lesions

    pred, truth = np.asarray(pred) > 0, np.asarray(truth) > 0
    targets = {"prediction": pred} if pred.any() else {}
    for name, mask, other in (("true positive", pred, truth), ("false positive", pred, truth), ("missed", truth, pred)):
        labels, n = label_lesions(mask, spacing=(1.0, 1.0, 1.0), connectivity=connectivity)
        touching = set(np.unique(labels[other & (labels > 0)]))
        wanted = [k for k in range(1, n + 1) if (k in touching) == (name == "true positive")]
        if wanted:
            sizes = np.bincount(labels.ravel(), minlength=n + 1)
            targets[name] = labels == max(wanted, key=lambda k: sizes[k])
    if brain_mask is not None:
        brain = ndimage.binary_erosion(check_region(brain_mask, pred.shape, "brain_mask"), iterations=5)
        healthy = brain & (ndimage.distance_transform_edt(~(pred | truth)) > 20)
        if healthy.any():
            centre = np.argwhere(healthy)[int(healthy.sum()) // 2]  # a reproducible pick
            targets["background"] = np.zeros(pred.shape, dtype=bool)
            targets["background"][tuple(slice(max(c - 3, 0), c + 3) for c in centre)] = True
    return targets


def normalize_for_display(heatmap: np.ndarray, *, percentile: float = 99.5) -> np.ndarray:
    """Scale a map's positive part to [0, 1] for display only (clipped at a percentile of its positive values).

    Keep the raw map for any computation: normalising hides how strong the evidence is.

    >>> normalize_for_display(np.array([[[-1.0, 0.0, 2.0, 4.0]]]), percentile=100).tolist()
    [[[0.0, 0.0, 0.5, 1.0]]]
    """
    heatmap = np.clip(np.asarray(heatmap, dtype=np.float32), 0, None)
    positive = heatmap[heatmap > 0]
    if positive.size == 0:
        return np.zeros_like(heatmap)
    return np.clip(heatmap / np.percentile(positive, percentile), 0, 1)


def plot_map(image: np.ndarray, heatmap: np.ndarray, *, contour: np.ndarray | None = None, plane: str = "axial",
             index: int | None = None, ax: Any = None, title: str = "", colorbar: bool = True):
    """Show a map over an image slice (radiological view), with a lesion outline.

    The map is normalised for display (:func:`normalize_for_display`) and drawn with the
    colour-blind-safe "inferno" colour map; ``contour`` (e.g. the lesion or prediction mask) is
    outlined in sky blue. ``index`` defaults to the slice with most of the map.
    Introduced in notebook 05.
    """
    import matplotlib.pyplot as plt

    from mstoolkit.display.plots import PLANE_AXIS, auto_window, take_slice

    shown = normalize_for_display(heatmap)
    axis = PLANE_AXIS[plane]
    if index is None:
        index = int(np.argmax(shown.sum(axis=tuple(a for a in range(3) if a != axis))))
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 4))
    low, high = auto_window(image)
    ax.imshow(take_slice(image, plane, index), cmap="gray", vmin=low, vmax=high)
    layer = take_slice(shown, plane, index)
    drawn = ax.imshow(np.ma.masked_less_equal(layer, 0.02), cmap="inferno", vmin=0, vmax=1, alpha=0.75)
    if contour is not None and take_slice(np.asarray(contour) > 0, plane, index).any():
        ax.contour(take_slice(np.asarray(contour) > 0, plane, index), levels=[0.5], colors=["#56B4E9"], linewidths=0.9)
    if colorbar:
        ax.figure.colorbar(drawn, ax=ax, fraction=0.046, label="map / its 99.5th percentile")
    ax.set_title(title or f"{plane} slice {index}", fontsize=9)
    ax.set_xlabel("R ← voxels → L" if plane != "sagittal" else "A ← voxels → P")
    ax.set_ylabel("A ↑" if plane == "axial" else "S ↑")
    return ax
