"""Notebook 03's domain-shift experiment with more seeds: does domain augmentation narrow the held-out gap?

One scanner profile (``--held-out``, default ``low_field``) is left out of training. For each seed,
two models are trained by :func:`mstoolkit.train.compare_augmentations`: ``augment="light"``
(flips) and ``augment="domain"``, with the same subjects, steps, initial weights and patches.
Each is scored (Dice at 0.5, last weights) on the split's test subjects, every one rendered through
every scanner profile and cut to a cube around its lesions, exactly as notebook 03 section 8 does.
Prints the per-seed table of :func:`mstoolkit.train.held_out_gaps`, in how many seeds the domain arm
narrowed the gap, and the mean and spread of each arm's gap; writes build/benchmarks/domain_shift.json.

    python benchmarks/bench_domain_shift.py --seeds 0 1 2 3 4 5
"""

from __future__ import annotations

import argparse
import time

from _common import limit_threads, peak_rss_mb, write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="workshop", choices=("quick", "workshop", "full"), help="whose subject split")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    parser.add_argument("--steps", type=int, default=600, help="training steps per model (notebook 03 workshop: 600)")
    parser.add_argument("--held-out", default="low_field", help="the scanner profile no model trains on")
    parser.add_argument("--crop", type=int, default=96, help="edge of the lesion-centred cubes, in voxels")
    parser.add_argument("--patch", type=int, default=32, help="training patch edge, in voxels")
    args = parser.parse_args()
    limit_threads(2, torch=True)

    import numpy as np

    from mstoolkit.data.datasets import list_cases, subject_split
    from mstoolkit.data.io import crop_around_lesions
    from mstoolkit.phantom import dataset as phantom_dataset
    from mstoolkit.phantom import generator as phantom
    from mstoolkit.phantom.dataset import ensure_phantom
    from mstoolkit.segmentation import train
    from mstoolkit.segmentation.config import TrainConfig

    if args.held_out not in phantom.PROFILES:
        parser.error(f"--held-out must be one of {', '.join(phantom.PROFILES)}, got {args.held_out!r}")
    split = subject_split(args.profile)
    data_dir = ensure_phantom(None, n_subjects=split.n_subjects, seed=0)
    references = list_cases(data_dir)
    sequences = ("FLAIR", "T1")
    training = [crop_around_lesions(ref.load(sequences), args.crop) for ref in split.select(references, "train")
                if phantom_dataset.dataset_profile(int(ref.case_id[4:])) != args.held_out]
    tests = [(profile, crop_around_lesions(phantom_dataset.render_subject(int(ref.case_id[4:]), profile, seed=0), args.crop))
             for ref in split.select(references, "test") for profile in phantom.PROFILES]
    phantom.clear_cache()
    iterations = 20
    config = TrainConfig(model="tiny_unet", sequences=sequences, loss="dice_ce", patch_size=(args.patch,) * 3,
                               batch_size=2, epochs=max(1, args.steps // iterations), iterations_per_epoch=iterations,
                               learning_rate=5e-3, dropout=0.0, device="cpu", val_roi_size=(args.crop,) * 3, progress=False)
    started = time.perf_counter()
    results = train.compare_augmentations(config, training, tests, seeds=args.seeds)
    seconds = time.perf_counter() - started
    seen = sorted({phantom_dataset.dataset_profile(int(c.case_id[4:])) for c in training})
    gaps = train.held_out_gaps(results, args.held_out, seen=seen)
    by_seed = gaps["gap"].unstack("augment")
    narrowed = int((by_seed["domain"] < by_seed["light"]).sum())
    print(gaps.round(3).to_string())
    print(f"domain narrowed the {args.held_out} gap in {narrowed} of {len(by_seed)} seeds")
    for arm in ("light", "domain"):
        print(f"gap, augment={arm!r}: mean {by_seed[arm].mean():.3f}, standard deviation {by_seed[arm].std(ddof=1):.3f}, "
              f"range {by_seed[arm].min():.3f} to {by_seed[arm].max():.3f}")
    paired = by_seed["light"] - by_seed["domain"]
    print(f"paired difference light - domain: mean {paired.mean():.3f} ± {paired.std(ddof=1) / np.sqrt(len(paired)):.3f} (s.e.)")
    print(f"{len(results) // len(tests)} models in {seconds:.0f} s; peak memory {peak_rss_mb():.0f} MB")
    write_json("domain_shift", {
        "profile": args.profile, "seeds": args.seeds, "steps": config.epochs * iterations, "held_out": args.held_out,
        "crop": args.crop, "patch": args.patch, "training": [c.case_id for c in training],
        "test": sorted({c.case_id for _, c in tests}), "seconds": round(seconds, 1), "peak_rss_mb": peak_rss_mb(),
        "narrowed": narrowed, "gaps": {f"{arm}/{seed}": round(float(v), 4) for (arm, seed), v in gaps["gap"].items()},
        "dice": results.to_dict(orient="records"),
    })


if __name__ == "__main__":
    main()
