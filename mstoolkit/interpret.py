"""Look inside a segmentation network: Grad-CAM, input attributions and their sanity checks.

Segmentation Grad-CAM (Vinogradova et al., AAAI 2020) explains a *region*: the
target is the sum of the lesion logits over a set of voxels (the whole
prediction, one lesion, a false positive, or a lesion the model missed). The
gradient of that sum, averaged over a layer's positions, weighs the layer's
feature maps; their weighted sum (ReLU) is the map. Input attributions
(Integrated Gradients, saliency, gradient × input, occlusion; computed by
captum) say which voxels *of which sequence* matter. The sanity check of
Adebayo et al. (NeurIPS 2018) randomises the weights from the output layer
back: a map that barely changes does not explain the model.

Volumes are processed in tiles (a core plus ``margin`` voxels of context) so a
1 mm brain fits in memory; a tile's core voxels come from that tile only, so
the target and its gradients are exactly those of the tiled network. Maps are
returned raw (not normalised); :func:`normalize_for_display` is for pictures.

Introduced in notebook 05 (Grad-CAM and interpretability).
"""

from __future__ import annotations

import copy
import itertools
import math
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .io import MSToolkitInputError, bounding_box

__all__ = ["ATTRIBUTION_METHODS", "candidate_layers", "grad_cam", "input_attribution", "sequence_importance",
           "randomization_test", "plot_randomization", "pointing_game", "edge_map", "lesion_region",
           "example_targets", "normalize_for_display", "plot_map"]

#: Methods of :func:`input_attribution`.
ATTRIBUTION_METHODS = ("integrated_gradients", "saliency", "gradient_x_input", "occlusion")
_CONV_TYPES = (nn.Conv3d, nn.ConvTranspose3d)


# --------------------------------------------------------------------------- plumbing


