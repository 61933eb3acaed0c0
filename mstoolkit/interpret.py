"""Look inside a segmentation network: Grad-CAM for segmentation and input attributions.

Segmentation Grad-CAM (Vinogradova et al., AAAI 2020) explains a *region*: the
target is the sum of the lesion logits over a set of voxels (the whole
prediction, one lesion, a false positive, or a lesion the model missed). The
gradient of that sum, averaged over a layer's positions, weighs the layer's
feature maps; their weighted sum (ReLU) is the map. Input attributions
(Integrated Gradients, saliency, gradient × input, occlusion; computed by
captum) say which voxels *of which sequence* matter. Whether a map can be
trusted (randomisation test, edge detector, pointing game), how much each
sequence matters, and how to show a map: :mod:`mstoolkit.interpret_checks`.

Volumes are processed in tiles (a core plus ``margin`` voxels of context) so a
1 mm brain fits in memory; a tile's core voxels come from that tile only, so
the target and its gradients are exactly those of the tiled network. Maps are
returned raw (not normalised); :func:`mstoolkit.interpret_checks.normalize_for_display`
is for pictures.

Introduced in notebook 05 (Grad-CAM and interpretability).
"""

from __future__ import annotations

import itertools
import math
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .inference import check_model_inputs
from .io import MSToolkitInputError, bounding_box

__all__ = ["ATTRIBUTION_METHODS", "candidate_layers", "grad_cam", "input_attribution"]

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
        raise MSToolkitInputError("'target' is an empty region; nothing to explain. Pick a lesion with interpret_checks.lesion_region().")
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
    patch_size: tuple[int, int, int] = (96, 96, 96),
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
        model calls lesion, logit > 0), or any mask — one lesion
        (:func:`mstoolkit.interpret_checks.lesion_region`), a false positive, or a missed
        lesion's ground-truth region.
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
    x = check_model_inputs(inputs)
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
    x = check_model_inputs(inputs)
    shape = tuple(x.shape[1:])
    region = _resolve_target(target, shape)
    if method == "occlusion":
        if region is None:
            raise MSToolkitInputError("occlusion needs a small target region (e.g. interpret_checks.lesion_region(mask, 1)), not 'prediction'.")
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
