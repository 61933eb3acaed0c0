"""What a training run is: its settings (:class:`TrainConfig`), the named presets and the losses.

A module of its own so that the pieces of training (:mod:`mstoolkit.segmentation.training_data`,
:mod:`mstoolkit.segmentation.validation`) and the loop (:mod:`mstoolkit.segmentation.train`) can all read a run's
settings without importing each other.

Introduced in notebook 03 (U-Net training).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mstoolkit.data.io import MSToolkitInputError

__all__ = ["LOSS_NAMES", "PRESETS", "REFERENCE_TITLE", "REFERENCE_V2_TITLE", "TrainConfig"]

#: Names accepted by :func:`build_loss`.
LOSS_NAMES = ("dice", "dice_ce", "dice_focal", "tversky", "generalized_dice", "focal")


@dataclass
class TrainConfig:
    """Every setting of a training run (saved with each checkpoint).

    Introduced in notebook 03.
    """

    model: str = "tiny_unet"
    features: tuple[int, ...] | None = None
    dropout: float = 0.0
    sequences: tuple[str, ...] = ("FLAIR", "T1")
    loss: str = "dice_ce"
    patch_size: tuple[int, int, int] = (64, 64, 64)
    batch_size: int = 2
    positive_fraction: float = 0.5
    epochs: int = 20
    iterations_per_epoch: int = 40
    learning_rate: float = 3e-3
    weight_decay: float = 1e-5
    augment: str = "light"  # a level of preprocessing.transforms.AUGMENT_LEVELS: "none", "light" (flips) or "domain"
    validate_every: int = 1
    patience: int | None = None  # stop after this many validations without improvement
    lesion_contrast: float = 0.0  # probability of scaling each lesion's contrast in a patch (phantom lesions are too alike)
    ema_decay: float | None = None  # validate and keep a moving average of the weights (e.g. 0.995), not the last ones
    sw_overlap: float = 0.25
    val_roi_size: tuple[int, int, int] = (96, 96, 96)  # the network is fully convolutional: bigger windows, fewer of them
    amp: bool = True
    device: str = "auto"
    seed: int = 0
    out_dir: str | None = None
    resume: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.loss not in LOSS_NAMES:
            raise MSToolkitInputError(f"Unknown loss {self.loss!r}; allowed: {', '.join(LOSS_NAMES)}.")
        from mstoolkit.preprocessing.transforms import check_augmentation  # monai: only when a run is set up

        check_augmentation(self.augment, self.lesion_contrast)  # the levels of the one augmentation pipeline
        if len(self.patch_size) != 3 or min(self.patch_size) < 4:
            raise MSToolkitInputError(f"'patch_size' must be 3 integers >= 4, got {self.patch_size!r}.")
        if not 0.0 <= self.positive_fraction <= 1.0:
            raise MSToolkitInputError(f"'positive_fraction' must be in [0, 1], got {self.positive_fraction!r}.")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise MSToolkitInputError(f"'ema_decay' must be between 0 and 1 (e.g. 0.995) or None, got {self.ema_decay!r}.")
        self.patch_size = tuple(int(p) for p in self.patch_size)  # type: ignore[assignment]
        self.sequences = tuple(self.sequences)
        self.features = tuple(self.features) if self.features else None

    def model_config(self) -> dict[str, Any]:
        """What :func:`mstoolkit.segmentation.models.load_model` needs to rebuild and use the model."""
        return {
            "name": self.model,
            "features": list(self.features) if self.features else None,
            "dropout": self.dropout,
            "sequences": list(self.sequences),
            "out_channels": 1,
            "normalisation": {"method": "zscore", "region": "brain_mask if given, else nonzero voxels of the FLAIR",
                              "background": 0.0},
            "patch_size": list(self.patch_size),
            "threshold": 0.5,
        }


#: Name of the shipped reference model (reports and ``mstoolkit segment`` print it).
REFERENCE_TITLE = "mstoolkit reference tiny U-Net (phantom-trained, FLAIR+T1)"
#: Name of the shipped model ``reference-v2`` (preset ``reference_v2``: also trained on patient26).
REFERENCE_V2_TITLE = "mstoolkit reference tiny U-Net v2 (phantom + patient26, FLAIR+T1)"

#: Named settings for ``mstoolkit train --preset``. Without ``--data``, ``quick``, ``workshop`` and ``full`` train
#: and validate on the subjects of the notebooks' split of the same name (:data:`mstoolkit.data.datasets.SUBJECT_SPLITS`);
#: for ``reference``, ``n_subjects``, ``n_val`` and ``real_lesion_share`` describe its own phantom and ``real_share``
#: the share of patches from the real sample patient26
#: (see :func:`mstoolkit.segmentation.training_data.reference_training_cases`).
PRESETS: dict[str, dict[str, Any]] = {
    "quick": dict(epochs=2, iterations_per_epoch=4, patch_size=(32, 32, 32), batch_size=2),
    # = notebook 03's `workshop` profile: about 7 minutes on 2 CPU cores, under 2 GB; learning rate 5e-3
    # because 3e-3 was still far from converged in this budget (validation Dice 0.79 vs 0.86)
    "workshop": dict(epochs=36, iterations_per_epoch=40, patch_size=(48, 48, 48), batch_size=2, augment="light",
                     dropout=0.1, validate_every=2, patience=5, learning_rate=5e-3),
    "full": dict(epochs=200, iterations_per_epoch=250, patch_size=(96, 96, 96), batch_size=4, features=(16, 32, 64, 128, 256),
                 augment="domain", patience=20),
    # dropout 0.1 so that notebook 06 can use MC dropout with the shipped model; one positive patch in three
    # (as nnU-Net) so that the model sees enough healthy tissue not to over-segment; two validation subjects;
    # a moving average of the weights, steadier than the last step's (chosen on phantom data: MODEL_CARD.md).
    "reference": dict(epochs=120, iterations_per_epoch=50, patch_size=(48, 48, 48), batch_size=2, features=(8, 16, 32, 64),
                      augment="domain", learning_rate=5e-3, validate_every=6, dropout=0.1, positive_fraction=0.33,
                      ema_decay=0.995, n_subjects=18, n_val=2),
}
# The shipped model "reference-v2": the same recipe, plus the real sample patient26 (both halves) for a third of the
# patches, chosen by the two-fold hemisphere split of patient26 (benchmarks/bench_hemisphere_split.py, MODEL_CARD.md).
PRESETS["reference_v2"] = {**PRESETS["reference"], "real_share": 1 / 3}
