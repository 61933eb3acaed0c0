"""What the training loop eats: cases cached in memory, patches and their augmentation, splits.

Training draws thousands of patches from a few volumes, so each case is
normalised once, cropped to the brain and kept in memory (:func:`cache_cases`);
each step then samples patches centred on lesion or on healthy brain
(:func:`make_patch_sampler`, :func:`sample_batch`), and the loop augments them with the one
augmentation pipeline of the preprocessing room
(:func:`mstoolkit.preprocessing.transforms.augmentation_pipeline`: ``"light"``, flips;
``"domain"``, what scanners change — contrast, bias field, noise, blur, resolution). The splits say
which cases train and which validate, and :func:`reference_phantom_cases` builds
the reference model's phantom data.

Introduced in notebook 03 (U-Net training).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch

from mstoolkit.data.io import Case, MSToolkitInputError, bounding_box

if TYPE_CHECKING:
    from mstoolkit.segmentation.config import TrainConfig

__all__ = ["UNLABELLED", "cache_cases", "split_train_val", "load_training_cases", "reference_phantom_cases",
           "hemisphere", "label_only", "ignore_unlabelled", "real_training_case", "reference_training_cases"]

#: Label value of voxels whose truth training must not see (outside a case's ``meta["labelled_region"]``):
#: the patch sampler never centres a patch there and :func:`ignore_unlabelled` takes them out of the loss.
UNLABELLED = 2


def cache_cases(cases: Sequence[Case], sequences: Sequence[str], *, min_size: Sequence[int] = (0, 0, 0)) -> list[dict]:
    """Normalise each case once and keep it in memory, cropped to the brain.

    Returns dicts with ``"image"`` (C, x, y, z) float32, ``"label"`` (1, x, y, z)
    uint8, the flat indices of lesion (``"fg"``) and healthy-brain
    (``"bg"``) voxels used by the patch sampler, and the case's ``"sampling_weight"``.

    A case whose ``meta["labelled_region"]`` is a boolean mask teaches only there: its label is
    :data:`UNLABELLED` outside it, so no patch is centred outside it and the loss ignores those
    voxels (:func:`label_only`; the hemisphere split of the reference model, MODEL_CARD.md).
    ``meta["sampling_weight"]`` (default 1) makes :func:`sample_batch` draw the case more often.
    """
    from mstoolkit.segmentation.inference import brain_region, prepare_inputs

    cached = []
    for case in cases:
        if case.mask is None:
            raise MSToolkitInputError(f"Case '{case.case_id}' has no lesion mask; training needs ground truth.")
        image = prepare_inputs(case, sequences)
        brain = brain_region(case)
        label = case.mask.astype(np.uint8)
        region = case.meta.get("labelled_region")
        if region is not None:
            if np.shape(region) != case.shape:
                raise MSToolkitInputError(f"Case '{case.case_id}': 'labelled_region' has shape {np.shape(region)}, the images "
                                          f"{case.shape}; build it on the case's grid (e.g. training_data.hemisphere).")
            label = np.where(np.asarray(region, dtype=bool), label, UNLABELLED).astype(np.uint8)
        box = bounding_box(brain, margin=4) or tuple(slice(0, n) for n in brain.shape)
        image, label, brain = image[(slice(None), *box)], label[box][None], brain[box]
        pads = [(0, 0)] + [(0, max(0, int(m) - n)) for m, n in zip(min_size, label.shape[1:])]
        image, label, brain = np.pad(image, pads), np.pad(label, pads), np.pad(brain, pads[1:])
        lesion = label[0] == 1
        healthy = brain.astype(bool) & (label[0] == 0)  # unlabelled voxels are neither
        cached.append({
            "image": np.ascontiguousarray(image, dtype=np.float32),
            "label": np.ascontiguousarray(label, dtype=np.uint8),
            # int32 halves the memory of the indices (a brain has ~1.5 million voxels; any volume < 2**31)
            "fg": np.flatnonzero(lesion).astype(np.int32),
            "bg": np.flatnonzero(healthy).astype(np.int32),
            "case_id": case.case_id,
            "spacing": case.spacing,
            "sampling_weight": float(case.meta.get("sampling_weight", 1.0)),
        })
    return cached


def make_patch_sampler(config: TrainConfig) -> Callable:
    """MONAI's sampler of one patch, lesion-centred with probability ``positive_fraction``."""
    from monai.transforms import RandCropByPosNegLabeld

    positive = config.positive_fraction
    return RandCropByPosNegLabeld(keys=["image", "label"], label_key="label", spatial_size=config.patch_size, pos=positive,
                                  neg=1.0 - positive, num_samples=1, fg_indices_key="fg", bg_indices_key="bg", allow_smaller=True)


