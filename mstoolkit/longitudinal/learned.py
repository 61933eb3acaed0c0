"""A learned detector of lesion growth: a small 3D U-Net on two co-registered FLAIRs.

The alternative to the statistical map of :mod:`mstoolkit.longitudinal.change`. Both share
the same first steps (one grid, N4, rigid registration, robust z-scores; the
:class:`~mstoolkit.longitudinal.change.ChangeResult` of :func:`~mstoolkit.longitudinal.change.detect_changes`);
they differ in what decides that tissue has *appeared*:

- the statistical map: the scaled difference above ``change_z`` AND FLAIR hyperintensity at follow-up;
- the learned detector: a network that sees the baseline, the follow-up and their scaled
  difference (three channels, :func:`network_inputs`) and outputs the probability of new or
  enlarged lesion tissue (:func:`growth_probability`).

Shrinking and resolved lesions stay with the statistical map in both: the phantom pairs it
learns from mark growth only (as MSSEG-2 scores new lesions only).

It learns from phantom pairs only (``benchmarks/train_change_model.py``: every scanner profile,
thick-slice pairs, and pairs whose follow-up comes from another scanner profile), so what it knows of real
scans is what the phantom gets right. Its checkpoint and threshold are chosen on the phantom
selection pairs that chose the statistical map's settings; the real open_ms_data pairs are held
out (``benchmarks/bench_longitudinal.py --method learned``). ``benchmarks/train_change_model.py``
rebuilds the shipped weights.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mstoolkit.data.io import MSToolkitInputError

__all__ = [
    "CHANNELS", "MODEL_PATH", "TRAINING_SEEDS", "PROFILES", "network_inputs", "build_change_network",
    "growth_probability", "load_change_model", "train_change_model",
]

#: The network's input channels, in order: robust z-scores of each time point and the scaled difference / 5.
CHANNELS = ("baseline_z", "followup_z", "change_z")
#: The shipped weights (``benchmarks/train_change_model.py`` writes them).
MODEL_PATH = Path(__file__).with_name("reference") / "growth_model.pt"
#: Phantom seeds it trains on (the statistical map's selection pairs are 8000-8005, its test pairs 8100-8103).
TRAINING_SEEDS = tuple(range(9000, 9012))
#: The network runs on a grid no finer than this (mm per axis): the phantom pairs are 1 mm in-plane.
NETWORK_SPACING_MM = 1.0
#: The scanner profiles of the training pairs (all of the phantom's).
PROFILES = ("standard", "low_field", "vendor_b", "high_res")
_Z_CLIP = (-5.0, 10.0)


def network_inputs(z_baseline: np.ndarray, z_followup: np.ndarray, change_z: np.ndarray,
                   brain: np.ndarray) -> np.ndarray:
    """The three input channels (float32, ``(3, x, y, z)``, 0 outside the brain), all on the follow-up grid.

    ``z_baseline`` and ``z_followup`` are the registered, bias-corrected FLAIRs z-scored robustly
    inside the analysed brain (:func:`mstoolkit.longitudinal.change.robust_zscore`): the same
    harmonisation as the statistical map, so the network sees "how bright compared with this
    scan's normal tissue", not scanner units. ``change_z`` is the scaled change map; it is
    divided by 5 (the statistical threshold), so all three channels have a similar range.
    """
    brain = brain > 0
    channels = [z_baseline, z_followup, change_z / 5.0]
    stacked = np.stack([np.clip(c, *_Z_CLIP) for c in channels]).astype(np.float32)
    stacked[:, ~brain] = 0.0
    return stacked


def build_change_network():
    """The network: the toolkit's tiny U-Net (:func:`mstoolkit.segmentation.models.build_model`), three input channels."""
    from mstoolkit.segmentation.models import build_model

    return build_model("tiny_unet", in_channels=len(CHANNELS), features=(8, 16, 32, 64))


def _network_grid(shape: Sequence[int], spacing: Sequence[float]) -> tuple[int, ...]:
    """The grid the network runs on: the same field of view, no finer than NETWORK_SPACING_MM per axis."""
    return tuple(max(1, round(n * s / max(s, NETWORK_SPACING_MM))) for n, s in zip(shape, spacing))


def growth_probability(network, inputs: np.ndarray, spacing: Sequence[float], *, device: str = "cpu",
                       window: int = 64) -> np.ndarray:
    """Probability (float32, ``(x, y, z)``) of new or enlarged lesion tissue, on the inputs' grid.

    Finer grids (e.g. 0.72 mm in-plane) are resampled to ``NETWORK_SPACING_MM`` for the network
    and the probability is resampled back, so it sees tissue at the scale it learned from.
    """
    import torch
    import torch.nn.functional as F

    from mstoolkit.runtime import pick_device
    from mstoolkit.segmentation.inference import sliding_window_logits

    device = pick_device(device, verbose=False)
    if inputs.ndim != 4 or inputs.shape[0] != len(CHANNELS):
        raise MSToolkitInputError(f"the change network needs inputs of shape (3, x, y, z) ({', '.join(CHANNELS)}), "
                                  f"got {inputs.shape}.")
    shape = tuple(inputs.shape[1:])
    grid = _network_grid(shape, spacing)
    with torch.inference_mode():
        tensor = torch.from_numpy(np.ascontiguousarray(inputs))[None].to(device)
        if grid != shape:
            tensor = F.interpolate(tensor, size=grid, mode="trilinear", align_corners=False)
        logits = sliding_window_logits(network.eval(), tensor, (window,) * 3, 0.25)
        if grid != shape:
            logits = F.interpolate(logits, size=shape, mode="trilinear", align_corners=False)
        return torch.sigmoid(logits)[0, 0].float().cpu().numpy()


