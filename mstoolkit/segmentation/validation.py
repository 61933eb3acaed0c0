"""Validation during training: whole-volume lesion probabilities, mean Dice, post-processing.

:func:`mstoolkit.segmentation.train.train` calls :func:`validation_dice` every ``validate_every`` epochs to pick the
best checkpoint, and :func:`tune_postprocessing` once at the end to choose the probability
threshold and the smallest lesion kept — on the validation volumes only, never on test data.

Introduced in notebook 03 (U-Net training).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from mstoolkit.runtime import release_memory

if TYPE_CHECKING:
    from mstoolkit.segmentation.config import TrainConfig

__all__ = ["MIN_LESION_CANDIDATES_MM3"]


def _validation_probabilities(model: nn.Module, cached: list[dict], config: TrainConfig, device: torch.device, amp: tuple) -> list[np.ndarray]:
    """Lesion probability of each validation volume (sliding-window inference)."""
    from mstoolkit.segmentation.inference import sliding_window_logits

    model.eval()
    release_memory()  # the training steps' freed buffers: whole-volume inference needs the room (2 GB on Binder)
    roi = tuple(max(a, b) for a, b in zip(config.val_roi_size, config.patch_size))
    probabilities = []
    with torch.no_grad(), torch.autocast(device.type, dtype=amp[1], enabled=amp[0]):
        for item in cached:
            image = torch.as_tensor(item["image"])[None].to(device)
            logits = sliding_window_logits(model, image, roi, config.sw_overlap, sw_batch_size=1)
            probabilities.append(torch.sigmoid(logits[0, 0].float()).cpu().numpy())
    model.train()
    return probabilities


def _mean_dice(probabilities: list[np.ndarray], cached: list[dict], threshold: float) -> float:
    from mstoolkit.evaluation.metrics import dice

    scores = [dice(probability >= threshold, item["label"][0].astype(bool)) for probability, item in zip(probabilities, cached)]
    return float(np.mean(scores)) if scores else float("nan")


def validation_dice(model: nn.Module, cached: list[dict], config: TrainConfig, device: torch.device, amp: tuple) -> float:
    """Mean Dice over the validation volumes at threshold 0.5."""
    return _mean_dice(_validation_probabilities(model, cached, config, device, amp), cached, 0.5)


#: Minimum lesion sizes (mm³) tried after training; 3 mm³ and 10 mm³ are common conventions in MS studies.
MIN_LESION_CANDIDATES_MM3 = (0.0, 3.0, 10.0, 20.0)


def tune_postprocessing(model: nn.Module, cached: list[dict], config: TrainConfig, device: torch.device,
                         amp: tuple) -> tuple[float, float]:
    """``(threshold, min_lesion_mm3)`` chosen on the validation volumes only.

    The threshold (0.1 … 0.9) maximises mean Dice: a briefly trained model is often
    under-confident (best cut-off below 0.5), a long-trained one over-confident (above).
    Then the smallest component size kept (:data:`MIN_LESION_CANDIDATES_MM3`) maximises
    mean lesion F1 (ties: the smaller size), since specks of a few voxels are the typical false positives of a small model.
    """
    from mstoolkit.evaluation.metrics import evaluate
    from mstoolkit.segmentation.inference import remove_small_lesions

    probabilities = _validation_probabilities(model, cached, config, device, amp)
    candidates = np.round(np.arange(0.1, 0.91, 0.05), 2)
    scores = [_mean_dice(probabilities, cached, float(t)) for t in candidates]
    threshold = float(candidates[int(np.argmax(scores))])
    f1 = []
    for size in MIN_LESION_CANDIDATES_MM3:
        per_case = []
        for probability, item in zip(probabilities, cached):
            mask = (probability >= threshold).astype(np.uint8)
            if size:
                mask = remove_small_lesions(mask, spacing=item["spacing"], min_volume_mm3=size)
            per_case.append(evaluate(mask, item["label"][0], spacing=item["spacing"])["lesion_f1"])
        f1.append(float(np.mean(per_case)))
    return threshold, float(MIN_LESION_CANDIDATES_MM3[int(np.argmax(f1))])
