"""Benchmark `mstoolkit segment` with the reference model: time, memory and accuracy.

Times the whole command (Python start, model load, inference, writing files) on
one 1 mm volume: the real open_ms_data case patient26 (FLAIR + T1, Lesjak et al.
2018, CC-BY), each run in a fresh process, the fast path (what `mstoolkit segment`
runs: bfloat16 on a CPU that multiplies it in hardware, else float32), the fast path in float32,
and the previous path (``predict(..., fast=False)``: MONAI's sliding window in eager float32,
two windows at a time) in turn, ``--runs`` times each; prints the median seconds,
the ratio and the peak memory of each, and how far their masks agree (Dice and
lesion count) on patient26 and on a phantom subject (seed 1000). With ground truth
at hand it also reports Dice and lesion F1 (any-overlap, 26-connectivity), and the
same on a small phantom test set (seeds never used in training, every scanner profile).

Run: python benchmarks/bench_segment.py [--threads 2] [--runs 3] [--phantom-cases 4] [--phantom-seed 5000]
     [--model PATH] [--phantom-only] [--real-lesions]
``--model`` scores a model folder other than the shipped one (a candidate from
``mstoolkit train --preset reference``); ``--phantom-only`` skips the real case, so a
candidate can be chosen on phantom data before anyone looks at patient26. ``--real-lesions``
gives the phantom subjects the lesions of the held-out real masks (``REAL_LESION_MASKS["heldout"]``,
in turn), never used in training. The reference model is chosen on two selection sets
(MODEL_CARD.md): ``--phantom-seed 6000 --phantom-cases 16`` and
``--phantom-seed 7000 --phantom-cases 14 --real-lesions``; seeds 5000-5003 are the phantom
test set reported beside them. ``--phantom-cases 0`` times the two paths only.
Writes build/benchmarks/segment.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import thread_env, write_json

#: The paths timed in turn: what `mstoolkit segment` runs (precision "auto": bfloat16 on CPUs that multiply it in
#: hardware), the same in float32, and the previous path (MONAI's sliding window in eager float32), the reference.
PATHS = {"fast": (True, "auto"), "fast_float32": (True, "float32"), "previous": (False, "float32")}


def _segment(flair: Path, t1: Path, out: Path, threads: int, model: str, *, path: str = "fast") -> tuple[float, float]:
    """Segment in a fresh process as `mstoolkit segment` does; return (seconds, peak resident memory in MB).

    ``path`` is one of :data:`PATHS`.
    """
    env = thread_env(threads)
    fast, precision = PATHS[path]
    command = [sys.executable, "-c",
               "import resource, sys; from mstoolkit.segmentation.inference import segment_files; "
               "segment_files(sys.argv[1], sys.argv[3], t1=sys.argv[2], model=sys.argv[4], device='cpu', "
               "fast=sys.argv[5] == 'fast', precision=sys.argv[6]); "
               "print('PEAK_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)",
               str(flair), str(t1), str(out), model, "fast" if fast else "previous", precision]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"segment failed:\n{result.stderr[-2000:]}")
    peak_kb = next(int(line.split()[1]) for line in result.stdout.splitlines() if line.startswith("PEAK_KB"))
    return seconds, peak_kb / 1024


def _agreement(fast_mask, previous_mask, spacing) -> dict:
    """Dice between the two paths' masks and their lesion counts (26-connectivity)."""
    from mstoolkit.evaluation.metrics import dice, label_lesions

    counts = [label_lesions(m, spacing=spacing, connectivity=26)[1] for m in (fast_mask, previous_mask)]
    return {"dice": round(float(dice(fast_mask, previous_mask)), 5), "lesions_fast": int(counts[0]),
            "lesions_previous": int(counts[1]), "voxels_differ": int((fast_mask != previous_mask).sum())}


def _phantom_agreement(model_name: str, seed: int = 1000) -> dict:
    """The two paths on a phantom subject, in this process."""
    from mstoolkit.phantom.generator import generate_subject
    from mstoolkit.segmentation.inference import predict
    from mstoolkit.segmentation.models import load_model

    model, config = load_model(model_name)
    case = generate_subject(seed=seed)
    _, fast_mask = predict(model, case, sequences=config["sequences"])
    _, previous_mask = predict(model, case, sequences=config["sequences"], fast=False)
    return {"seed": seed, **_agreement(fast_mask, previous_mask, case.spacing)}


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
    parser.add_argument("--runs", type=int, default=3, help="fresh-process runs of each path on patient26 (median)")
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
        runs: dict[str, list] = {path: [] for path in PATHS}
        for _ in range(max(args.runs, 1)):  # in turn, so that a busy machine slows them alike
            for path in runs:
                runs[path].append(_segment(flair, t1, tmp / path, args.threads, args.model, path=path))
        for path, measured in runs.items():
            results[f"{path}_seconds"] = [round(seconds, 2) for seconds, _ in measured]
            results[f"{path}_median_seconds"] = round(statistics.median(seconds for seconds, _ in measured), 2)
            results[f"{path}_peak_mb"] = round(max(peak for _, peak in measured))
        results["speedup"] = round(results["previous_median_seconds"] / results["fast_median_seconds"], 2)
        results["segment_seconds"], results["segment_peak_mb"] = results["fast_median_seconds"], results["fast_peak_mb"]
        print(f"mstoolkit segment on {results['volume']}, {args.threads} threads, fresh process, median of {len(runs['fast'])}:")
        for path in runs:
            print(f"  {path:12s} {results[f'{path}_median_seconds']:5.1f} s  (runs {results[f'{path}_seconds']}), "
                  f"peak {results[f'{path}_peak_mb']} MB")
        print(f"  fast / previous: {1 / results['speedup']:.2f} of the time ({results['speedup']:.2f}x faster; target <= 5 s)")
        precision = json.loads((tmp / "fast" / "report.json").read_text())["settings"]["precision"]
        results["fast_precision"] = precision
        print(f"  the fast path computed in {precision} on this CPU")
        fast_mask, _ = load_mask(tmp / "fast" / "lesion_mask.nii.gz")
        previous_mask, _ = load_mask(tmp / "previous" / "lesion_mask.nii.gz")
        float32_mask, _ = load_mask(tmp / "fast_float32" / "lesion_mask.nii.gz")
        results["agreement_patient26"] = _agreement(fast_mask, previous_mask, (1.0, 1.0, 1.0))
        results["agreement_patient26_fast_float32"] = _agreement(float32_mask, previous_mask, (1.0, 1.0, 1.0))
        results["agreement_phantom"] = _phantom_agreement(args.model)
        for name in ("patient26", "phantom"):
            print(f"  masks fast vs previous, {name}: {results['agreement_' + name]} (needed: Dice >= 0.999, same count)")
        results["patient26"] = _scores(tmp / "fast" / "lesion_mask.nii.gz", truth, (1.0, 1.0, 1.0))
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
