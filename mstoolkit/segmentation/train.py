"""Train a lesion segmentation network: a plain, readable training loop.

One epoch = ``iterations_per_epoch`` steps on random patches, half centred on
lesion voxels and half on healthy brain (lesions fill < 2 % of the brain, so
uniform patches would teach the network to answer "no lesion" everywhere).
After each epoch the model segments the whole validation volumes with
sliding-window inference and the validation Dice decides the best checkpoint.

What the loop does, in order: pick a device, seed everything, cache the
normalised volumes in memory, build model/loss/optimiser, then per epoch
(sample → augment → forward → loss → backward → step), validate, log, save
``last.pt`` and ``best.pt``, stop early when validation stops improving.
Mixed precision runs on CUDA only (bfloat16 where the GPU supports it, else
float16 with a gradient scaler). Launched by ``torchrun``, the same loop runs
with DistributedDataParallel: each process samples different patches and
gradients are averaged.

Introduced in notebook 03 (U-Net training).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from mstoolkit.data.io import Case, MSToolkitInputError, write_atomic
from mstoolkit.display.plots import plot_history
from mstoolkit.runtime import pick_device, release_memory
from mstoolkit.segmentation.config import LOSS_NAMES, PRESETS, REFERENCE_TITLE, REFERENCE_V2_TITLE, TrainConfig
from mstoolkit.segmentation.models import build_model, export_reference, save_model
from mstoolkit.segmentation.training_data import (
    cache_cases,
    ignore_unlabelled,
    load_training_cases,
    make_patch_sampler,
    reference_training_cases,
    sample_batch,
)
from mstoolkit.segmentation.validation import tune_postprocessing, validation_dice

__all__ = [
    "build_loss",
    "TwoClassGeneralizedDice",
    "amp_settings",
    "seed_everything",
    "train",
    "train_ensemble",
    "compare_augmentations",
    "held_out_gaps",
    "cli_train",
]

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- building blocks


def build_loss(name: str = "dice_ce") -> nn.Module:
    """A segmentation loss for one-channel logits (MONAI's implementations).

    ``"dice"`` (overlap, insensitive to class imbalance), ``"dice_ce"`` (Dice +
    binary cross-entropy: stable gradients early on), ``"dice_focal"`` (Dice +
    focal loss: focuses on hard voxels), ``"tversky"`` (α=0.3, β=0.7: missing
    a lesion costs more than a false alarm), ``"generalized_dice"`` (Sudre et al.
    2017: Dice of lesion and background, each weighted by 1/volume², so the rare
    class counts as much as the common one), ``"focal"`` (Lin et al. 2017, γ = 2:
    cross-entropy that down-weights voxels already predicted well).

    Introduced in notebook 03.
    """
    from monai import losses

    # batch=True: one Dice over all patches of the batch. Per-patch Dice is undefined on patches
    # without lesion, and its push towards exactly zero there drowns the signal from lesions.
    if name == "dice":
        return losses.DiceLoss(sigmoid=True, batch=True)
    if name == "dice_ce":
        return losses.DiceCELoss(sigmoid=True, batch=True)
    if name == "dice_focal":
        return losses.DiceFocalLoss(sigmoid=True, batch=True)
    if name == "tversky":
        return losses.TverskyLoss(sigmoid=True, alpha=0.3, beta=0.7, batch=True)
    if name == "generalized_dice":
        return TwoClassGeneralizedDice()
    if name == "focal":
        return losses.FocalLoss(gamma=2.0, use_softmax=False)  # Lin et al. 2017's gamma; sigmoid on the logits
    raise MSToolkitInputError(f"Unknown loss {name!r}; allowed: {', '.join(LOSS_NAMES)}.")


class TwoClassGeneralizedDice(nn.Module):
    """Generalised Dice loss (Sudre et al. 2017) for one-channel lesion logits.

    With one channel the class weights 1/|G|² cancel out and the loss is plain Dice, so the
    logit is turned into two classes, background ``1 − sigmoid`` and lesion ``sigmoid``, and
    MONAI's ``GeneralizedDiceLoss`` weights each by the inverse square of its volume.

    Introduced in notebook 03.
    """

    def __init__(self) -> None:
        super().__init__()
        from monai.losses import GeneralizedDiceLoss

        self.loss = GeneralizedDiceLoss(softmax=False, batch=True)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        lesion = torch.sigmoid(logits)
        return self.loss(torch.cat([1 - lesion, lesion], dim=1), torch.cat([1 - target, target], dim=1))


def amp_settings(device: torch.device | str, *, enabled: bool = True, bf16_supported: bool | None = None) -> tuple[bool, torch.dtype, bool]:
    """Mixed-precision choice: ``(use_autocast, dtype, use_grad_scaler)``.

    On CUDA, bfloat16 where the GPU supports it (no scaler needed: same range as
    float32), else float16 with a gradient scaler (small gradients would
    underflow to zero). On CPU and MPS, full float32.

    >>> amp_settings("cuda", bf16_supported=False)
    (True, torch.float16, True)
    >>> amp_settings("cpu")
    (False, torch.float32, False)
    """
    if not enabled or torch.device(device).type != "cuda":
        return False, torch.float32, False
    if bf16_supported is None:
        bf16_supported = torch.cuda.is_bf16_supported()
    return (True, torch.bfloat16, False) if bf16_supported else (True, torch.float16, True)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    import random

    random.seed(seed)
    # the legacy global RNG on purpose: code we do not own (MONAI, older libraries) draws from it
    np.random.seed(seed % 2**32)  # noqa: NPY002
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- the loop


def _distributed() -> tuple[int, int]:
    """``(rank, world_size)``; starts the process group when launched by torchrun."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), dist.get_world_size()) if world > 1 else (0, 1)


def train(
    config: TrainConfig,
    train_cases: Sequence[Case],
    val_cases: Sequence[Case] = (),
    *,
    callback: Callable[[dict], None] | None = None,
) -> tuple[nn.Module, dict[str, list]]:
    """Train a model; return it (best weights when validated) and its history.

    Parameters
    ----------
    config : TrainConfig
    train_cases, val_cases : sequences of :class:`mstoolkit.data.io.Case` with lesion masks
    callback : callable, optional
        Called with the history after each epoch (notebook 03 draws live curves).

    Returns
    -------
    model : torch.nn.Module (eval mode, on the training device)
    history : dict of lists: ``epoch``, ``loss``, ``val_dice``, ``lr``, ``seconds``

    When ``config.out_dir`` is set, ``last.pt`` (everything needed to resume),
    ``best.pt`` (weights + model config, for :func:`mstoolkit.segmentation.models.load_model`)
    and ``history.json`` are written there (``mstoolkit train`` adds ``history.png``).

    Introduced in notebook 03.
    """
    from tqdm.auto import tqdm

    from mstoolkit.preprocessing.transforms import augmentation_pipeline

    if not train_cases:
        raise MSToolkitInputError("'train_cases' is empty; pass at least one Case with a lesion mask.")
    rank, world = _distributed()
    device = pick_device(config.device, verbose=rank == 0)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    amp = amp_settings(device, enabled=config.amp)
    out_dir = Path(config.out_dir) if config.out_dir else None

    seed_everything(config.seed)
    release_memory()  # memory earlier steps freed (a notebook's previous cells) goes back first: training needs it
    cached_train = cache_cases(train_cases, config.sequences, min_size=config.patch_size)
    cached_val = cache_cases(val_cases, config.sequences) if rank == 0 else []
    model = build_model(config.model, in_channels=len(config.sequences), dropout=config.dropout, features=config.features).to(device)
    # 3D convolutions run about 1.5x faster on CPU with channels-last memory layout (same results).
    memory_format = torch.channels_last_3d if device.type == "cpu" else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    loss_fn = build_loss(config.loss)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(config.epochs, 1), eta_min=config.learning_rate * 0.02)
    scaler = torch.amp.GradScaler("cuda", enabled=amp[2])
    # Weight averaging: single steps make the weights jitter; their moving average is steadier.
    averaged = (torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(config.ema_decay))
                if config.ema_decay else None)
    evaluated = averaged.module if averaged is not None else model  # what validation scores and checkpoints keep
    history: dict[str, list] = {"epoch": [], "loss": [], "val_dice": [], "lr": [], "seconds": []}
    best_dice, bad_validations, start_epoch, elapsed_before = -1.0, 0, 0, 0.0
    best_state: dict[str, torch.Tensor] | None = None

    if config.resume and out_dir is not None and (out_dir / "last.pt").exists():
        state = torch.load(out_dir / "last.pt", map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        if averaged is not None:
            averaged.load_state_dict(state["averaged"])
        history, best_dice, bad_validations = state["history"], state["best_dice"], state["bad_validations"]
        start_epoch = state["epoch"] + 1
        elapsed_before = history["seconds"][-1] if history["seconds"] else 0.0
        if rank == 0:
            log.info("Resuming from %s at epoch %d", out_dir / "last.pt", start_epoch)

    net = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    crop = make_patch_sampler(config)
    augment = augmentation_pipeline(config.augment, config.patch_size, lesion_contrast=config.lesion_contrast)
    steps = max(1, -(-config.iterations_per_epoch // world))  # each process does its share
    started = time.perf_counter()
    for epoch in range(start_epoch, config.epochs):
        # Seeded per epoch (and per process), so a resumed run continues exactly as an unbroken one.
        rng = np.random.default_rng([config.seed, epoch, rank])
        torch.manual_seed(config.seed * 100_003 + epoch * 101 + rank)
        net.train()
        losses = []
        bar = tqdm(range(steps), desc=f"epoch {epoch + 1}/{config.epochs}", leave=False, disable=not config.progress or rank != 0)
        for _ in bar:
            images, labels = sample_batch(cached_train, config, rng, crop, augment)
            images, labels = images.to(device, memory_format=memory_format), labels.to(device)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=amp[1], enabled=amp[0]):
                loss = loss_fn(*ignore_unlabelled(net(images), labels))
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            if averaged is not None:
                averaged.update_parameters(model)
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        mean_loss = float(np.mean(losses))
        if world > 1:
            mean_loss = _all_reduce_mean(mean_loss, device)
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()

        val_dice = float("nan")
        stop = False
        if rank == 0:
            if cached_val and ((epoch + 1) % config.validate_every == 0 or epoch + 1 == config.epochs):
                val_dice = validation_dice(evaluated, cached_val, config, device, amp)
            history["epoch"].append(epoch + 1)
            history["loss"].append(mean_loss)
            history["val_dice"].append(val_dice)
            history["lr"].append(lr)
            history["seconds"].append(round(elapsed_before + time.perf_counter() - started, 2))
            improved = not np.isnan(val_dice) and val_dice > best_dice
            if improved:
                best_dice, bad_validations = val_dice, 0
                best_state = {k: v.detach().clone() for k, v in evaluated.state_dict().items()}
            elif not np.isnan(val_dice):
                bad_validations += 1
            if out_dir is not None:
                _save_checkpoints(out_dir, model, averaged, optimizer, scheduler, scaler, config, history, epoch,
                                  best_dice, bad_validations, improved or not cached_val)
            if config.progress:
                shown = "" if np.isnan(val_dice) else f", val Dice {val_dice:.3f} (best {best_dice:.3f})"
                tqdm.write(f"epoch {epoch + 1}/{config.epochs}: loss {mean_loss:.4f}{shown}, {history['seconds'][-1]:.0f} s")
            if callback is not None:
                callback(history)
            stop = config.patience is not None and bad_validations >= config.patience
        if world > 1:
            stop = bool(_all_reduce_mean(float(stop), device) > 0)
        if stop:
            if rank == 0 and config.progress:
                tqdm.write(f"Early stopping: no improvement in {config.patience} validations.")
            break

    if best_state is not None:
        model.load_state_dict(best_state)
    elif averaged is not None and not cached_val:  # no validation: the averaged weights are the result
        model.load_state_dict(evaluated.state_dict())
    elif out_dir is not None and rank == 0 and (out_dir / "best.pt").exists():  # resumed run: best may predate it
        model.load_state_dict(torch.load(out_dir / "best.pt", map_location="cpu", weights_only=True)["model"])
    if rank == 0 and cached_val:
        # predict() uses both by default
        model.threshold, model.min_lesion_mm3 = tune_postprocessing(model, cached_val, config, device, amp)
        if out_dir is not None and (out_dir / "best.pt").exists():
            best = torch.load(out_dir / "best.pt", map_location="cpu", weights_only=True)
            save_model(out_dir / "best.pt", model, {**best["config"], "threshold": model.threshold,
                                                    "min_lesion_mm3": model.min_lesion_mm3})
    if world > 1:
        import torch.distributed as dist

        for tensor in model.state_dict().values():  # every process returns rank 0's best model
            dist.broadcast(tensor, src=0)
        dist.barrier()
    del cached_train, cached_val  # the normalised volumes: give their memory back now (Binder allows 2 GB)
    release_memory()
    return model.eval(), history


def _all_reduce_mean(value: float, device: torch.device) -> float:
    import torch.distributed as dist

    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor.item()) / dist.get_world_size()


def _save_checkpoints(out_dir: Path, model, averaged, optimizer, scheduler, scaler, config: TrainConfig, history: dict,
                      epoch: int, best_dice: float, bad_validations: int, is_best: bool) -> None:
    """``last.pt`` (resumable state) every epoch; ``best.pt`` when validation improved
    (the averaged weights when ``config.ema_decay`` is set)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model_config = {**config.model_config(), "trained": {"epoch": epoch + 1, "val_dice": best_dice,
                                                         "train_config": json.loads(json.dumps(asdict(config), default=str))}}
    state = {
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": model_config,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "history": history,
        "epoch": epoch,
        "best_dice": best_dice,
        "bad_validations": bad_validations,
    }
    if averaged is not None:
        state["averaged"] = averaged.state_dict()
    write_atomic(out_dir / "last.pt", lambda tmp: torch.save(state, tmp))
    if is_best:
        save_model(out_dir / "best.pt", averaged.module if averaged is not None else model, model_config)
    write_atomic(out_dir / "history.json", json.dumps(history, indent=1))


def train_ensemble(config: TrainConfig, train_cases: Sequence[Case], val_cases: Sequence[Case] = (), *, members: int = 3) -> list[tuple[nn.Module, dict]]:
    """Train ``members`` models with seeds ``seed .. seed + members - 1`` (a deep ensemble, notebook 06).

    Each member is saved in ``out_dir/member-K`` when ``out_dir`` is set.
    """
    if members < 1:
        raise MSToolkitInputError(f"'members' must be a positive integer, got {members!r}.")
    results = []
    for k in range(members):
        out = str(Path(config.out_dir) / f"member-{k}") if config.out_dir else None
        results.append(train(replace(config, seed=config.seed + k, out_dir=out), train_cases, val_cases))
    return results


def compare_augmentations(config: TrainConfig, train_cases: Sequence[Case], test_cases: Sequence[tuple[str, Case]], *,
                          arms: Sequence[str] = ("light", "domain"), seeds: Sequence[int] = (0, 1),
                          threshold: float = 0.5, verbose: bool = True):
    """A controlled experiment: models that differ in their augmentation and nothing else.

    For each seed and each arm (an ``augment`` setting) one model is trained from ``config`` with
    that ``augment`` and ``seed``, without validation and for exactly ``epochs × iterations_per_epoch``
    steps (no early stopping, no checkpoint choice, no files). Two models of one seed start from the
    same weights and draw the same patches in the same order, flipped the same way, so what differs
    between them is the augmentation. Each model is scored on every ``(profile, case)`` of
    ``test_cases``: Dice at ``threshold``, fixed in advance (no threshold or small-lesion
    removal tuned on anything).

    Returns a ``pandas.DataFrame``, one row per model and test case: ``augment``, ``seed``,
    ``profile``, ``case_id``, ``dice``. :func:`held_out_gaps` summarises it.

    Introduced in notebook 03 (section 8); ``benchmarks/bench_domain_shift.py`` reruns it with more seeds.
    """
    import pandas as pd

    from mstoolkit.evaluation.metrics import dice
    from mstoolkit.segmentation.inference import predict

    if not test_cases:
        raise MSToolkitInputError("'test_cases' is empty; pass (profile, Case) pairs with lesion masks.")
    rows = []
    for seed in seeds:
        for arm in arms:
            run = replace(config, augment=arm, seed=int(seed), out_dir=None, resume=False, patience=None)
            model, history = train(run, train_cases)
            for profile, case in test_cases:
                _, mask = predict(model, case, sequences=run.sequences, threshold=threshold, min_lesion_mm3=0.0,
                                  device=str(next(model.parameters()).device), roi_size=run.val_roi_size)
                rows.append({"augment": arm, "seed": int(seed), "profile": profile, "case_id": case.case_id,
                             "dice": float(dice(mask, case.mask))})
            if verbose:
                scores = [r["dice"] for r in rows[-len(test_cases):]]
                print(f"augment={arm!r}, seed {seed}: {run.epochs * run.iterations_per_epoch} steps in "
                      f"{history['seconds'][-1]:.0f} s; mean test Dice {np.mean(scores):.3f}")
            del model
            release_memory()
    return pd.DataFrame(rows)


def held_out_gaps(results, held_out: str, *, seen: Sequence[str] | None = None):
    """Per arm and seed: mean Dice on the scanners training saw, Dice on the ``held_out`` one, and the gap.

    ``results`` is :func:`compare_augmentations`' table. Each profile's Dice is the mean over its test
    cases; ``seen`` (the profiles of the training subjects; default: every profile but ``held_out``)
    is averaged into one column, and ``gap = seen − held_out`` is how much a model loses on the
    scanner it never saw.
    """
    by_profile = results.groupby(["augment", "seed", "profile"])["dice"].mean().unstack("profile")
    if held_out not in by_profile:
        raise MSToolkitInputError(f"No test case of the held-out profile {held_out!r}; profiles: {', '.join(by_profile)}.")
    seen = [p for p in by_profile if p != held_out] if seen is None else list(dict.fromkeys(seen))
    unknown = [p for p in seen if p not in by_profile or p == held_out]
    if unknown or not seen:
        raise MSToolkitInputError(f"'seen' must name tested profiles other than {held_out!r}, got {seen!r}; "
                                  f"tested: {', '.join(by_profile)}.")
    mean_seen = by_profile[seen].mean(axis=1)
    return by_profile.assign(seen=mean_seen, held_out=by_profile[held_out],
                             gap=mean_seen - by_profile[held_out])[["seen", "held_out", "gap"]]


def cli_train(args) -> int:
    """``mstoolkit train --preset NAME --data DIR --out DIR``: train, save checkpoints and the history figure."""
    from mstoolkit.data.datasets import list_cases, subject_split
    from mstoolkit.phantom.dataset import ensure_phantom

    if args.preset not in PRESETS:
        raise MSToolkitInputError(f"Unknown preset {args.preset!r}; allowed: {', '.join(PRESETS)}.")
    settings = dict(PRESETS[args.preset])
    n_subjects = settings.pop("n_subjects", None)
    n_val = settings.pop("n_val", None)
    real_lesion_share = settings.pop("real_lesion_share", 0.0)
    real_share = settings.pop("real_share", 0.0)
    if args.epochs is not None:
        settings["epochs"] = args.epochs
    config = TrainConfig(**settings, device=args.device, seed=args.seed, out_dir=args.out, resume=args.resume)
    if args.data:
        data_dir = Path(args.data)
        train_cases, val_cases = load_training_cases(data_dir, n_val=max(1, len(list(data_dir.glob("sub-*"))) // 5), sequences=config.sequences)
    elif n_subjects is not None:  # the reference presets: their own phantom (+ patient26)
        real = f", and the real sample patient26 for {real_share:.0%} of the patches" if real_share else ""
        print(f"Generating the reference training data: {n_subjects} phantom subjects over all scanner profiles{real}.")
        train_cases, val_cases = reference_training_cases(n_subjects, n_val=n_val or 1, real_lesion_share=real_lesion_share,
                                                          real_share=real_share)
    else:
        split = subject_split(args.preset)
        data_dir = ensure_phantom(n_subjects=split.n_subjects, seed=0)
        print(f"No --data given: the phantom (seed 0) in the cache folder; training on {', '.join(split.train)}, "
              f"validating on {', '.join(split.validation)} (the notebooks' '{args.preset}' split).")
        refs = list_cases(data_dir)
        train_cases, val_cases = ([ref.load(config.sequences) for ref in split.select(refs, role)]
                                  for role in ("train", "validation"))
    if args.ensemble > 1:
        results = train_ensemble(config, train_cases, val_cases, members=args.ensemble)
        folders = [Path(args.out) / f"member-{k}" for k in range(args.ensemble)]
    else:
        results = [train(config, train_cases, val_cases)]
        folders = [Path(args.out)]
    import matplotlib.pyplot as plt

    for (_, history), folder in zip(results, folders):
        fig = plot_history(history, title=f"{args.preset} training")
        fig.savefig(folder / "history.png", dpi=100)
        plt.close(fig)
        dice = [d for d in history["val_dice"] if d == d]
        print(f"{folder}: best validation Dice {max(dice) if dice else float('nan'):.3f} after {history['seconds'][-1]:.0f} s")
    if n_subjects is not None:
        extra = {"title": REFERENCE_V2_TITLE if real_share else REFERENCE_TITLE,
                 "training_data": "mstoolkit.segmentation.training_data.reference_training_cases"
                 f"({n_subjects}, n_val={n_val or 1}, real_lesion_share={real_lesion_share}): phantom seeds "
                 f"1000-{1000 + n_subjects - 1}, all scanner profiles; the last ones validation"
                 + (f"; open_ms_data patient26 (both halves) for {real_share:.2f} of the patches" if real_share else ""),
                 "training_seconds": results[0][1]["seconds"][-1]}
        exported = export_reference(folders[0] / "best.pt", Path(args.out) / "reference", extra=extra)
        folder = "reference_v2" if real_share else "reference"
        print(f"Reference model written to {exported} (copy it to mstoolkit/segmentation/{folder}/ to ship it).")
    return 0