def load_change_model(source: str | os.PathLike | None = None, *, device: str = "cpu"):
    """The change network and its config (``threshold``, training record); default: the shipped weights."""
    from mstoolkit.segmentation.models import load_model

    path = Path(source) if source is not None else MODEL_PATH
    if not path.is_file():
        raise MSToolkitInputError(f"no change model at '{path}'; rebuild it with "
                                  "`python benchmarks/train_change_model.py` or pass --method statistical.")
    network, config = load_model(path, device=device)
    if tuple(config.get("sequences", ())) != CHANNELS:
        raise MSToolkitInputError(f"'{path}' is not a change model (its inputs are {config.get('sequences')}, "
                                  f"not {list(CHANNELS)}); pass a checkpoint written by train_change_model.")
    return network, config


def _sample_patch(rng: np.random.Generator, inputs: np.ndarray, truth: np.ndarray, size: int,
                  growth_share: float) -> tuple[np.ndarray, np.ndarray]:
    """A ``size``³ patch, centred on growth with probability ``growth_share``, else anywhere in the brain."""
    shape = np.array(truth.shape)
    if truth.any() and rng.random() < growth_share:
        candidates = np.argwhere(truth)
    else:
        candidates = np.argwhere(inputs[1] != 0)
    centre = candidates[rng.integers(len(candidates))] + rng.integers(-size // 4, size // 4 + 1, 3)
    start = np.clip(centre - size // 2, 0, np.maximum(shape - size, 0))
    box = tuple(slice(int(s), int(s) + size) for s in start)
    patch, label = inputs[(slice(None), *box)], truth[box]
    pad = [(0, size - n) for n in label.shape]  # thick-slice grids can be thinner than the patch
    if any(p for _, p in pad):
        patch, label = np.pad(patch, [(0, 0), *pad]), np.pad(label, pad)
    if rng.random() < 0.5:  # left-right flip: lesions are no more likely on one side
        patch, label = patch[:, ::-1], label[::-1]
    return np.ascontiguousarray(patch), np.ascontiguousarray(label)


def train_change_model(
    pairs: Sequence[tuple[np.ndarray, np.ndarray, dict]],
    out: str | os.PathLike,
    *,
    score: Callable[[Any, float], tuple[float, float]],
    iterations: int = 800,
    patch: int = 32,
    batch: int = 4,
    learning_rate: float = 2e-3,
    growth_share: float = 0.6,
    validate_every: int = 400,
    thresholds: Sequence[float] = (0.3, 0.5, 0.7),
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train the change network on ``pairs`` ``(inputs, growth truth, description)`` and save the best checkpoint at ``out``.

    ``score(network, threshold)`` returns the mean lesion-wise change F1 and the mean voxel Dice
    of change on the selection pairs; their average chooses the checkpoint (every
    ``validate_every`` iterations) and then the threshold. F1 alone can be gamed: with
    any-overlap matching, one huge component that touches every true change scores F1 = 1, and
    its Dice gives it away. The loss is Dice + cross-entropy (MONAI ``DiceCELoss``): growth is a
    tiny share of the voxels.
    Returns the training record that is saved in the checkpoint's config.
    """
    import torch
    from monai.losses import DiceCELoss

    from mstoolkit.segmentation.models import count_parameters, save_model

    if not pairs:
        raise MSToolkitInputError("train_change_model needs at least one training pair.")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    network = build_change_network()
    optimiser = torch.optim.Adam(network.parameters(), lr=learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, iterations)
    loss_function = DiceCELoss(sigmoid=True, batch=True)
    history, best = [], {"score": -1.0, "iteration": 0}
    best_state = None
    started = time.perf_counter()
    for iteration in range(1, iterations + 1):
        network.train()
        drawn = [_sample_patch(rng, *pairs[rng.integers(len(pairs))][:2], patch, growth_share) for _ in range(batch)]
        x = torch.from_numpy(np.stack([d[0] for d in drawn]))
        y = torch.from_numpy(np.stack([d[1] for d in drawn])[:, None].astype(np.float32))
        loss = loss_function(network(x), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        if iteration % validate_every == 0 or iteration == iterations:
            f1, dice = score(network, 0.5)
            history.append({"iteration": iteration, "loss": round(loss.item(), 4), "selection_f1": round(f1, 4),
                            "selection_dice": round(dice, 4), "seconds": round(time.perf_counter() - started, 1)})
            log(json.dumps(history[-1]))
            if (f1 + dice) / 2 > best["score"]:
                best = {"score": (f1 + dice) / 2, "iteration": iteration}
                best_state = {k: v.detach().clone() for k, v in network.state_dict().items()}
    network.load_state_dict(best_state)
    by_threshold = {t: score(network, t) for t in thresholds}
    threshold = max(by_threshold, key=lambda t: (sum(by_threshold[t]) / 2, -abs(t - 0.5)))
    record = {
        "name": "tiny_unet", "features": [8, 16, 32, 64], "sequences": list(CHANNELS),
        "title": "mstoolkit change network (phantom pairs)", "threshold": threshold,
        "selection_f1_dice_by_threshold": {str(t): [round(v, 4) for v in fd] for t, fd in by_threshold.items()},
        "best_iteration": best["iteration"], "iterations": iterations, "patch": patch, "batch": batch,
        "learning_rate": learning_rate, "growth_share": growth_share, "seed": seed,
        "training_pairs": [p[2] for p in pairs], "history": history, "parameters": count_parameters(network),
        "train_seconds": round(time.perf_counter() - started, 1),
    }
    save_model(out, network, record)
    f1, dice = by_threshold[threshold]
    log(f"saved {out}: best iteration {best['iteration']}, threshold {threshold}, selection F1 {f1:.3f}, Dice {dice:.3f}")
    return record

