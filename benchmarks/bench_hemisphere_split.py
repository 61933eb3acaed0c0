"""The reference model's real-data estimate: a two-fold hemisphere split of patient26.

open_ms_data patient26 (Lesjak et al. 2018, CC-BY; MNI space, FLAIR + T1) is the one real
cross-sectional scan shipped with the toolkit. To learn from it and still measure on
unseen real tissue, each fold trains with one brain half's labels (the loss and the patch
sampler see only that half: ``training_data.label_only``) and is scored on the other half;
then the halves swap. The mean of the two held-out halves is the real-data estimate that
chooses between recipes (MODEL_CARD.md).

What stays as in the reference recipe (``mstoolkit train --preset reference``): the 18 phantom
subjects (16 train, 2 validate), the checkpoint, threshold and minimum lesion size chosen on the
two phantom validation subjects, every training setting. What changes: the training half of
patient26 joins the phantom subjects and is drawn for ``--real-share`` of the patches. The
held-out half is never used for a choice. The network does see the held-out half's *image*
at the edges of patches centred near the midline, never its labels.

Run:
  python benchmarks/bench_hemisphere_split.py --model reference       # score a trained model on both halves
  python benchmarks/bench_hemisphere_split.py --train NAME [--real-share 0.33] [--features 8 16 32 64]
      [--epochs 120] [--folds left right]                             # train the two folds, then score them
A fold named by the half it *holds out*: fold ``left`` trains on the right half.
Writes build/benchmarks/hemisphere_split_NAME.json; fold models go to build/hemisphere_split/NAME/.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from _common import ROOT, limit_threads, peak_rss_mb, write_json


def patient26():
    """The shipped real case, FLAIR + T1 + consensus mask (MNI files as published)."""
    from mstoolkit.data.datasets import load_dataset_case, real_sample_dir

    return load_dataset_case(real_sample_dir(), "patient26", sequences=("FLAIR", "T1"))


def score_half(model, case, half: str) -> dict:
    """Dice and lesion-wise figures of ``model`` on one half of ``case`` (its own threshold and minimum lesion size)."""
    from mstoolkit.evaluation.metrics import evaluate
    from mstoolkit.segmentation.inference import predict
    from mstoolkit.segmentation.training_data import hemisphere

    _, mask = predict(model, case, sequences=("FLAIR", "T1"))
    inside = hemisphere(case, half)
    # both masks cut at the midline: a lesion that crosses it counts on each side with its part there
    scores = evaluate((mask.astype(bool) & inside).astype(np.uint8), (case.mask.astype(bool) & inside).astype(np.uint8),
                      spacing=case.spacing)
    keys = ("dice", "lesion_f1", "lesion_sensitivity", "lesion_precision", "n_lesions_truth", "n_lesions_pred",
            "volume_truth_ml", "volume_pred_ml", "hd95_mm")
    return {key: (round(float(scores[key]), 4) if isinstance(scores[key], float) else int(scores[key])) for key in keys if key in scores}


def train_fold(name: str, held_out: str, args, phantom_train, phantom_val):
    """Train the reference recipe plus the half of ``case`` that is not ``held_out``; return the model."""
    from mstoolkit.segmentation.config import PRESETS, TrainConfig
    from mstoolkit.segmentation.train import train
    from mstoolkit.segmentation.training_data import real_training_case

    settings = {k: v for k, v in PRESETS["reference"].items() if k not in ("n_subjects", "n_val", "real_lesion_share")}
    config = TrainConfig(**settings, device="cpu", seed=args.seed, progress=False,
                         out_dir=str(ROOT / "build" / "hemisphere_split" / name / held_out))
    config = replace(config, epochs=args.epochs or config.epochs, features=tuple(args.features) if args.features else config.features)
    cases = list(phantom_train)
    if args.real_share > 0:  # the same case the preset adds (mstoolkit train --preset reference), minus one half
        cases.append(real_training_case(args.real_share, len(phantom_train), held_out_half=held_out))
    started = time.perf_counter()
    model, history = train(config, cases, phantom_val)
    seconds = time.perf_counter() - started
    dice = [d for d in history["val_dice"] if d == d]
    return model, {"training_seconds": round(seconds), "best_phantom_val_dice": round(max(dice), 4) if dice else None,
                   "threshold": model.threshold, "min_lesion_mm3": model.min_lesion_mm3,
                   "features": list(config.features or ()), "epochs": config.epochs, "real_share": args.real_share}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", help="score this model ('reference' or a folder) on both halves, no training")
    what.add_argument("--train", metavar="NAME", help="train the two folds of a recipe under this name")
    parser.add_argument("--real-share", type=float, default=1 / 3, help="share of patches from patient26's training half")
    parser.add_argument("--features", type=int, nargs="+", help="network widths (default: the reference preset's)")
    parser.add_argument("--epochs", type=int, help="default: the reference preset's")
    parser.add_argument("--folds", nargs="+", default=["left", "right"], choices=["left", "right"], help="held-out halves")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not 0.0 <= args.real_share < 1.0:
        raise SystemExit(f"--real-share must be in [0, 1), got {args.real_share}.")
    limit_threads(args.threads, torch=True)
    from mstoolkit.segmentation.models import load_model

    case = patient26()
    name = args.train or Path(args.model).name
    results: dict = {"case": "open_ms_data patient26 (MNI), halves split at x = 0 mm", "threads": args.threads, "folds": {}}
    if args.train:
        from mstoolkit.segmentation.config import PRESETS
        from mstoolkit.segmentation.training_data import reference_phantom_cases

        preset = PRESETS["reference"]
        phantom_train, phantom_val = reference_phantom_cases(preset["n_subjects"], n_val=preset["n_val"])
    for held_out in args.folds:
        if args.train:
            model, fold = train_fold(name, held_out, args, phantom_train, phantom_val)
        else:
            model, _ = load_model(args.model)
            fold = {"threshold": model.threshold, "min_lesion_mm3": model.min_lesion_mm3}
        fold["held_out_scores"] = score_half(model, case, held_out)
        results["folds"][held_out] = fold
        s = fold["held_out_scores"]
        print(f"{name}, held-out {held_out} half: Dice {s['dice']:.3f}, lesion F1 {s['lesion_f1']:.3f} "
              f"(sensitivity {s['lesion_sensitivity']:.2f} of {s['n_lesions_truth']}, precision {s['lesion_precision']:.2f}), "
              f"{fold.get('training_seconds', 0)} s training", flush=True)
    folds = list(results["folds"].values())
    for key in ("dice", "lesion_f1", "lesion_sensitivity", "lesion_precision"):
        results[f"mean_{key}"] = round(float(np.mean([f["held_out_scores"][key] for f in folds])), 4)
    results["peak_mb"] = peak_rss_mb()
    print(f"{name}: two-fold real estimate Dice {results['mean_dice']:.3f}, lesion F1 {results['mean_lesion_f1']:.3f} "
          f"(sensitivity {results['mean_lesion_sensitivity']:.2f}, precision {results['mean_lesion_precision']:.2f}); "
          f"peak {results['peak_mb']:.0f} MB")
    write_json(f"hemisphere_split_{name}", results)


if __name__ == "__main__":
    main()
