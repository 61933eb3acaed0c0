"""Benchmark `mstoolkit segment` with the reference model: time, memory and accuracy.

Times the whole command (Python start, model load, inference, writing files) on
one 1 mm volume: the real open_ms_data case patient26 when present (FLAIR + T1,
Lesjak et al. 2018, CC-BY), else a phantom subject. With ground truth at hand it
also reports Dice and lesion F1 (any-overlap, 26-connectivity), and the same on
a small phantom test set (seeds never used in training, every scanner profile).

Run: python benchmarks/bench_segment.py [--threads 2] [--phantom-cases 4] [--phantom-seed 5000] [--model PATH]
     [--phantom-only] [--real-lesions]
``--model`` scores a model folder other than the shipped one (a candidate from
``mstoolkit train --preset reference``); ``--phantom-only`` skips the real case, so a
candidate can be chosen on phantom data before anyone looks at patient26. ``--real-lesions``
gives the phantom subjects the lesions of the held-out real masks (``REAL_LESION_MASKS["heldout"]``,
in turn), never used in training. The reference model is chosen on two selection sets
(MODEL_CARD.md): ``--phantom-seed 6000 --phantom-cases 16`` and
``--phantom-seed 7000 --phantom-cases 14 --real-lesions``; seeds 5000-5003 are the phantom
test set reported beside them.
Writes build/benchmarks/segment.json.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import thread_env, write_json


def _segment(flair: Path, t1: Path, out: Path, threads: int, model: str) -> tuple[float, float]:
    """Run the CLI in a fresh process; return (seconds, peak resident memory in MB)."""
    env = thread_env(threads)
    command = [sys.executable, "-c",
               "import resource, sys; from mstoolkit.cli import main; code = main(sys.argv[1:]); "
               "print('PEAK_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(code)",
               "segment", "--flair", str(flair), "--t1", str(t1), "--out", str(out), "--device", "cpu", "--model", model]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"segment failed:\n{result.stderr[-2000:]}")
    peak_kb = next(int(line.split()[1]) for line in result.stdout.splitlines() if line.startswith("PEAK_KB"))
    return seconds, peak_kb / 1024


def _scores(pred_path: Path, truth, spacing) -> dict:
    from mstoolkit.data.io import load_mask
    from mstoolkit.evaluation.metrics import evaluate

    pred, _ = load_mask(pred_path)
    result = evaluate(pred, truth, spacing=spacing, connectivity=26, matching="any_overlap")
    return {k: round(float(result[k]), 4) for k in ("dice", "lesion_f1", "lesion_sensitivity", "lesion_precision",
                                                      "volume_truth_ml", "volume_pred_ml")}


def _phantom_scores(n: int, model_name: str, first_seed: int, real_lesions: bool) -> list[dict]:
    """Dice and lesion F1 of the model on phantom subjects it never saw (profiles in turn)."""
    import numpy as np

    from mstoolkit.evaluation.metrics import evaluate
    from mstoolkit.phantom.generator import PROFILES, generate_subject
    from mstoolkit.phantom.lesions import REAL_LESION_MASKS
    from mstoolkit.segmentation.inference import predict
    from mstoolkit.segmentation.models import load_model

    masks = REAL_LESION_MASKS["heldout"]
    model, config = load_model(model_name)
    rows = []
    for k in range(n):
        profile = list(PROFILES)[k % len(PROFILES)]
        seed = first_seed + k  # the reference model trained on seeds 1000-1017
        real = masks[k % len(masks)] if real_lesions else None
        case = generate_subject(seed=seed, profile=profile, real_lesions=real)
        _, mask = predict(model, case, sequences=config["sequences"])
        result = evaluate(mask, case.mask, spacing=case.spacing)
        rows.append({"seed": seed, "profile": profile, "real_lesions": real, "dice": round(float(result["dice"]), 4),
                     "lesion_f1": round(float(result["lesion_f1"]), 4)})
        print(f"  phantom seed {seed} ({profile}{', lesions of ' + real if real else ''}): "
              f"Dice {rows[-1]['dice']:.3f}, lesion F1 {rows[-1]['lesion_f1']:.3f}")
    means = {key: round(float(np.mean([r[key] for r in rows])), 4) for key in ("dice", "lesion_f1")}
    means["score"] = round((means["dice"] + means["lesion_f1"]) / 2, 4)  # what the reference model is chosen on
    return [{"mean": means}] + rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--phantom-cases", type=int, default=4)
    parser.add_argument("--phantom-seed", type=int, default=5000, help="first phantom seed (6000: the selection set)")
    parser.add_argument("--model", default="reference", help="'reference' or a model folder")
    parser.add_argument("--phantom-only", action="store_true", help="skip the real case and the timing")
    parser.add_argument("--real-lesions", action="store_true", help="phantom subjects with the held-out real lesion masks")
    args = parser.parse_args()
    from mstoolkit.data.datasets import real_sample_dir
    from mstoolkit.data.io import load_mask

    results: dict = {"threads": args.threads, "model": args.model}
    if args.phantom_only:
        return _finish(args, results)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = real_sample_dir() / "cross_sectional" / "MNI" / "patient26"
        flair, t1 = sorted(folder.glob("FLAIR_*.nii.gz"))[0], sorted(folder.glob("T1_*.nii.gz"))[0]
        truth, _ = load_mask(sorted(folder.glob("GOLD_STANDARD_*.nii.gz"))[0])
        results["volume"] = "open_ms_data patient26 (MNI, 1 mm)"
        _segment(flair, t1, tmp / "warm", args.threads, args.model)  # warm the file cache once
        seconds, peak_mb = _segment(flair, t1, tmp / "out", args.threads, args.model)
        results.update(segment_seconds=round(seconds, 2), segment_peak_mb=round(peak_mb))
        print(f"mstoolkit segment on {results['volume']}: {seconds:.1f} s with {args.threads} threads, peak {peak_mb:.0f} MB "
              f"(target <= 20 s)")
        results["patient26"] = _scores(tmp / "out" / "lesion_mask.nii.gz", truth, (1.0, 1.0, 1.0))
        print(f"patient26: {results['patient26']} (targets: Dice >= 0.60, lesion F1 >= 0.50)")
    _finish(args, results)


def _finish(args, results: dict) -> None:
    if args.phantom_cases:
        print(f"phantom subjects {args.phantom_seed}-{args.phantom_seed + args.phantom_cases - 1}:")
        which = {5000: "phantom_test", 6000: "phantom_selection", 7000: "phantom_selection"}.get(args.phantom_seed, "phantom")
        which += "_real_lesions" if args.real_lesions else ""
        results[which] = _phantom_scores(args.phantom_cases, args.model, args.phantom_seed, args.real_lesions)
        print(f"{which.replace('_', ' ')} mean: {results[which][0]['mean']}")
    write_json("segment", results)


if __name__ == "__main__":
    main()
