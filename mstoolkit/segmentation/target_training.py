"""A minimal training loop on given targets, for experiments where only the target changes.

``train`` (the notebooks' loop) reads binary masks from cases. Teaching label noise needs
one more thing: to train the *same* network on the *same* patches against different
targets (a majority vote of raters, or their soft average) and nothing else. This loop
takes the targets as float arrays in [0, 1] and draws its patches from a seed only, so two
calls with one seed differ in the target alone.

Introduced in notebook 04 (metrics: label noise).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from mstoolkit.segmentation.models import build_model

__all__ = ["fit_to_targets"]


def fit_to_targets(
    inputs: Sequence[np.ndarray],
    targets: Sequence[np.ndarray],
    *,
    steps: int,
    patch_size: int = 32,
    centres_from: Sequence[np.ndarray] | None = None,
    loss: str = "bce",
    learning_rate: float = 5e-3,
    features: tuple[int, ...] = (8, 16, 32, 64),
    seed: int = 0,
) -> nn.Module:
    """Train a ``tiny_unet`` for ``steps`` steps (batches of 2 patches) and return it in eval mode.

    Parameters
    ----------
    inputs : arrays (channels, x, y, z), normalised (``inference.prepare_inputs``)
    targets : arrays (x, y, z) in [0, 1], one per input: binary masks or soft labels
    centres_from : binary arrays (x, y, z), optional
        Where lesion-centred patches may be centred (default: ``target >= 0.5``). Pass the
        same masks to two runs and they see the same patches, whatever their targets.
    loss : ``"bce"`` (default) or a name of :func:`mstoolkit.segmentation.train.build_loss`
        Binary cross-entropy takes a soft target as it is: its minimum is at the raters'
        fraction, so the network is asked to be as unsure as the raters were.
    Half the patches are centred on a lesion voxel, half anywhere (as ``train`` does).

    >>> x = np.random.default_rng(0).normal(size=(1, 12, 12, 12)).astype(np.float32)
    >>> y = (x[0] > 1).astype(np.float32)
    >>> model = fit_to_targets([x], [y], steps=2, patch_size=8, features=(4, 8))
    >>> tuple(model(torch.as_tensor(x[None])).shape)
    (1, 1, 12, 12, 12)
    """
    if len(inputs) != len(targets) or not inputs:
        raise ValueError(f"need one target per input (at least one), got {len(inputs)} inputs and {len(targets)} targets.")
    for x, y in zip(inputs, targets):
        if x.ndim != 4 or x.shape[1:] != y.shape:
            raise ValueError(f"inputs must be (channels, x, y, z) and targets (x, y, z) on the same grid, got {x.shape} and {y.shape}.")
        if min(y.shape) < patch_size:
            raise ValueError(f"'patch_size' {patch_size} is larger than a volume of shape {y.shape}; pass a smaller one.")
        if float(np.min(y)) < 0 or float(np.max(y)) > 1:
            raise ValueError("targets must lie in [0, 1].")
    centres_from = [np.asarray(t) >= 0.5 for t in targets] if centres_from is None else centres_from
    lesion_voxels = [np.argwhere(c) for c in centres_from]
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)  # the same initial weights in every run of one seed
    model = build_model("tiny_unet", in_channels=int(inputs[0].shape[0]), features=features)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    if loss == "bce":
        loss_fn = nn.BCEWithLogitsLoss()
    else:
        from mstoolkit.segmentation.train import build_loss  # MONAI's losses: imported only when asked for

        loss_fn = build_loss(loss)
    half = patch_size // 2
    model.train()
    for _step in range(steps):
        batch_x, batch_y = [], []
        for k in range(2):
            i = int(rng.integers(len(inputs)))
            shape = np.array(targets[i].shape)
            if k == 0 and len(lesion_voxels[i]):  # one lesion-centred patch per batch, one anywhere
                centre = lesion_voxels[i][rng.integers(len(lesion_voxels[i]))]
            else:
                centre = rng.integers(0, shape)
            start = np.clip(centre - half, 0, shape - patch_size)
            region = tuple(slice(s, s + patch_size) for s in start)
            batch_x.append(inputs[i][(slice(None), *region)])
            batch_y.append(np.asarray(targets[i], np.float32)[region][None])
        x = torch.as_tensor(np.stack(batch_x), dtype=torch.float32)
        y = torch.as_tensor(np.stack(batch_y), dtype=torch.float32)
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        optimizer.step()
    return model.eval()