@contextmanager
def _evaluation(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode (no dropout, frozen normalisation) for the duration; restore each module's mode after."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for module, mode in modes.items():
            module.train(mode)


def _lesion_logit(output: torch.Tensor) -> torch.Tensor:
    """(batch, x, y, z) lesion log-odds from a (batch, 1 or 2, x, y, z) network output."""
    if output.ndim != 5 or output.shape[1] not in (1, 2):
        raise MSToolkitInputError(f"the model must output (batch, 1 or 2, x, y, z) logits, got shape {tuple(output.shape)}.")
    return output[:, 0] if output.shape[1] == 1 else output[:, 1] - output[:, 0]


def _check_inputs(inputs: np.ndarray | torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(inputs, dtype=np.float32) if not torch.is_tensor(inputs) else inputs).float()
    if x.ndim != 4:
        raise MSToolkitInputError(
            f"'inputs' must be (channels, x, y, z), got shape {tuple(x.shape)}. "
            "Use mstoolkit.inference.prepare_inputs(case, sequences)."
        )
    if not torch.isfinite(x).all():
        raise MSToolkitInputError("'inputs' contains NaN or infinite values; normalise the images first.")
    return x.detach()


def _check_mask(mask: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.shape != shape:
        raise MSToolkitInputError(f"'{name}' has shape {mask.shape} but the images are {shape}; they must be on one grid.")
    return mask > 0


def _find_layer(model: nn.Module, layer: str | nn.Module | None) -> tuple[str, nn.Module]:
    modules = dict(model.named_modules())
    if layer is None:
        layer = candidate_layers(model)["decoder"]
    if isinstance(layer, nn.Module):
        name = next((n for n, m in modules.items() if m is layer), None)
        if name is None:
            raise MSToolkitInputError("'layer' is not a module of this model; pass its name from candidate_layers(model).")
        return name, layer
    if layer not in modules:
        convs = [n for n, m in modules.items() if isinstance(m, _CONV_TYPES)]
        raise MSToolkitInputError(f"No layer named {layer!r} in the model; convolution layers: {', '.join(convs[:8])} …")
    return layer, modules[layer]


def _conv_trace(model: nn.Module, in_channels: int, size: int = 32) -> list[tuple[str, nn.Module, tuple[int, ...]]]:
    """Convolutions in the order they run, with their output's spatial size on a ``size``³ probe."""
    names = {m: n for n, m in model.named_modules()}
    trace: list[tuple[str, nn.Module, tuple[int, ...]]] = []
    hooks = [m.register_forward_hook(lambda m, i, o: trace.append((names[m], m, tuple(o.shape[2:]))))
             for m in model.modules() if isinstance(m, _CONV_TYPES)]
    try:
        with _evaluation(model), torch.no_grad():
            model(torch.zeros(1, in_channels, size, size, size, device=_device(model)))
    finally:
        for hook in hooks:
            hook.remove()
    return trace


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def candidate_layers(model: nn.Module, *, in_channels: int | None = None) -> dict[str, str]:
    """Name three convolution layers worth explaining: encoder, bottleneck and last decoder.

    * ``"encoder"`` — the last convolution of the first (finest) encoder level: edges and textures.
    * ``"bottleneck"`` — the last convolution at the coarsest resolution: context, little detail.
    * ``"decoder"`` — the last convolution with more channels than the output, near full
      resolution: semantic *and* sharp, the default of :func:`grad_cam`.

    Introduced in notebook 05.
    """
    from .models import model_in_channels

    trace = _conv_trace(model, in_channels or model_in_channels(model))
    if not trace:
        raise MSToolkitInputError("the model has no 3D convolution layers; Grad-CAM needs one.")
    volumes = [math.prod(size) for _, _, size in trace]
    first_coarsest = volumes.index(min(volumes))
    bottleneck = first_coarsest
    while bottleneck + 1 < len(trace) and volumes[bottleneck + 1] == volumes[first_coarsest]:
        bottleneck += 1
    encoder = next((i for i in range(first_coarsest) if volumes[i + 1] < volumes[i]), 0)
    out_channels = trace[-1][1].out_channels
    decoder = max((i for i, (_, m, _) in enumerate(trace) if i > bottleneck and m.out_channels > out_channels), default=bottleneck)
    return {"encoder": trace[encoder][0], "bottleneck": trace[bottleneck][0], "decoder": trace[decoder][0]}


def _axis_tiles(n: int, patch: int, margin: int, multiple: int) -> tuple[int, int, list[tuple[int, int]]]:
    """Split one axis: (pad before, core-grid length, [(patch start, core length)]) in padded coordinates."""
    if n <= patch:
        grid = -(-n // multiple) * multiple
        return 0, grid, [(0, grid)]
    count = -(-n // (patch - 2 * margin))
    core = -(-(-(-n // count)) // multiple) * multiple
    return margin, count * core, [(k * core, core) for k in range(count)]


def _size_multiple(model: nn.Module, in_channels: int) -> int:
    """How much the network down-samples at most (8 for three poolings): tiles must be multiples of it."""
    coarsest = min(min(size) for _, _, size in _conv_trace(model, in_channels, size=32))
    return max(1, 32 // max(1, coarsest))


def _tiles(shape: tuple[int, ...], patch_size: tuple[int, int, int], margin: int, multiple: int):
    """Tiles of a volume: padding, core-grid shape, and per tile the patch and core slices.

    Each tile is ``(patch slices in the padded volume, core slices inside the patch, core slices
    in the core grid)``. Cores partition the core grid; patches add ``margin`` voxels of context.
    """
    if margin % multiple or any(p % multiple or p <= 2 * margin for p in patch_size):
        raise MSToolkitInputError(
            f"'patch_size' {tuple(patch_size)} and 'margin' {margin} must be multiples of {multiple} (how much "
            "this network down-samples), with each patch longer than twice the margin."
        )
    axes = [_axis_tiles(n, p, margin, multiple) for n, p in zip(shape, patch_size)]
    pads = [(before, grid + before - n) for n, (before, grid, _) in zip(shape, axes)]  # context margin after too
    tiles = []
    for combo in itertools.product(*[a[2] for a in axes]):
        patch, inner, out = [], [], []
        for (before, _, _), (start, core) in zip(axes, combo):
            patch.append(slice(start, start + core + 2 * before))
            inner.append(slice(before, before + core))
            out.append(slice(start, start + core))
        tiles.append((tuple(patch), tuple(inner), tuple(out)))
    return pads, tuple(a[1] for a in axes), tiles


def _bounds(mask: np.ndarray | None, shape: tuple[int, ...], margin: int) -> tuple[slice, ...]:
    """Bounding box of a mask plus ``margin`` voxels (the whole volume when no mask)."""
    if mask is None:
        return tuple(slice(0, n) for n in shape)
    box = bounding_box(_check_mask(mask, shape, "roi_mask"), margin=margin)
    if box is None:
        raise MSToolkitInputError("'roi_mask' is empty; pass the brain mask or a region holding the target.")
    return box


def _resolve_target(target: Any, shape: tuple[int, ...]) -> np.ndarray | None:
    """None for "prediction" (decided per tile from the logits), else a boolean region."""
    if isinstance(target, str):
        if target != "prediction":
            raise MSToolkitInputError(f"'target' must be 'prediction' or a binary mask array, got {target!r}.")
        return None
    region = _check_mask(target, shape, "target")
    if not region.any():
        raise MSToolkitInputError("'target' is an empty region; nothing to explain. Pick a lesion with lesion_region().")
    return region


def _padded(x: torch.Tensor, pads: list[tuple[int, int]]) -> torch.Tensor:
    flat = [p for pair in reversed(pads) for p in pair]
    return F.pad(x, flat) if any(flat) else x


def _on_grid(region: np.ndarray | None, box: tuple[slice, ...], crop_shape, grid_shape) -> np.ndarray:
    """The target region on the tiles' core grid; for "prediction", every voxel inside the volume."""
    grid = np.zeros(grid_shape, dtype=bool)
    grid[tuple(slice(0, n) for n in crop_shape)] = True if region is None else region[box]
    return grid


def _tile_weight(logits_core: torch.Tensor, core: np.ndarray, by_prediction: bool) -> torch.Tensor:
    """Which core voxels' logits enter the target (the predicted mask is held fixed, as a constant)."""
    core = torch.from_numpy(core).to(logits_core.device)
    return ((logits_core.detach() > 0) & core if by_prediction else core).float()


# --------------------------------------------------------------------------- Grad-CAM


def grad_cam(
    model: nn.Module,
    inputs: np.ndarray | torch.Tensor,
    *,
    target: str | np.ndarray = "prediction",
    layer: str | nn.Module | None = None,
    relu: bool = True,
    roi_mask: np.ndarray | None = None,
    patch_size: tuple[int, int, int] = (128, 128, 128),
    margin: int = 8,
) -> np.ndarray:
    """Segmentation Grad-CAM of a region, upsampled to the input grid.

    Parameters
    ----------
    model : torch.nn.Module
        Maps (batch, channels, x, y, z) to lesion logits; run in eval mode here.
    inputs : array (channels, x, y, z)
        Normalised images, e.g. ``mstoolkit.inference.prepare_inputs(case, sequences)``.
    target : "prediction" or binary array (x, y, z), keyword-only
        The region whose summed lesion logits are explained: ``"prediction"`` (every voxel the
        model calls lesion, logit > 0), or any mask — one lesion (:func:`lesion_region`), a
        false positive, or a missed lesion's ground-truth region.
    layer : str or module, optional
        A convolution layer (name from ``model.named_modules()``); default the last decoder layer
        of :func:`candidate_layers`.
    relu : bool
        Keep only evidence *for* the target (Grad-CAM's ReLU); False returns the signed map.
    roi_mask : binary array, optional
        Compute only inside this mask's bounding box (plus ``margin``), e.g. the brain mask:
        faster; the map is 0 outside the mask.
    patch_size, margin : keyword-only
        Largest tile and its context in voxels (multiples of the network's down-sampling, 8 for the
        tiny U-Net); smaller tiles use less memory.

    Returns
    -------
    numpy.ndarray, float32, shape (x, y, z)
        The raw map (not normalised).

    Introduced in notebook 05.
    """
    x = _check_inputs(inputs)
    shape = tuple(x.shape[1:])
    region = _resolve_target(target, shape)
    name, module = _find_layer(model, layer)
    box = _bounds(roi_mask, shape, margin)
    crop = x[(slice(None),) + box]
    pads, grid_shape, tiles = _tiles(tuple(crop.shape[1:]), patch_size, margin, _size_multiple(model, x.shape[0]))
    grid = _on_grid(region, box, crop.shape[1:], grid_shape)
    volume = _padded(crop[None], pads).to(_device(model))
    captured: list[torch.Tensor] = []
    hook = module.register_forward_hook(lambda m, i, o: captured.append(o))
    weights_sum, stride, features = None, None, None
    try:
        with _evaluation(model):
            for patch, inner, out in tiles:
                needs_grad = bool(grid[out].any())  # a tile without target voxels adds no gradient
                captured.clear()
                with torch.set_grad_enabled(needs_grad):
                    logits = _lesion_logit(model(volume[(slice(None), slice(None)) + patch]))[0]
                activation = captured[-1]
                if stride is None:
                    stride = _layer_stride(name, volume[(0, 0) + patch].shape, activation.shape[2:])
                    features = torch.zeros((activation.shape[1],) + tuple(n // stride for n in grid_shape))
                    weights_sum = torch.zeros(activation.shape[1], dtype=torch.float64)
                if needs_grad:
                    weight = _tile_weight(logits[inner], grid[out], region is None)
                    if weight.any():
                        score = (logits[inner] * weight).sum()
                        (gradient,) = torch.autograd.grad(score, activation)
                        weights_sum += gradient[0].sum(dim=(1, 2, 3)).double().cpu()
                layer_inner = tuple(slice(s.start // stride, s.stop // stride) for s in inner)
                layer_out = tuple(slice(s.start // stride, s.stop // stride) for s in out)
                features[(slice(None),) + layer_out] = activation[(0, slice(None)) + layer_inner].detach().cpu()
                del logits, activation
    finally:
        hook.remove()
    alpha = (weights_sum / math.prod(features.shape[1:])).float()
    cam = torch.einsum("c,cxyz->xyz", alpha, features)
    cam = torch.relu(cam) if relu else cam
    cam = F.interpolate(cam[None, None], size=grid_shape, mode="trilinear", align_corners=False)[0, 0]
    result = np.zeros(shape, dtype=np.float32)
    result[box] = cam[tuple(slice(0, n) for n in crop.shape[1:])].numpy()
    if roi_mask is not None:
        result[~_check_mask(roi_mask, shape, "roi_mask")] = 0.0  # e.g. nothing to explain outside the brain
    return result


def _layer_stride(name: str, patch_shape: tuple[int, ...], layer_shape: tuple[int, ...]) -> int:
    ratios = {p / s for p, s in zip(patch_shape, layer_shape)}
    stride = ratios.pop() if len(ratios) == 1 else 0.0
    if stride < 1 or stride != int(stride):
        raise MSToolkitInputError(
            f"layer {name!r} turns a {tuple(patch_shape)} patch into {tuple(layer_shape)}: not a plain down-sampling. "
            "Pick a layer from candidate_layers(model)."
        )
    return int(stride)


# --------------------------------------------------------------------------- input attributions


def _attribute_patch(method: str, forward: Callable, patch: torch.Tensor, *, n_steps: int, internal_batch_size: int,
                     window: int) -> torch.Tensor:
    from captum import attr

    if method == "integrated_gradients":
        return attr.IntegratedGradients(forward).attribute(patch, baselines=0.0, n_steps=n_steps,
                                                           internal_batch_size=internal_batch_size)
    if method == "saliency":
        return attr.Saliency(forward).attribute(patch, abs=False)  # abs after summing tiles
    if method == "gradient_x_input":
        return attr.InputXGradient(forward).attribute(patch)
    shapes = (1,) + (window,) * 3  # one sequence at a time
    return attr.Occlusion(forward).attribute(patch, sliding_window_shapes=shapes, strides=shapes,
                                             baselines=0.0, perturbations_per_eval=internal_batch_size)


def input_attribution(
    model: nn.Module,
    inputs: np.ndarray | torch.Tensor,
    *,
    method: str = "integrated_gradients",
    target: str | np.ndarray = "prediction",
    roi_mask: np.ndarray | None = None,
    n_steps: int = 16,
    internal_batch_size: int = 2,
    window: int = 8,
    patch_size: tuple[int, int, int] = (96, 96, 96),
    margin: int = 8,
    signed: bool = False,
) -> np.ndarray:
    """Per-voxel, per-sequence attribution of a region's summed lesion logits (captum).

    Parameters
    ----------
    method : {"integrated_gradients", "saliency", "gradient_x_input", "occlusion"}, keyword-only
        Integrated Gradients (baseline 0 = the normalised mean intensity, ``n_steps`` steps),
        saliency (absolute gradient), gradient × input, or occlusion (each sequence hidden in
        non-overlapping ``window``³ cubes: one network pass per cube, so only for a target whose box
        plus ``margin`` fits in one patch).
    target : "prediction" or binary array (x, y, z)
        As in :func:`grad_cam`.
    roi_mask : binary array, optional
        Compute only inside this mask's bounding box (plus ``margin``).
    n_steps, internal_batch_size : int
        Integrated-Gradients steps, and how many interpolated patches go through the network at
        once (memory grows with it). Peak memory stays under 2 GB for a 1 mm brain with the defaults.
    signed : bool
        Saliency only: return the signed gradient instead of its absolute value.

    Returns
    -------
    numpy.ndarray, float32, shape (channels, x, y, z)
        Signed attributions (saliency: absolute gradients), in input-channel order.

    Introduced in notebook 05.
    """
    if method not in ATTRIBUTION_METHODS:
        raise MSToolkitInputError(f"Unknown method {method!r}; allowed: {', '.join(ATTRIBUTION_METHODS)}.")
    x = _check_inputs(inputs)
    shape = tuple(x.shape[1:])
    region = _resolve_target(target, shape)
    if method == "occlusion":
        if region is None:
            raise MSToolkitInputError("occlusion needs a small target region (e.g. lesion_region(mask, 1)), not 'prediction'.")
        margin = max(margin, window)  # context for the network, and room for whole cubes
        roi_mask, patch_size = region, tuple(max(p, -(-(s.stop - s.start) // 64) * 64) for p, s in
                                            zip(patch_size, _bounds(region, shape, margin)))
    box = _bounds(roi_mask, shape, margin)
    crop = x[(slice(None),) + box]
    pads, grid_shape, tiles = _tiles(tuple(crop.shape[1:]), patch_size, margin, _size_multiple(model, x.shape[0]))
    volume = _padded(crop[None], pads).to(_device(model))
    total = torch.zeros_like(volume[0], device="cpu")
    grid = _on_grid(region, box, crop.shape[1:], grid_shape)
    with _evaluation(model):
        for patch, inner, out in tiles:
            if not grid[out].any():
                continue  # this tile's core holds none of the target: zero contribution
            piece = volume[(slice(None), slice(None)) + patch]
            with torch.no_grad():
                weight = _tile_weight(_lesion_logit(model(piece))[0][inner], grid[out], region is None)
            if not weight.any():
                continue
            full_weight = torch.zeros(piece.shape[2:], device=piece.device)
            full_weight[inner] = weight

            def forward(batch: torch.Tensor, full_weight: torch.Tensor = full_weight) -> torch.Tensor:
                return (_lesion_logit(model(batch)) * full_weight).sum(dim=(1, 2, 3))

            found = _attribute_patch(method, forward, piece.clone().requires_grad_(True), n_steps=n_steps,
                                     internal_batch_size=internal_batch_size, window=window)
            total[(slice(None),) + patch] += found[0].detach().cpu()
    lo = [before for before, _ in pads]
    total = total[(slice(None),) + tuple(slice(b, b + n) for b, n in zip(lo, crop.shape[1:]))]
    result = np.zeros(tuple(x.shape), dtype=np.float32)
    result[(slice(None),) + box] = total.abs().numpy() if method == "saliency" and not signed else total.numpy()
    if roi_mask is not None and method != "occlusion":
        result[:, ~_check_mask(roi_mask, shape, "roi_mask")] = 0.0
    return result


def _tiled_logits(model: nn.Module, x: torch.Tensor, box: tuple[slice, ...], patch_size: tuple[int, int, int],
                  margin: int) -> np.ndarray:
    """Lesion logits inside ``box`` (no gradients), with the same tiling as the maps."""
    crop = x[(slice(None),) + box]
    pads, grid_shape, tiles = _tiles(tuple(crop.shape[1:]), patch_size, margin, _size_multiple(model, x.shape[0]))
    volume = _padded(crop[None], pads).to(_device(model))
    logits = torch.zeros(grid_shape)
    with _evaluation(model), torch.no_grad():
        for patch, inner, out in tiles:
            logits[out] = _lesion_logit(model(volume[(slice(None), slice(None)) + patch]))[0][inner].cpu()
    return logits[tuple(slice(0, n) for n in crop.shape[1:])].numpy()


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

    x = _check_inputs(inputs)
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
    x = _check_inputs(inputs)
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
    for (label, table), colour in zip(tables.items(), itertools.cycle(_PALETTE)):
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

# Okabe–Ito colours (colour-blind safe) for lines.
_PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9")


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
    """Boolean region of lesion ``lesion_id`` of a mask, numbered as in ``mstoolkit.metrics.lesion_table``.

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
