"""Look inside a segmentation network: layer maps (HiResCAM, Grad-CAM) and input attributions.

A segmentation network is explained for a *region* (Vinogradova et al., AAAI 2020): the target is
the sum of the lesion logits over a set of voxels (the whole prediction, one lesion, a false
positive, or a lesion the model missed). Two layer maps use the gradient of that target with
respect to a layer's feature maps ``A_k``:

* :func:`hires_cam` (Draelos & Carin 2020) multiplies gradient and activation voxel by voxel and
  sums over channels, ``Σ_k ∂y/∂A_k ⊙ A_k``: nothing is averaged away. The map to use.
* :func:`grad_cam` (Selvaraju et al. 2017) first averages each channel's gradient over space into
  one weight ``α_k``. In a network where a normalisation layer (instance, batch or group norm)
  follows every convolution, as in :class:`mstoolkit.segmentation.models.TinyUNet`, those averages are zero up
  to tile borders, so the map is empty (notebook 05 shows why). Kept to teach that trap.

Input attributions (Integrated Gradients, saliency, gradient × input, occlusion; computed by
captum) say which voxels *of which sequence* matter. Whether a map can be trusted (randomisation
tests, tiling, target specificity, edge detector, pointing game), how much each sequence matters,
and how to show a map: :mod:`mstoolkit.explain.interpret_checks`.

Volumes are processed in tiles (a core plus ``margin`` voxels of context) so a 1 mm brain fits in
memory; a tile's core voxels come from that tile only, so the target and its gradients are exactly
those of the tiled network. (Hence tiles of their own, not the Gaussian-blended windows of
:func:`mstoolkit.segmentation.inference.sliding_window_logits`: blending mixes several windows in each
voxel, so no one forward pass owns a voxel's gradient.) Maps are returned raw (not normalised);
:func:`mstoolkit.explain.interpret_checks.normalize_for_display` is for pictures.

Introduced in notebook 05 (Grad-CAM and interpretability).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from mstoolkit.data.io import MSToolkitInputError, bounding_box
from mstoolkit.segmentation.inference import check_model_inputs

__all__ = ["ATTRIBUTION_METHODS", "candidate_layers", "grad_cam", "grad_cam_from_gradients", "hires_cam",
           "hires_cam_from_gradients", "input_attribution"]

#: Methods of :func:`input_attribution`.
ATTRIBUTION_METHODS = ("integrated_gradients", "saliency", "gradient_x_input", "occlusion")
CONV_TYPES = (nn.Conv3d, nn.ConvTranspose3d)
_ACTIVATION_TYPES = (nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.GELU, nn.SiLU)


# --------------------------------------------------------------------------- plumbing


@contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode (no dropout, frozen normalisation) for the duration; restore each module's mode after."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for module, mode in modes.items():
            module.train(mode)


def lesion_logit(output: torch.Tensor) -> torch.Tensor:
    """(batch, x, y, z) lesion log-odds from a (batch, 1 or 2, x, y, z) network output."""
    if output.ndim != 5 or output.shape[1] not in (1, 2):
        raise MSToolkitInputError(f"the model must output (batch, 1 or 2, x, y, z) logits, got shape {tuple(output.shape)}.")
    return output[:, 0] if output.shape[1] == 1 else output[:, 1] - output[:, 0]


def check_region(mask: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.shape != shape:
        raise MSToolkitInputError(f"'{name}' has shape {mask.shape} but the images are {shape}; they must be on one grid.")
    return mask > 0


def find_layer(model: nn.Module, layer: str | nn.Module | None) -> tuple[str, nn.Module]:
    modules = dict(model.named_modules())
    if layer is None:
        layer = candidate_layers(model)["decoder"]
    if isinstance(layer, nn.Module):
        name = next((n for n, m in modules.items() if m is layer), None)
        if name is None:
            raise MSToolkitInputError("'layer' is not a module of this model; pass its name from candidate_layers(model).")
        return name, layer
    if layer not in modules:
        found = [n for n, m in modules.items() if isinstance(m, CONV_TYPES + _ACTIVATION_TYPES)]
        raise MSToolkitInputError(f"No layer named {layer!r} in the model; layers: {', '.join(found[:8])} …")
    return layer, modules[layer]


def _trace(model: nn.Module, in_channels: int, size: int = 32) -> list[tuple[str, nn.Module, tuple[int, ...]]]:
    """Convolutions and activations in the order they run, with their output's spatial size on a ``size``³ probe."""
    names = {m: n for n, m in model.named_modules()}
    trace: list[tuple[str, nn.Module, tuple[int, ...]]] = []
    hooks = [m.register_forward_hook(lambda m, i, o: trace.append((names[m], m, tuple(o.shape[2:]))))
             for m in model.modules() if isinstance(m, CONV_TYPES + _ACTIVATION_TYPES)]
    try:
        with evaluation_mode(model), torch.no_grad():
            model(torch.zeros(1, in_channels, size, size, size, device=model_device(model)))
    finally:
        for hook in hooks:
            hook.remove()
    return trace


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def candidate_layers(model: nn.Module, *, in_channels: int | None = None) -> dict[str, str]:
    """Name the layers worth explaining: encoder, bottleneck, decoder, and the head's input.

    The layers are block outputs *after* their activation (the convolutions when the model has no
    activation modules, e.g. one that calls ``torch.relu``):

    * ``"encoder"`` — the last one of the first (finest) encoder level: edges and textures.
    * ``"bottleneck"`` — the last one at the coarsest resolution: context, little detail.
    * ``"decoder"`` — the output of the last decoder level below full resolution (for the tiny
      U-Net, half resolution): it has seen every coarser level and the skip connections, and two
      3×3×3 convolutions still lie between it and the logits, so its map holds context beyond the
      target. The default of :func:`hires_cam` and :func:`grad_cam`.
    * ``"pre_head"`` — the input of the final 1×1 convolution. Every map there is a rescaled logit
      map: its gradient is the head's weights on the target voxels and zero elsewhere, so
      :func:`hires_cam` returns the target's own logits and :func:`grad_cam`'s channel weights are
      the head's weights, whatever the target. Listed to show that trap, not to be explained.

    Introduced in notebook 05.
    """
    from mstoolkit.segmentation.models import model_in_channels

    trace = _trace(model, in_channels or model_in_channels(model))
    if not any(isinstance(m, CONV_TYPES) for _, m, _ in trace):
        raise MSToolkitInputError("the model has no 3D convolution layers; a layer map needs one.")
    activations = any(isinstance(m, _ACTIVATION_TYPES) for _, m, _ in trace)
    kind = _ACTIVATION_TYPES if activations else CONV_TYPES
    steps = [(i, name, math.prod(size)) for i, (name, m, size) in enumerate(trace) if isinstance(m, kind)]
    if not activations:
        steps = steps[:-1] or steps  # the head's own output is the logits, nothing to explain
    volumes = [v for _, _, v in steps]
    first_coarsest = volumes.index(min(volumes))
    bottleneck = first_coarsest
    while bottleneck + 1 < len(steps) and volumes[bottleneck + 1] == volumes[first_coarsest]:
        bottleneck += 1
    encoder = next((k for k in range(first_coarsest) if volumes[k + 1] < volumes[k]), 0)
    # decoder: the last block output below the output's resolution (it has two 3x3x3 convolutions and
    # their normalisations left before the logits); without such a level, the last step a 3x3x3
    # convolution still follows (more than the linear 1x1 head between it and the logits)
    spatial = [i for i, (_, m, _) in enumerate(trace) if isinstance(m, CONV_TYPES) and max(m.kernel_size) > 1]
    later = list(range(bottleneck + 1, len(steps)))
    coarser = [k for k in later if volumes[k] < volumes[-1]]
    followed = [k for k in later if not activations or any(j > steps[k][0] for j in spatial)]
    decoder = (coarser or followed or [bottleneck])[-1]
    return {"encoder": steps[encoder][1], "bottleneck": steps[bottleneck][1], "decoder": steps[decoder][1],
            "pre_head": steps[-1][1]}


