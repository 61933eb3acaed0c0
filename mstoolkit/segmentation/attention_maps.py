"""The attention gates of MONAI's Attention U-Net, read out as maps.

An Attention U-Net (Oktay et al. 2018, *Attention U-Net: learning where to look for the
pancreas*, MIDL) multiplies each skip connection by a gate in [0, 1] computed from the
coarser decoder features: where the gate is near 0 the encoder's detail is not passed on.
The gates are part of the forward pass (unlike Grad-CAM, nothing is computed after the
fact), so reading them needs only a forward hook on each gate's ``psi`` branch
(1×1×1 convolution, batch norm, sigmoid).

Introduced in notebook 03 (U-Net training).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

__all__ = ["attention_gates", "attention_gate_maps"]


def attention_gates(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The attention gates (MONAI ``AttentionBlock``) of ``model``, finest level first.

    Raises ``ValueError`` when the model has none (e.g. ``build_model("tiny_unet")``).
    """
    gates = [(name, module) for name, module in model.named_modules() if type(module).__name__ == "AttentionBlock"]
    if not gates:
        raise ValueError(f"{type(model).__name__} has no attention gates; build one with build_model('attention_unet', ...).")
    # MONAI nests the levels: the shortest module path is the outermost (finest) level
    return sorted(gates, key=lambda item: item[0].count("."))


@torch.no_grad()
def attention_gate_maps(model: nn.Module, inputs: torch.Tensor) -> list[np.ndarray]:
    """Run ``model`` once on ``inputs`` (1, channels, x, y, z) and return each gate's map.

    Returns one float32 array of shape (x, y, z) per gate, finest level first, each
    resampled (trilinear) to the input's size so it can be overlaid on the image.
    Values lie in [0, 1]: 1 passes the skip connection's features on, 0 blocks them.

    >>> from mstoolkit.segmentation.models import build_model
    >>> net = build_model("attention_unet", in_channels=1, features=(4, 8, 16)).eval()
    >>> maps = attention_gate_maps(net, torch.zeros(1, 1, 16, 16, 16))
    >>> len(maps), maps[0].shape
    (2, (16, 16, 16))
    """
    if inputs.ndim != 5 or inputs.shape[0] != 1:
        raise ValueError(f"'inputs' must have shape (1, channels, x, y, z), got {tuple(inputs.shape)}.")
    captured: list[torch.Tensor] = []
    handles = [gate.psi.register_forward_hook(lambda _module, _inputs, output: captured.append(output.detach()))
               for _, gate in attention_gates(model)]
    try:
        model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    # the hooks fire from the coarsest level up (decoder order); return finest first
    captured = sorted(captured, key=lambda t: -t.shape[-1] * t.shape[-2] * t.shape[-3])
    size = tuple(inputs.shape[2:])
    maps = []
    for gate in captured:
        resized = torch.nn.functional.interpolate(gate.float(), size=size, mode="trilinear", align_corners=False)
        maps.append(resized[0, 0].clamp(0, 1).cpu().numpy().astype(np.float32))
    return maps
