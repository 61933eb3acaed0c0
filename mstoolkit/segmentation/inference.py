"""Segment lesions in a whole scan with a trained model, and ``mstoolkit segment``.

A network trained on small patches cannot take a whole brain at once on a small
GPU or CPU, so :func:`predict` slides a window over the volume and blends the
overlapping windows with Gaussian weights (:func:`sliding_window_logits`: the
windows and weights of ``monai.inferers.sliding_window_inference``, written out
here in a few lines, so that segmenting a scan does not wait ~2 s for MONAI to
import). Options: flip test-time augmentation, the
probability threshold, and removal of connected components smaller than a
minimum volume in mm³ (tiny specks are usually noise, and the McDonald
criteria count lesions ≥ 3 mm in diameter).

Inputs are normalised exactly as in training (:func:`prepare_inputs`):
each sequence is z-scored within the brain (the brain mask when the case has
one, else the non-zero voxels of the FLAIR: skull-stripped scans are zero
outside the brain) and set to 0 outside it.

Introduced in notebook 03 (U-Net training).
"""

from __future__ import annotations

import ctypes
import itertools
import json
import math
import os
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from mstoolkit.data.io import Case, MSToolkitInputError, bounding_box, spacing_from_affine, write_atomic
from mstoolkit.runtime import pick_device, release_memory

__all__ = ["brain_region", "prepare_inputs", "check_model_inputs", "window_starts", "gaussian_weights", "sliding_window_logits",
           "PRECISIONS", "cpu_has_native_bfloat16", "inference_precision", "predict", "remove_small_lesions", "lesion_report", "segment_files", "cli_segment"]


def brain_region(case: Case) -> np.ndarray:
    """Boolean mask of the voxels normalisation uses: ``case.brain_mask``, else the FLAIR's non-zero voxels."""
    if case.brain_mask is not None:
        return case.brain_mask.astype(bool)
    reference = case.images.get("FLAIR", next(iter(case.images.values())))
    region = reference != 0
    if not region.any():
        raise MSToolkitInputError(f"Case '{case.case_id}': the FLAIR is all zeros; there is no brain to segment.")
    return region


def prepare_inputs(case: Case, sequences: Sequence[str] = ("FLAIR", "T1")) -> np.ndarray:
    """Stack and normalise a case's images for a model: (channels, x, y, z) float32.

    Each sequence is z-scored within :func:`brain_region` and set to 0 outside it,
    as in training. Raises a clear error when a sequence is missing or an image
    is not 3D.

    Introduced in notebook 03.
    """
    from mstoolkit.preprocessing.normalization import normalize_zscore

    if "FLAIR" in sequences and "FLAIR" not in case.images:
        raise MSToolkitInputError(
            f"Case '{case.case_id}' has no FLAIR image (it has {', '.join(case.images)}); "
            "lesion segmentation needs a FLAIR: pass --flair FILE (or images={'FLAIR': ...})."
        )
    for name, image in case.images.items():
        if np.ndim(image) != 3:
            raise MSToolkitInputError(f"Image {name} of case '{case.case_id}' has shape {np.shape(image)}; expected a 3D volume (x, y, z).")
    stacked = case.stack(sequences)
    region = brain_region(case)
    return np.stack([normalize_zscore(channel, mask=region) for channel in stacked])


def window_starts(size: int, window: int, overlap: float) -> list[int]:
    """Where the windows along one axis start: a step of ``window·(1 − overlap)``, the last one flush with the end.

    The same places as MONAI's sliding window (a window as large as the axis is placed once).

    >>> window_starts(180, 96, 0.25)
    [0, 72, 84]
    """
    step = window if window == size else max(int(window * (1 - overlap)), 1)
    count = 1 + math.ceil(max(size - window, 0) / step)
    return [min(i * step, size - window) for i in range(count)]