# --------------------------------------------------------------------------- tiles


def _ceil_div(a: int, b: int) -> int:
    """``a / b`` rounded up, in integers."""
    return -(-a // b)


def _axis_tiles(n: int, patch: int, margin: int, multiple: int) -> tuple[int, int, list[tuple[int, int]]]:
    """Split one axis: (pad before, core-grid length, [(patch start, core length)]) in padded coordinates."""
    if n <= patch:
        grid = _ceil_div(n, multiple) * multiple
        return 0, grid, [(0, grid)]
    count = _ceil_div(n, patch - 2 * margin)
    core = _ceil_div(_ceil_div(n, count), multiple) * multiple
    return margin, count * core, [(k * core, core) for k in range(count)]


def _size_multiple(model: nn.Module, in_channels: int) -> int:
    """How much the network down-samples at most (8 for three poolings): tiles must be multiples of it."""
    coarsest = min(min(size) for _, _, size in _trace(model, in_channels, size=32))
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


def explained_box(mask: np.ndarray | None, shape: tuple[int, ...], margin: int) -> tuple[slice, ...]:
    """Bounding box of a mask plus ``margin`` voxels (the whole volume when no mask)."""
    if mask is None:
        return tuple(slice(0, n) for n in shape)
    box = bounding_box(check_region(mask, shape, "roi_mask"), margin=margin)
    if box is None:
        raise MSToolkitInputError("'roi_mask' is empty; pass the brain mask or a region holding the target.")
    return box


def resolve_target(target: Any, shape: tuple[int, ...]) -> np.ndarray | None:
    """None for "prediction" (decided per tile from the logits), else a boolean region."""
    if isinstance(target, str):
        if target != "prediction":
            raise MSToolkitInputError(f"'target' must be 'prediction' or a binary mask array, got {target!r}.")
        return None
    region = check_region(target, shape, "target")
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


def _prepare(model: nn.Module, inputs: Any, target: Any, roi_mask: Any, patch_size, margin: int) -> dict[str, Any]:
    """What every tiled method needs: the checked inputs, target, box, tiles and padded volume."""
    x = check_model_inputs(inputs)
    shape = tuple(x.shape[1:])
    region = resolve_target(target, shape)
    box = explained_box(roi_mask, shape, margin)
    crop_shape = tuple(s.stop - s.start for s in box)
    pads, grid_shape, tiles = _tiles(crop_shape, patch_size, margin, _size_multiple(model, x.shape[0]))
    volume = _padded(x[(slice(None),) + box][None], pads).to(model_device(model))
    return {"x": x, "shape": shape, "region": region, "box": box, "crop_shape": crop_shape, "pads": pads,
            "grid_shape": grid_shape, "tiles": tiles, "volume": volume,
            "grid": _on_grid(region, box, crop_shape, grid_shape)}


def _place(found: torch.Tensor, t: dict[str, Any], roi_mask: Any, *, padded: bool) -> np.ndarray:
    """A map computed on the tiles (padded volume or core grid, leading channel axis) back on the input grid."""
    lo = [before for before, _ in t["pads"]] if padded else [0, 0, 0]
    found = found[(slice(None),) + tuple(slice(b, b + n) for b, n in zip(lo, t["crop_shape"]))]
    result = np.zeros((found.shape[0],) + t["shape"], dtype=np.float32)
    result[(slice(None),) + t["box"]] = found.numpy()
    if roi_mask is not None:
        result[:, ~check_region(roi_mask, t["shape"], "roi_mask")] = 0.0  # e.g. nothing to explain outside the brain
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


def _layer_tiles(model: nn.Module, layer: Any, t: dict[str, Any], *, every_tile: bool):
    """Run the tiles once; yield per tile ``(activation, gradient or None, stride, tile)``.

    ``activation`` and ``gradient`` (of the tile's part of the target) are (channels, x, y, z) at
    the layer's resolution, for the whole patch. Tiles whose core holds none of the target are
    skipped unless ``every_tile`` (Grad-CAM needs every tile's activations).
    """
    name, module = find_layer(model, layer)
    captured: list[torch.Tensor] = []
    hook = module.register_forward_hook(lambda m, i, o: captured.append(o))
    try:
        with evaluation_mode(model):
            for patch, inner, out in t["tiles"]:
                needs_grad = bool(t["grid"][out].any())  # a tile without target voxels adds no gradient
                if not (needs_grad or every_tile):
                    continue
                captured.clear()
                piece = t["volume"][(slice(None), slice(None)) + patch]
                with torch.set_grad_enabled(needs_grad):
                    logits = lesion_logit(model(piece))[0]
                activation, gradient = captured[-1], None
                stride = _layer_stride(name, piece.shape[2:], activation.shape[2:])
                if needs_grad:
                    weight = _tile_weight(logits[inner], t["grid"][out], t["region"] is None)
                    if weight.any():
                        (gradient,) = torch.autograd.grad((logits[inner] * weight).sum(), activation)
                        gradient = gradient[0].detach()
                yield activation[0].detach(), gradient, stride, (patch, inner, out)
                del logits, activation
    finally:
        hook.remove()


def _upsample(layer_map: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """A (x, y, z) map at a layer's resolution, trilinearly resized to ``size`` (as captum does)."""
    if tuple(layer_map.shape) == tuple(size):
        return layer_map
    return F.interpolate(layer_map[None, None], size=size, mode="trilinear", align_corners=False)[0, 0]


# --------------------------------------------------------------------------- layer maps


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
    """Segmentation Grad-CAM of a region, upsampled to the input grid: ``ReLU(Σ_k α_k A_k)``.

    ``α_k`` is the gradient of the target with respect to feature map ``A_k``, averaged over all of
    the layer's positions (every tile).

    **Degenerate in networks with normalisation layers.** Instance normalisation subtracts each
    channel's mean over space, so the gradient reaching its input sums to zero over space; a
    convolution before it keeps that sum at zero except at the borders, and an activation after it
    changes little. In :class:`mstoolkit.segmentation.models.TinyUNet` every path to the output runs through
    convolution → instance norm, so every ``α_k`` is zero up to border effects and rounding, and
    the map is mostly noise that changes with the tile size. At ``candidate_layers(model)["pre_head"]``
    the ``α_k`` are the 1×1 head's weights, so the map is the logit map whatever the target. Use
    :func:`hires_cam` for such networks; :func:`mstoolkit.explain.interpret_checks.grad_cam_weights`
    measures the problem. Grad-CAM is faithful for networks without normalisation after the
    explained layer.

    Parameters
    ----------
    model : torch.nn.Module
        Maps (batch, channels, x, y, z) to lesion logits; run in eval mode here.
    inputs : array (channels, x, y, z)
        Normalised images, e.g. ``mstoolkit.segmentation.inference.prepare_inputs(case, sequences)``.
    target : "prediction" or binary array (x, y, z), keyword-only
        The region whose summed lesion logits are explained: ``"prediction"`` (every voxel the
        model calls lesion, logit > 0), or any mask — one lesion
        (:func:`mstoolkit.explain.interpret_checks.lesion_region`), a false positive, or a missed
        lesion's ground-truth region.
    layer : str or module, optional
        A layer (name from ``model.named_modules()``); default ``candidate_layers(model)["decoder"]``.
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
    t = _prepare(model, inputs, target, roi_mask, patch_size, margin)
    weights_sum, features, stride = None, None, 1
    for activation, gradient, stride, (_, inner, out) in _layer_tiles(model, layer, t, every_tile=True):
        if features is None:
            features = torch.zeros((activation.shape[0],) + tuple(n // stride for n in t["grid_shape"]))
            weights_sum = torch.zeros(activation.shape[0], dtype=torch.float64)
        if gradient is not None:
            weights_sum += gradient.sum(dim=(1, 2, 3)).double().cpu()
        layer_inner = tuple(slice(s.start // stride, s.stop // stride) for s in inner)
        layer_out = tuple(slice(s.start // stride, s.stop // stride) for s in out)
        features[(slice(None),) + layer_out] = activation[(slice(None),) + layer_inner].cpu()
    alpha = (weights_sum / math.prod(features.shape[1:])).float()
    cam = torch.einsum("c,cxyz->xyz", alpha, features)
    cam = _upsample(torch.relu(cam) if relu else cam, t["grid_shape"])
    return _place(cam[None], t, roi_mask, padded=False)[0]


def hires_cam(
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
    """HiResCAM of a region (Draelos & Carin 2020): ``ReLU(Σ_k ∂y/∂A_k ⊙ A_k)``, upsampled to the input grid.

    Gradient and activation are multiplied voxel by voxel, then summed over channels (captum's
    ``LayerGradientXActivation`` summed over channels). Nothing is averaged over space, so the
    normalisation layers that make :func:`grad_cam` empty do not: the map shows, at each position
    of the layer, how much its features move the target to first order.

    When it is faithful: at any layer, to first order (like every gradient method). The default
    layer, ``candidate_layers(model)["decoder"]``, is the last block output that a 3×3×3 convolution
    still follows: the map is local to the target and its context, and two tile sizes give the
    same map near the target (:func:`mstoolkit.explain.interpret_checks.map_agreement`). Not at
    ``"pre_head"``: only the linear 1×1 head lies between it and the logits, so the map is the
    target's own logits (minus the bias) and zero elsewhere — true, and tells nothing new.

    Parameters
    ----------
    model, inputs, target, roi_mask, patch_size, margin
        As in :func:`grad_cam`. Each tile adds its whole patch (core and margin) to the map, so a
        target near a tile border gets the context from both tiles.
    layer : str or module, optional
        Default ``candidate_layers(model)["decoder"]``.
    relu : bool
        Keep only evidence *for* the target; False returns the signed map.

    Returns
    -------
    numpy.ndarray, float32, shape (x, y, z)
        The raw map (not normalised).

    Introduced in notebook 05.
    """
    t = _prepare(model, inputs, target, roi_mask, patch_size, margin)
    padded_shape = tuple(t["volume"].shape[2:])
    total, stride = None, 1
    for activation, gradient, stride, (patch, _, _) in _layer_tiles(model, layer, t, every_tile=False):
        if total is None:
            total = torch.zeros(tuple(n // stride for n in padded_shape))
        if gradient is not None:
            at_layer = tuple(slice(s.start // stride, s.stop // stride) for s in patch)
            total[at_layer] += (gradient * activation).sum(dim=0).cpu()
    if total is None:  # no tile holds the target (an empty prediction)
        return _place(torch.zeros((1,) + padded_shape), t, roi_mask, padded=True)[0]
    cam = _upsample(torch.relu(total) if relu else total, padded_shape)
    return _place(cam[None], t, roi_mask, padded=True)[0]


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

    Input attributions need no layer, so normalisation layers do not empty them as they empty
    :func:`grad_cam`; gradient × input is :func:`hires_cam` at the input.

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
    shape = tuple(check_model_inputs(inputs).shape[1:])
    if method == "occlusion":
        region = resolve_target(target, shape)
        if region is None:
            raise MSToolkitInputError("occlusion needs a small target region (e.g. interpret_checks.lesion_region(mask, 1)), not 'prediction'.")
        margin = max(margin, window)  # context for the network, and room for whole cubes
        patch_size = tuple(max(p, -(-(s.stop - s.start) // 64) * 64) for p, s in zip(patch_size, explained_box(region, shape, margin)))
    t = _prepare(model, inputs, target, region if method == "occlusion" else roi_mask, patch_size, margin)
    volume, grid = t["volume"], t["grid"]
    total = torch.zeros_like(volume[0], device="cpu")
    with evaluation_mode(model):
        for patch, inner, out in t["tiles"]:
            if not grid[out].any():
                continue  # this tile's core holds none of the target: zero contribution
            piece = volume[(slice(None), slice(None)) + patch]
            if t["region"] is None:  # "prediction": which core voxels the model calls lesion
                with torch.no_grad():
                    weight = _tile_weight(lesion_logit(model(piece))[0][inner], grid[out], True)
            else:
                weight = torch.from_numpy(grid[out]).float().to(piece.device)
            if not weight.any():
                continue
            full_weight = torch.zeros(piece.shape[2:], device=piece.device)
            full_weight[inner] = weight

            def forward(batch: torch.Tensor, full_weight: torch.Tensor = full_weight) -> torch.Tensor:
                return (lesion_logit(model(batch)) * full_weight).sum(dim=(1, 2, 3))

            found = _attribute_patch(method, forward, piece.clone().requires_grad_(True), n_steps=n_steps,
                                     internal_batch_size=internal_batch_size, window=window)
            total[(slice(None),) + patch] += found[0].detach().cpu()
    if method == "saliency" and not signed:
        total = total.abs()
    return _place(total, t, None if method == "occlusion" else roi_mask, padded=True)


def tiled_logits(model: nn.Module, x: torch.Tensor, box: tuple[slice, ...], patch_size: tuple[int, int, int],
                  margin: int) -> np.ndarray:
    """Lesion logits inside ``box`` (no gradients), with the same tiling as the maps."""
    crop = x[(slice(None),) + box]
    pads, grid_shape, tiles = _tiles(tuple(crop.shape[1:]), patch_size, margin, _size_multiple(model, x.shape[0]))
    volume = _padded(crop[None], pads).to(model_device(model))
    logits = torch.zeros(grid_shape)
    with evaluation_mode(model), torch.no_grad():
        for patch, inner, out in tiles:
            logits[out] = lesion_logit(model(volume[(slice(None), slice(None)) + patch]))[0][inner].cpu()
    return logits[tuple(slice(0, n) for n in crop.shape[1:])].numpy()


# --------------------------------------------------------------------------- the formulas, on one layer's tensors


def _check_layer_tensors(activations: torch.Tensor, gradients: torch.Tensor) -> None:
    if activations.ndim != 4 or activations.shape != gradients.shape:
        raise MSToolkitInputError("'activations' and 'gradients' must both be shaped (channels, x, y, z), got "
                                  f"{tuple(activations.shape)} and {tuple(gradients.shape)}.")


def grad_cam_from_gradients(activations: torch.Tensor, gradients: torch.Tensor, *, relu: bool = True) -> torch.Tensor:
    """Grad-CAM at a layer's own resolution from its activations and the target's gradients.

    ``ReLU(Σ_k α_k A_k)`` with ``α_k`` the mean of ``∂y/∂A_k`` over space (Selvaraju et al. 2017).
    Both tensors are shaped (channels, x, y, z), as one forward and backward pass gives them;
    :func:`grad_cam` does the passes, the tiling and the upsampling for a whole scan.

    >>> activations = torch.ones(2, 2, 2, 2); gradients = torch.stack([torch.ones(2, 2, 2), -torch.ones(2, 2, 2)])
    >>> float(grad_cam_from_gradients(activations * torch.tensor([3.0, 1.0])[:, None, None, None], gradients).max())
    2.0

    Introduced in notebook 05 (exercise 1).
    """
    _check_layer_tensors(activations, gradients)
    weights = gradients.mean(dim=(1, 2, 3))  # one weight per channel: its gradient averaged over space
    cam = torch.einsum("c,cxyz->xyz", weights, activations)
    return torch.relu(cam) if relu else cam


def hires_cam_from_gradients(activations: torch.Tensor, gradients: torch.Tensor, *, relu: bool = True) -> torch.Tensor:
    """HiResCAM at a layer's own resolution: ``ReLU(Σ_k ∂y/∂A_k ⊙ A_k)`` (Draelos & Carin 2020).

    Like :func:`grad_cam_from_gradients`, but the gradient stays voxel by voxel, so gradients that
    cancel over space do not empty the map.

    >>> activations = torch.ones(1, 2, 1, 1); gradients = torch.tensor([1.0, -1.0]).reshape(1, 2, 1, 1)
    >>> hires_cam_from_gradients(activations, gradients).flatten().tolist()
    [1.0, 0.0]

    Introduced in notebook 05 (exercise 2).
    """
    _check_layer_tensors(activations, gradients)
    cam = (gradients * activations).sum(dim=0)
    return torch.relu(cam) if relu else cam
