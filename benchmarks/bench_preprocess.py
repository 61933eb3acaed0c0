"""Benchmark: preprocess one 1 mm case (N4 + skull strip + normalise + register to MNI) on 2 cores.

Target: <= 60 s. Prints the figures and writes build/benchmarks/preprocess.json.

    python benchmarks/bench_preprocess.py [--threads 2] [--seed 0]

The case is the phantom's raw scan (skull on, bias field, 1 x 1 x 3 mm) resampled to 1 mm.
"""

from __future__ import annotations

import argparse
import time

from _common import limit_threads, machine, write_json


def _skull_on_case(seed: int):
    """The phantom's raw (skull-on, 1 x 1 x 3 mm) FLAIR resampled to 1 mm, and its true brain mask."""
    from mstoolkit.data.io import Case
    from mstoolkit.phantom import generator as phantom
    from mstoolkit.preprocessing import registration

    raw = phantom.generate_raw_scan(seed=seed)
    image, affine = registration.reorient_to_ras(raw["images"]["FLAIR"], raw["affine"])
    truth, _ = registration.reorient_to_ras(raw["brain_mask"], raw["affine"])
    image, new_affine = registration.resample_to_spacing(image, affine, (1.0, 1.0, 1.0))
    truth, _ = registration.resample_to_spacing(truth, affine, (1.0, 1.0, 1.0), is_mask=True)
    return Case("raw", {"FLAIR": image}, new_affine), truth, "phantom.generate_raw_scan"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    limit_threads(args.threads, torch=True, simpleitk=True)

    from mstoolkit.evaluation.metrics import dice
    from mstoolkit.preprocessing.preprocess import preprocess_case

    case, truth, source = _skull_on_case(args.seed)
    start = time.perf_counter()
    stripped = preprocess_case(case, ["n4", "skull_strip", "normalize"])
    out = preprocess_case(stripped, [("to_mni", {"resolution": 1})])
    total = time.perf_counter() - start
    per_step = {r["step"]: r["seconds"] for r in out.meta["preprocessing"]}
    strip_dice = dice(stripped.brain_mask.astype(bool), truth.astype(bool))
    result = {
        "case": source,
        "shape": list(case.shape),
        "spacing_mm": list(case.spacing),
        "threads": args.threads,
        "total_seconds": round(total, 2),
        "per_step_seconds": per_step,
        "target_seconds": 60,
        "within_target": total <= 60,
        "skull_strip_dice": round(strip_dice, 4),
        "machine": machine(),
    }
    print(f"preprocess one 1 mm case {tuple(case.shape)} ({source}) on {args.threads} threads:")
    for step, seconds in per_step.items():
        print(f"  {step:12s} {seconds:6.1f} s")
    print(f"  {'total':12s} {total:6.1f} s   (target <= 60 s: {'OK' if total <= 60 else 'TOO SLOW'})")
    print(f"  skull-strip Dice with the true brain mask: {strip_dice:.3f}")
    write_json("preprocess", result)


if __name__ == "__main__":
    main()
