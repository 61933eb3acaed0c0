"""Can a saliency map be trusted, and what does it point at? Sanity checks and helpers to read maps.

The cascading randomisation test of Adebayo et al. (NeurIPS 2018) randomises the
weights from the output layer back: a map that barely changes does not explain the
model, and a map that looks like an edge detector's output (:func:`edge_map`) shows the
image rather than the model's reasoning. :func:`sequence_importance` sets the
per-sequence attributions beside what happens when a sequence is removed. The
energy-based :func:`pointing_game` scores how much of a map falls on a region;
:func:`lesion_region` and :func:`example_targets` pick regions worth explaining; and
:func:`normalize_for_display` and :func:`plot_map` show a map (for pictures only: keep
the raw map for any computation).

The maps come from :mod:`mstoolkit.interpret`. Introduced in notebook 05 (Grad-CAM and
interpretability).
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

import numpy as np
import torch
from torch import nn

from .inference import check_model_inputs
from .interpret import (
    _CONV_TYPES,
    ATTRIBUTION_METHODS,
    _bounds,
    _check_mask,
    _device,
    _evaluation,
    _find_layer,
    _resolve_target,
    _tiled_logits,
    grad_cam,
    input_attribution,
)
from .io import MSToolkitInputError
from .plots import LINE_COLOURS

__all__ = [
    "edge_map",
    "example_targets",
    "lesion_region",
    "normalize_for_display",
    "plot_map",
    "plot_randomization",
    "pointing_game",
    "randomization_test",
    "sequence_importance",
]


# --------------------------------------------------------------------------- per-sequence importance


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total  # both empty → 1


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
    box = _bounds(roi_mask, shape, margin)
    predicted = np.zeros(shape, dtype=bool)
    predicted[box] = _tiled_logits(model, x, box, patch_size, margin) > 0
    region = predicted if isinstance(target, str) and target == "prediction" else _resolve_target(target, shape)
    if not region.any():
        raise MSToolkitInputError("the model predicts no lesion here, so 'prediction' is empty; pass a region as target.")
    reference = predicted if truth is None else _check_mask(truth, shape, "truth")
    attribution = input_attribution(model, x, method=method, target=region, roi_mask=roi_mask, **options)
    inside = np.abs(attribution[:, region]).sum(axis=1)
    shares = inside / max(float(inside.sum()), 1e-12)
    rows = []
    baseline_dice = _dice(predicted, reference)
    for c, name in enumerate(sequences):
        ablated = x.clone()
        ablated[c] = 0.0
        without = np.zeros(shape, dtype=bool)
        without[box] = _tiled_logits(model, ablated, box, patch_size, margin) > 0
        dice_without = _dice(without, reference)
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
        with _evaluation(model), torch.no_grad():
            model(torch.zeros(1, in_channels, 32, 32, 32, device=_device(model)))
    finally:
        for hook in hooks:
            hook.remove()
    groups: list[list[nn.Module]] = []
    for module in order:
        if isinstance(module, _CONV_TYPES) or not groups:
            groups.append([module])
        else:
            groups[-1].append(module)
    groups.reverse()
    if steps is not None and 0 < steps < len(groups):
        merged = np.array_split(np.arange(len(groups)), steps)
        groups = [[m for i in chunk for m in groups[i]] for chunk in merged]
    # Label each step by its convolution closest to the input: the cascade has reached it.
    return [(names[[m for m in group if isinstance(m, _CONV_TYPES)][-1] if any(isinstance(m, _CONV_TYPES) for m in group)
             else group[0]], group) for group in groups]


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0  # a constant map (e.g. all zero after the ReLU) has no ranking to agree with
    return float(spearmanr(a, b).statistic)


def randomization_test(
    model: nn.Module,
    inputs: np.ndarray | torch.Tensor,
    method: str = "grad_cam",
    target: str | np.ndarray = "prediction",
    *,
    layer: str | None = None,
    steps: int | None = None,
    roi_mask: np.ndarray | None = None,
    max_voxels: int = 300_000,
    seed: int = 0,
    **options: Any,
):
    """Cascading model-parameter randomisation test (Adebayo et al. 2018).

    Re-initialises the layers of a *copy* of the model one step at a time, from the output layer
    back to the input, recomputes the map after each step, and compares it with the original map
    by Spearman rank correlation (inside ``roi_mask`` when given; at most ``max_voxels`` voxels,
    sampled with ``seed``). A faithful explanation decorrelates quickly: a map that survives
    random weights shows the image (edges), not the model.

    Parameters
    ----------
    method : "grad_cam" or one of :data:`ATTRIBUTION_METHODS`
    target : "prediction" or binary array
        "prediction" is fixed to the *original* model's prediction, so every step explains the
        same region.
    steps : int, optional
        Merge the layers into this many steps (faster); default one step per convolution.
    options
        Passed to :func:`grad_cam` or :func:`input_attribution`.

    Returns
    -------
    pandas.DataFrame
        One row per step: ``step``, ``randomised_to`` (the layer reached), ``spearman`` (signed map,
        summed over sequences; for saliency the signed gradient) and ``spearman_abs`` (absolute map,
        for saliency the usual |gradient| map).

    Introduced in notebook 05.
    """
    import pandas as pd
    from .models import model_in_channels

    if method != "grad_cam" and method not in ATTRIBUTION_METHODS:
        raise MSToolkitInputError(f"Unknown method {method!r}; allowed: grad_cam, {', '.join(ATTRIBUTION_METHODS)}.")
    x = check_model_inputs(inputs)
    shape = tuple(x.shape[1:])
    if isinstance(target, str) and target == "prediction":
        box = _bounds(roi_mask, shape, options.get("margin", 8))
        target = np.zeros(shape, dtype=bool)
        target[box] = _tiled_logits(model, x, box, options.get("patch_size", (96, 96, 96)), options.get("margin", 8)) > 0
    region = _resolve_target(target, shape)
    layer_name = _find_layer(model, layer)[0] if method == "grad_cam" else None

    def explain(net: nn.Module) -> np.ndarray:
        if method == "grad_cam":
            return grad_cam(net, x, target=region, layer=layer_name, roi_mask=roi_mask, **options)
        return input_attribution(net, x, method=method, target=region, roi_mask=roi_mask,
                                 signed=method == "saliency", **options)

    candidates = np.flatnonzero(np.ones(shape, bool) if roi_mask is None else _check_mask(roi_mask, shape, "roi_mask"))
    rng = np.random.default_rng(seed)
    voxels = rng.choice(candidates, size=min(max_voxels, candidates.size), replace=False)

    def flat(found: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        values = found.reshape((-1, int(np.prod(shape))))[:, voxels]  # (sequences or 1, voxels)
        return values.sum(0), np.abs(values).sum(0)

    original = flat(explain(model))
    rows = [{"step": 0, "randomised_to": "none", "spearman": 1.0, "spearman_abs": 1.0}]
    randomised = copy.deepcopy(model)
    layers = _randomisation_steps(randomised, model_in_channels(model), steps)
    from tqdm.auto import tqdm

    with torch.random.fork_rng(devices=[]):
        for step, (name, group) in enumerate(tqdm(layers, desc="randomising layers", leave=False), start=1):
            torch.manual_seed(seed + step)
            for module in group:
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
                else:
                    for p in module.parameters(recurse=False):
                        torch.nn.init.normal_(p.data, std=float(p.data.std()) or 0.1)
            now = flat(explain(randomised))
            rows.append({"step": step, "randomised_to": name, "spearman": _spearman(original[0], now[0]),
                         "spearman_abs": _spearman(original[1], now[1])})
    return pd.DataFrame(rows)


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
    brain = _check_mask(brain_mask, heatmap.shape, "brain_mask")
    region = _check_mask(region, heatmap.shape, "region") & brain
    if not region.any():
        raise MSToolkitInputError("'region' has no voxel inside the brain mask.")
    positive = np.clip(heatmap, 0, None)
    total = positive[brain].sum()
    if total == 0:
        return 0.0
    return float((positive[region].sum() / total) / (region.sum() / brain.sum()))


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
    """Boolean region of lesion ``lesion_id`` of a mask, numbered as in ``mstoolkit.metric_tables.lesion_table``.

    Introduced in notebook 05.
    """
    from .metrics import label_lesions

    labels, n = label_lesions(mask, spacing=(1.0, 1.0, 1.0), connectivity=connectivity)
    if not 1 <= int(lesion_id) <= n:
        raise MSToolkitInputError(f"'lesion_id' must be between 1 and {n} (the mask's lesions), got {lesion_id!r}.")
    return labels == int(lesion_id)


def example_targets(pred: np.ndarray, truth: np.ndarray, *, connectivity: int = 26) -> dict[str, np.ndarray]:
    """Regions worth explaining: the whole prediction and the largest true-positive lesion,
    false-positive lesion and missed (truth) lesion, where they exist (any-overlap matching).

    Introduced in notebook 05.
    """
    from .metrics import label_lesions

    pred, truth = np.asarray(pred) > 0, np.asarray(truth) > 0
    targets = {"prediction": pred} if pred.any() else {}
    for name, mask, other in (("true positive", pred, truth), ("false positive", pred, truth), ("missed", truth, pred)):
        labels, n = label_lesions(mask, spacing=(1.0, 1.0, 1.0), connectivity=connectivity)
        touching = set(np.unique(labels[other & (labels > 0)]))
        wanted = [k for k in range(1, n + 1) if (k in touching) == (name == "true positive")]
        if wanted:
            sizes = np.bincount(labels.ravel(), minlength=n + 1)
            targets[name] = labels == max(wanted, key=lambda k: sizes[k])
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
    from .plots import _AXIS, auto_window, take_slice

    shown = normalize_for_display(heatmap)
    axis = _AXIS[plane]
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