def sample_batch(cached: list[dict], config: TrainConfig, rng: np.random.Generator, crop, augment) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_size`` patches: each from a random case (in proportion to its ``sampling_weight``),
    lesion-centred with probability ``positive_fraction``."""
    weights = np.array([item.get("sampling_weight", 1.0) for item in cached], dtype=float)
    uniform = bool(np.all(weights == weights[0]))
    images, labels = [], []
    for _ in range(config.batch_size):
        # uniform cases keep the draw of earlier versions, so their runs repeat exactly
        index = int(rng.integers(len(cached))) if uniform else int(rng.choice(len(cached), p=weights / weights.sum()))
        item = cached[index]
        seed = int(rng.integers(2**31))
        crop.set_random_state(seed=seed)
        patch = crop({"image": item["image"], "label": item["label"], "fg": item["fg"], "bg": item["bg"]})[0]
        if augment is not None:
            augment.set_random_state(seed=seed + 1)
            patch = augment(patch)
        images.append(torch.as_tensor(np.asarray(patch["image"]), dtype=torch.float32))
        labels.append(torch.as_tensor(np.asarray(patch["label"]), dtype=torch.float32))
    return torch.stack(images), torch.stack(labels)


def split_train_val(cases: Sequence[Case], *, profiles: Sequence[str] | None = None, n_val: int = 1) -> tuple[list[Case], list[Case]]:
    """Hold out the last ``n_val`` cases for validation; return ``(train_cases, val_cases)``.

    With ``profiles`` (one scanner profile per case, from a phantom's participants.tsv) the
    validation cases are the last ones of the ``standard`` profile: training sees every
    scanner, validation measures the model on one reference scanner, so validation Dice is
    comparable between runs and datasets of different sizes.

    Introduced in notebook 03.
    """
    cases = list(cases)
    if len(cases) < 2:
        raise MSToolkitInputError(f"Need at least 2 cases (training + validation), got {len(cases)}.")
    n_val = min(max(1, int(n_val)), len(cases) - 1)
    order = list(range(len(cases)))
    if profiles is not None:
        if len(profiles) != len(cases):
            raise MSToolkitInputError(f"'profiles' has {len(profiles)} entries for {len(cases)} cases; give one per case.")
        standard = [i for i in order if profiles[i] == "standard"][-n_val:]
        order = [i for i in order if i not in standard] + standard  # the chosen ones last
    val = set(order[-n_val:])
    return [c for i, c in enumerate(cases) if i not in val], [c for i, c in enumerate(cases) if i in val]


def load_training_cases(data_dir: str | Path, *, n_val: int, sequences: Sequence[str]) -> tuple[list[Case], list[Case]]:
    """Load a dataset folder's cases with lesion masks (only ``sequences``) and split them with :func:`split_train_val`."""
    import pandas as pd
    from tqdm.auto import tqdm

    from mstoolkit.data.datasets import list_cases

    data_dir = Path(data_dir)
    refs = [c for c in list_cases(data_dir) if c.mask is not None]
    if len(refs) < 2:
        raise MSToolkitInputError(f"'{data_dir}' needs at least 2 cases with lesion masks (train + validation), found {len(refs)}.")
    cases = []
    for ref in tqdm(refs, desc="loading cases", leave=False):
        cases.append(ref.load(sequences))  # only the sequences the model reads: less memory
    profiles = None
    table = data_dir / "participants.tsv"
    if table.exists():
        participants = pd.read_csv(table, sep="\t")
        if "profile" in participants:
            by_subject = participants.set_index("participant_id")["profile"]
            profiles = [str(by_subject.get(c.meta.get("subject", c.case_id), "")) for c in cases]
    return split_train_val(cases, profiles=profiles, n_val=n_val)


def reference_phantom_cases(n_subjects: int, *, seed: int = 1000, n_val: int = 1,
                            real_lesion_share: float = 0.0) -> tuple[list[Case], list[Case]]:
    """The reference model's data: phantom subjects cycling through every scanner profile.

    Subject ``k`` has seed ``seed + k`` and profile ``PROFILES[k % 4]``; the last
    ``n_val`` subjects are the validation set. Mixing profiles is part of the
    domain randomisation that lets the model work on real scans. A share
    ``real_lesion_share`` of the training subjects (spread evenly) carry the lesions of
    the real training masks (``REAL_LESION_MASKS["train"]``, in turn) instead of ovoids;
    the validation subjects keep drawn lesions.
    """
    from tqdm.auto import tqdm

    from mstoolkit.phantom.generator import PROFILES, generate_subject
    from mstoolkit.phantom.lesions import REAL_LESION_MASKS

    if not 0.0 <= real_lesion_share <= 1.0:
        raise MSToolkitInputError(f"'real_lesion_share' must be in [0, 1], got {real_lesion_share!r}.")
    profiles, real_masks = list(PROFILES), REAL_LESION_MASKS["train"]
    cases, n_real = [], 0
    for k in tqdm(range(n_subjects), desc="generating phantom subjects", leave=False):
        real = None
        if k < n_subjects - n_val and int((k + 1) * real_lesion_share) > int(k * real_lesion_share):
            real, n_real = real_masks[n_real % len(real_masks)], n_real + 1
        case = generate_subject(seed=seed + k, profile=profiles[k % len(profiles)], real_lesions=real)
        case.images = {name: case.images[name] for name in ("FLAIR", "T1")}  # keep memory low
        cases.append(case)
    return cases[:-n_val], cases[-n_val:]


def hemisphere(case: Case, side: str) -> np.ndarray:
    """Boolean mask of one brain half, ``"left"`` or ``"right"``, split at world x = 0.

    For images in MNI space (the open_ms_data ``*_regtoMNI`` files) x = 0 mm is the midline;
    RAS+ world coordinates put the left hemisphere at x < 0. The reference model trains on one
    half of patient26 and is validated on the other (MODEL_CARD.md).
    """
    if side not in ("left", "right"):
        raise MSToolkitInputError(f"Unknown hemisphere {side!r}; allowed: left, right.")
    i, j, k = np.meshgrid(*(np.arange(n) for n in case.shape), indexing="ij", sparse=True)
    x = case.affine[0, 0] * i + case.affine[0, 1] * j + case.affine[0, 2] * k + case.affine[0, 3]
    return np.broadcast_to(x < 0 if side == "left" else x >= 0, case.shape).copy()


def label_only(case: Case, region: np.ndarray, *, sampling_weight: float = 1.0) -> Case:
    """The same case, teaching only inside ``region`` (see :func:`cache_cases`), drawn ``sampling_weight`` times as often."""
    from dataclasses import replace

    return replace(case, meta={**case.meta, "labelled_region": np.asarray(region, dtype=bool),
                               "sampling_weight": float(sampling_weight)})


def ignore_unlabelled(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Take :data:`UNLABELLED` voxels out of a loss: there the logit becomes a constant, confident "no lesion" and the
    label 0, so they add nothing to Dice's sums, almost nothing to cross-entropy, and no gradient.

    Works for every loss of :func:`mstoolkit.segmentation.train.build_loss` without changing it.
    """
    unknown = labels == UNLABELLED  # no test of unknown.any(): on a GPU it would wait for the device every step
    return logits.masked_fill(unknown, -20.0), labels.masked_fill(unknown, 0.0)


def real_training_case(share: float, n_other: int, *, held_out_half: str | None = None) -> Case:
    """open_ms_data patient26 (the shipped real sample, FLAIR + T1 + consensus mask) as a training case.

    It is drawn for ``share`` of the patches when it joins ``n_other`` equally weighted cases
    (a weight ``w`` among ``n`` cases of weight 1 gives it ``w / (n + w)`` of them). With
    ``held_out_half`` (``"left"`` or ``"right"``) only the other half teaches, so the held-out
    half can measure the model on real tissue it never learnt from (the hemisphere split,
    ``benchmarks/bench_hemisphere_split.py``).
    """
    from mstoolkit.data.datasets import load_dataset_case, real_sample_dir

    if not 0.0 < share < 1.0:
        raise MSToolkitInputError(f"The real case's share of patches must be between 0 and 1, got {share!r}.")
    case = load_dataset_case(real_sample_dir(), "patient26", sequences=("FLAIR", "T1"))
    if held_out_half is None:
        region = np.ones(case.shape, bool)
    else:
        region = hemisphere(case, {"left": "right", "right": "left"}.get(held_out_half, held_out_half))
    return label_only(case, region, sampling_weight=share * n_other / (1.0 - share))


def reference_training_cases(n_subjects: int, *, n_val: int = 1, real_lesion_share: float = 0.0, real_share: float = 0.0,
                             held_out_half: str | None = None) -> tuple[list[Case], list[Case]]:
    """The reference model's data: :func:`reference_phantom_cases`, plus patient26 for ``real_share`` of the patches.

    Validation (the checkpoint, the threshold and the minimum lesion size) stays on the phantom
    validation subjects, so nothing real is used for a choice; see :func:`real_training_case`
    for ``held_out_half``.
    """
    train_cases, val_cases = reference_phantom_cases(n_subjects, n_val=n_val, real_lesion_share=real_lesion_share)
    if real_share:
        train_cases.append(real_training_case(real_share, len(train_cases), held_out_half=held_out_half))
    return train_cases, val_cases