def gaussian_weights(window: Sequence[int], *, device: torch.device | str = "cpu") -> torch.Tensor:
    """How much each voxel of a window counts when overlapping windows are blended: a Gaussian, σ = window/8.

    A network sees less context near a window's border, so its output there counts less. The same
    weights as MONAI's ``compute_importance_map(mode="gaussian")``, at least 1e-3 so that every voxel counts.
    """
    weights = torch.ones((), dtype=torch.float32, device=device)
    for n in window:
        x = torch.arange(-(n - 1) / 2.0, (n - 1) / 2.0 + 1, dtype=torch.float32, device=device)
        profile = torch.exp(x**2 / (-2 * (0.125 * n) ** 2))
        weights = weights.unsqueeze(-1) * profile  # the outer product, one axis at a time
    return weights.clamp(min=max(weights.min().item(), 1e-3))


def sliding_window_logits(model: nn.Module, inputs: torch.Tensor, roi_size: Sequence[int], overlap: float, *,
                          sw_batch_size: int = 2, fit_to_volume: bool = True, use_monai: bool = False) -> torch.Tensor:
    """The network's output on a whole ``(batch, channels, x, y, z)`` volume, window by window, Gaussian-blended.

    The toolkit's one sliding-window inference: :func:`predict`, validation during training
    (:mod:`mstoolkit.segmentation.validation`) and :mod:`mstoolkit.uncertainty.sampling` call it.
    ``sw_batch_size`` windows go through the network at once. With ``fit_to_volume`` a window larger
    than the volume shrinks to it (a small volume is never padded up to the window); without, the
    volume is zero-padded (half before, half after) to the window. Returns the logits
    ``(batch, out_channels, x, y, z)`` on the inputs' device; the caller chooses ``torch.no_grad`` and autocast.

    The windows (:func:`window_starts`) and weights (:func:`gaussian_weights`) are those of
    ``monai.inferers.sliding_window_inference``; ``use_monai=True`` calls MONAI itself (the same
    result to float rounding: ``tests/test_inference.py`` checks it).
    """
    window = tuple(int(r) for r in roi_size)
    if fit_to_volume:
        window = tuple(min(r, n) for r, n in zip(window, inputs.shape[2:]))
    if use_monai:
        from monai.inferers import sliding_window_inference

        return sliding_window_inference(inputs, window, sw_batch_size, model, overlap=overlap, mode="gaussian")
    size = tuple(inputs.shape[2:])
    before = [max(r - n, 0) // 2 for r, n in zip(window, size)]
    after = [max(r - n, 0) - b for r, n, b in zip(window, size, before)]
    pads = [p for b, a in zip(reversed(before), reversed(after)) for p in (b, a)]  # F.pad lists the last axis first
    padded = F.pad(inputs, pads) if any(pads) else inputs
    padded_size = tuple(padded.shape[2:])
    corners = list(itertools.product(*(window_starts(n, r, overlap) for n, r in zip(padded_size, window))))
    weights = gaussian_weights(window, device=inputs.device).to(inputs.dtype)
    weight_sum = torch.zeros(padded_size, dtype=inputs.dtype, device=inputs.device)
    total = None  # the weighted sum of the windows' logits; its channels are known after the first window
    batch = inputs.shape[0]
    for first in range(0, len(corners), sw_batch_size):
        boxes = [tuple(slice(c, c + r) for c, r in zip(corner, window)) for corner in corners[first:first + sw_batch_size]]
        logits = model(torch.cat([padded[(slice(None), slice(None), *box)] for box in boxes]))
        if total is None:
            total = torch.zeros((batch, logits.shape[1], *padded_size), dtype=inputs.dtype, device=inputs.device)
        for i, box in enumerate(boxes):
            total[(slice(None), slice(None), *box)] += logits[i * batch:(i + 1) * batch] * weights
            weight_sum[box] += weights
    total /= weight_sum
    return total[(slice(None), slice(None), *(slice(b, b + n) for b, n in zip(before, size)))]


@contextmanager
def keep_freed_memory_for_reuse():
    """While windows go through the network on Linux, let glibc keep the memory they free for the next window.

    Each 96³ window's feature maps are blocks of 28-56 MB. glibc gives blocks that large straight
    back to the system when they are freed, and the next window asks for them again as fresh pages,
    which the kernel must zero: on a 2-core CPU that costs ~4 s of system time per brain, a third of
    the work. Raising glibc's two thresholds for the duration keeps the blocks for reuse;
    :func:`mstoolkit.runtime.release_memory` hands them back afterwards. Elsewhere (macOS, Windows,
    musl) this does nothing.
    """
    mallopt = None
    if sys.platform.startswith("linux"):
        try:
            mallopt = ctypes.CDLL("libc.so.6").mallopt
        except (OSError, AttributeError):  # not glibc
            mallopt = None
    trim_threshold, mmap_threshold, default = -1, -3, 128 * 1024  # glibc's M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, their start
    if mallopt is not None:
        mallopt(mmap_threshold, 1 << 30)
        mallopt(trim_threshold, 1 << 30)
    try:
        yield
    finally:
        if mallopt is not None:
            mallopt(mmap_threshold, default)
            mallopt(trim_threshold, default)


#: Arithmetic choices of :func:`predict`: ``"auto"`` picks bfloat16 where it is fast and verified, else float32.
PRECISIONS = ("auto", "float32", "bfloat16")


def cpu_has_native_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (Intel AMX or AVX512-BF16), where it is ~3x faster than float32.

    Elsewhere PyTorch emulates bfloat16, which is slower than float32.
    """
    try:
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except AttributeError:  # a PyTorch without these queries: do not guess
        return False


def inference_precision(model: nn.Module, device: torch.device, precision: str = "auto") -> str:
    """``"float32"`` or ``"bfloat16"``: what :func:`predict` computes in.

    ``"auto"`` takes bfloat16 only for the toolkit's :class:`~mstoolkit.segmentation.models.TinyUNet`
    (whose output layer stays float32) on a CPU with :func:`cpu_has_native_bfloat16`: there its masks
    were measured against float32 (Dice ≥ 0.999, ``benchmarks/bench_segment.py``). Other models,
    GPUs and other CPUs get float32.
    """
    from mstoolkit.segmentation.models import TinyUNet

    if precision not in PRECISIONS:
        raise MSToolkitInputError(f"Unknown precision {precision!r}; allowed: {', '.join(PRECISIONS)}.")
    if precision == "auto":
        native = device.type == "cpu" and cpu_has_native_bfloat16()
        return "bfloat16" if native and isinstance(model, TinyUNet) else "float32"
    return precision


def check_model_inputs(inputs: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``inputs`` (channels, x, y, z) as a detached float32 tensor; a clear error for another shape or NaNs.

    What :func:`prepare_inputs` returns passes; interpretation and uncertainty methods check with this.
    """
    x = inputs.detach().float() if torch.is_tensor(inputs) else torch.as_tensor(np.asarray(inputs, dtype=np.float32))
    if x.ndim != 4:
        raise MSToolkitInputError(
            f"'inputs' must be (channels, x, y, z), got shape {tuple(x.shape)}. "
            "Use mstoolkit.segmentation.inference.prepare_inputs(case, sequences)."
        )
    if not torch.isfinite(x).all():
        raise MSToolkitInputError("'inputs' contains NaN or infinite values; normalise the images first.")
    return x


def predict(
    model: nn.Module,
    case: Case,
    *,
    sequences: Sequence[str] = ("FLAIR", "T1"),
    tta: bool = False,
    threshold: float | None = None,
    min_lesion_mm3: float | None = None,
    device: str = "cpu",
    roi_size: Sequence[int] = (96, 96, 96),
    overlap: float = 0.25,
    fast: bool = True,
    precision: str = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """Lesion probability and binary mask for a whole case, on the case's grid.

    Parameters
    ----------
    model : torch.nn.Module
        Outputs one channel of logits (``build_model`` / ``load_model``).
    case : mstoolkit.data.io.Case
    sequences : the model's input channels, in its order (``config["sequences"]``)
    tta : bool
        Average the prediction over flips along each axis (4 passes; smoother, slower).
    threshold : float, optional
        Probability at or above which a voxel is called lesion. Default: the model's own
        ``threshold`` attribute (chosen on validation data when it was trained, set by
        :func:`mstoolkit.segmentation.models.load_model`), else 0.5.
    min_lesion_mm3 : float, optional
        Remove connected components (26-connectivity) smaller than this volume. Default: the
        model's ``min_lesion_mm3`` attribute (chosen on validation data when it was trained),
        else 0 (keep all).
    device : "cpu", "cuda", "mps" or "auto"
    roi_size, overlap : sliding-window size (voxels) and overlap fraction
    fast : bool
        True (default): the toolkit's own sliding window, one window at a time on a CPU, under
        ``torch.inference_mode`` and :func:`keep_freed_memory_for_reuse` (~3x faster on a 2-core CPU).
        False: the previous path (MONAI's sliding window, two windows at a time, under ``torch.no_grad``),
        kept to check the fast one against: the masks agree to Dice ≥ 0.999 (benchmarks/bench_segment.py).
    precision : "auto", "float32" or "bfloat16"
        The fast path's arithmetic (:func:`inference_precision`); the previous path is always float32.

    Returns
    -------
    probability : float32 (x, y, z) in [0, 1], 0 outside the brain
    mask : uint8 (x, y, z)

    Introduced in notebook 03.
    """
    from mstoolkit.segmentation.models import model_in_channels
    if threshold is None:
        threshold = float(getattr(model, "threshold", 0.5))
    if min_lesion_mm3 is None:
        min_lesion_mm3 = float(getattr(model, "min_lesion_mm3", 0.0))
    if not 0.0 < threshold < 1.0:
        raise MSToolkitInputError(f"'threshold' must be between 0 and 1 (exclusive), got {threshold!r}.")
    expected = model_in_channels(model)
    if expected != len(sequences):
        raise MSToolkitInputError(
            f"The model takes {expected} input channel(s) but {len(sequences)} sequence(s) were given "
            f"({', '.join(sequences)}); pass the sequences it was trained with (config['sequences'])."
        )
    inputs = prepare_inputs(case, sequences)
    region = brain_region(case)
    box = bounding_box(region, margin=8) or tuple(slice(0, n) for n in region.shape)  # only the brain: 2-3x fewer voxels
    torch_device = pick_device(device, verbose=False)
    model = model.to(torch_device).eval()
    cropped = torch.as_tensor(np.ascontiguousarray(inputs[(slice(None), *box)]))[None].to(torch_device)
    flips = [()] + ([(2,), (3,), (4,)] if tta else [])
    total = torch.zeros(cropped.shape[2:], dtype=torch.float32)
    chosen = inference_precision(model, torch_device, precision)  # checks the option on both paths
    bfloat16 = fast and chosen == "bfloat16"
    if fast:
        # on a CPU a batch of two 96³ windows runs slower than the two one after the other (memory, not compute, limits)
        windows_at_once = 1 if torch_device.type == "cpu" else 2
        no_autograd, memory = torch.inference_mode(), keep_freed_memory_for_reuse()
    else:
        windows_at_once, no_autograd, memory = 2, torch.no_grad(), nullcontext()
    arithmetic = torch.autocast(torch_device.type, dtype=torch.bfloat16) if bfloat16 else nullcontext()
    with no_autograd, memory, arithmetic:
        for axes in flips:
            flipped = torch.flip(cropped, axes) if axes else cropped
            logits = sliding_window_logits(model, flipped, roi_size, overlap, sw_batch_size=windows_at_once, use_monai=not fast)
            logits = torch.flip(logits, axes) if axes else logits
            total += torch.sigmoid(logits[0, 0].float()).cpu()
    probability = np.zeros(case.shape, dtype=np.float32)
    probability[box] = (total / len(flips)).numpy()
    probability[~region] = 0.0
    del inputs, cropped, logits, total
    release_memory()  # hand the windows' ~0.4 GB of freed buffers back: a 2 GB kernel runs several predictions
    mask = (probability >= threshold).astype(np.uint8)
    if min_lesion_mm3:
        mask = remove_small_lesions(mask, spacing=case.spacing, min_volume_mm3=min_lesion_mm3)
    return probability, mask


def remove_small_lesions(mask: np.ndarray, *, spacing: Sequence[float], min_volume_mm3: float, connectivity: int = 26) -> np.ndarray:
    """Drop connected components smaller than ``min_volume_mm3`` (uint8 result).

    Components are those of :func:`mstoolkit.evaluation.metrics.label_lesions`, which also drops
    them: predictions and scores remove small lesions alike.

    >>> m = np.zeros((5, 5, 5), np.uint8); m[0, 0, 0] = 1; m[2:5, 2:5, 2:5] = 1
    >>> int(remove_small_lesions(m, spacing=(1, 1, 1), min_volume_mm3=2).sum())
    27
    """
    from mstoolkit.evaluation.metrics import label_lesions

    # the toolkit's one component-size filter: the metrics' (a component at the limit, to 1e-9 mm³, is kept)
    labels, _ = label_lesions(np.asarray(mask, dtype=np.uint8) != 0, spacing=spacing, connectivity=connectivity,
                              min_lesion_mm3=min_volume_mm3)
    return (labels > 0).astype(np.uint8)


def lesion_report(probability: np.ndarray, mask: np.ndarray, affine: np.ndarray, *, connectivity: int = 26) -> dict[str, Any]:
    """Lesion count, total volume (mL) and one row per lesion (id, volume mm³, centroid in world mm, max probability).

    Lesion ids are the connected-component labels (26-connectivity), ordered by volume, largest first.
    """
    import cc3d

    voxel_mm3 = float(np.prod(spacing_from_affine(affine)))
    labels = cc3d.connected_components(np.asarray(mask, dtype=np.uint8), connectivity=connectivity)
    stats = cc3d.statistics(labels)
    max_prob = np.zeros(int(labels.max()) + 1, dtype=np.float64)
    np.maximum.at(max_prob, labels.ravel(), probability.ravel().astype(np.float64))
    rows = []
    for label in range(1, int(labels.max()) + 1):
        centroid = affine @ np.append(np.asarray(stats["centroids"][label], dtype=float), 1.0)
        rows.append({"volume_mm3": round(float(stats["voxel_counts"][label]) * voxel_mm3, 2),
                     "centroid_mm": [round(float(c), 2) for c in centroid[:3]],
                     "max_probability": round(float(max_prob[label]), 4)})
    rows.sort(key=lambda row: -row["volume_mm3"])
    lesions = [{"id": i, **row} for i, row in enumerate(rows, 1)]
    return {"lesion_count": len(lesions), "total_volume_ml": round(float(mask.sum()) * voxel_mm3 / 1000.0, 4), "lesions": lesions}


def segment_files(
    flair: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    t1: str | os.PathLike | None = None,
    t2: str | os.PathLike | None = None,
    model: str | os.PathLike = "reference",
    device: str = "auto",
    skull_strip: bool = False,
    register: bool = False,
    threshold: float | None = None,
    min_lesion_mm3: float | None = None,
    tta: bool = False,
    fast: bool = True,
    precision: str = "auto",
) -> dict[str, Any]:
    """Segment one scan from files; write mask, probability (on the FLAIR's grid) and ``report.json``.

    Returns the report. ``fast=False`` runs :func:`predict`'s previous path (for benchmarks); ``precision``
    is :func:`predict`'s.
    Used by ``mstoolkit segment``; introduced in notebook 03.
    """
    from mstoolkit import __version__
    from mstoolkit.data.io import load_image, save_like
    from mstoolkit.segmentation.models import load_model

    started = time.perf_counter()
    paths = {"FLAIR": flair, "T1": t1, "T2": t2}
    paths = {name: Path(p) for name, p in paths.items() if p is not None}
    net, config = load_model(model, device=device)
    used_precision = inference_precision(net, pick_device(device, verbose=False), precision) if fast else "float32"
    sequences = list(config["sequences"])
    missing = [s for s in sequences if s not in paths]
    if missing:
        flags = " ".join(f"--{s.lower()} FILE" for s in missing)
        raise MSToolkitInputError(f"The model {config.get('title', config['name'])!r} needs {', '.join(sequences)}; "
                                  f"{', '.join(missing)} missing: pass {flags}.")
    flair_image, flair_affine = load_image(paths["FLAIR"])
    images = {"FLAIR": flair_image}
    for name in sequences:
        if name == "FLAIR":
            continue
        image, affine = load_image(paths[name])
        images[name] = _onto_flair_grid(image, affine, flair_image, flair_affine, name=name, register=register)
    brain = None
    if skull_strip:
        from mstoolkit.preprocessing.preprocess import skull_strip as strip

        brain = strip(flair_image, flair_affine)
        images = {name: np.where(brain > 0, image, 0).astype(np.float32) for name, image in images.items()}
    case = Case(case_id=paths["FLAIR"].name.split(".nii")[0], images=images, affine=flair_affine, brain_mask=brain)
    probability, mask = predict(net, case, sequences=sequences, tta=tta, threshold=threshold,
                                min_lesion_mm3=min_lesion_mm3, device=device, fast=fast, precision=precision)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_like(out_dir / "lesion_mask.nii.gz", mask, paths["FLAIR"], dtype=np.uint8)
    save_like(out_dir / "lesion_probability.nii.gz", probability, paths["FLAIR"], dtype=np.float32)
    report = lesion_report(probability, mask, flair_affine)
    used_threshold = threshold if threshold is not None else float(getattr(net, "threshold", 0.5))
    used_min_lesion = min_lesion_mm3 if min_lesion_mm3 is not None else float(getattr(net, "min_lesion_mm3", 0.0))
    report = {
        **report,
        "model": {"name": config.get("title", config["name"]), "architecture": config["name"],
                  "version": config.get("version", __version__), "source": str(model)},
        "inputs": {name: str(path.resolve()) for name, path in paths.items()},
        "settings": {"threshold": used_threshold, "min_lesion_mm3": used_min_lesion, "tta": tta,
                     "skull_strip": skull_strip, "register": register, "precision": used_precision},
        "seconds": round(time.perf_counter() - started, 2),
    }
    write_atomic(out_dir / "report.json", json.dumps(report, indent=2))
    return report


def _onto_flair_grid(image: np.ndarray, affine: np.ndarray, flair: np.ndarray, flair_affine: np.ndarray, *, name: str, register: bool) -> np.ndarray:
    """Bring another sequence onto the FLAIR grid: register it when asked, else it must already be there."""
    from mstoolkit.data.io import check_same_grid

    if register:
        from mstoolkit.preprocessing.registration import register as register_images
        from mstoolkit.preprocessing.registration import resample_to_reference

        transform = register_images(image, affine, flair, flair_affine, kind="rigid")
        return resample_to_reference(image, affine, flair.shape, flair_affine, transform=transform)
    try:
        check_same_grid(flair.shape, flair_affine, image.shape, affine, names=("FLAIR", name))
    except MSToolkitInputError as err:
        raise MSToolkitInputError(f"{err}\nOr pass --register to register {name} to the FLAIR.") from None
    return image


def cli_segment(args) -> int:
    """``mstoolkit segment --flair F [--t1 F] --out DIR``: write the mask, probability and report."""
    report = segment_files(args.flair, args.out, t1=args.t1, t2=args.t2, model=args.model, device=args.device,
                           skull_strip=args.skull_strip, register=args.register, threshold=args.threshold,
                           min_lesion_mm3=args.min_lesion_mm3, tta=args.tta, precision=args.precision)
    print(f"{report['lesion_count']} lesion(s), {report['total_volume_ml']:.2f} mL in total "
          f"({report['seconds']:.1f} s). Wrote lesion_mask.nii.gz, lesion_probability.nii.gz and report.json to {args.out}")
    return 0
