"""Benchmark: mstoolkit.evaluation.metrics.evaluate on a 182×218×182 pair with ~50 lesions, vs MONAI's HD95 alone.

Run:  python benchmarks/bench_metrics.py   (prints figures, writes build/benchmarks/metrics.json)

The pair is a phantom subject's lesion mask (mstoolkit.phantom.generator) when that module
is available, else ~50 synthetic ellipsoid lesions in the same grid; the
prediction is a simulated second rater (mstoolkit.evaluation.report.simulate_rater).
Timings are the best of several repeats on one CPU thread.
"""

from __future__ import annotations

import time
import warnings

from _common import limit_threads, machine, write_json

limit_threads(1)  # one core, as the target says; set before numpy loads

import numpy as np

from mstoolkit.evaluation.metrics import evaluate, hd95
from mstoolkit.evaluation.report import simulate_rater

SHAPE = (182, 218, 182)
REPEATS = 5


def synthetic_truth(n_lesions: int = 50, seed: int = 0) -> np.ndarray:
    """Ellipsoid lesions of 1–7 mm radii scattered in the central brain box."""
    rng = np.random.default_rng(seed)
    truth = np.zeros(SHAPE, bool)
    grid = np.indices((31, 31, 31)).astype(float) - 15
    for _ in range(n_lesions):
        centre = rng.integers((40, 40, 40), (142, 178, 142))
        radii = rng.uniform(1.0, 7.0, 3)
        blob = ((grid / radii[:, None, None, None]) ** 2).sum(axis=0) <= 1
        truth[tuple(slice(c - 15, c + 16) for c in centre)] |= blob
    return truth


def load_truths() -> list[tuple[np.ndarray, str]]:
    """The target pair (~50 lesions) and, when the phantom exists, its default lesion load too."""
    try:
        from mstoolkit.phantom.generator import generate_subject

        truths = []
        for n_lesions, label in ((50, "phantom subject, seed 0, 50 lesions drawn"), (None, "phantom subject, seed 0, default load")):
            case = generate_subject(seed=0, n_lesions=n_lesions)
            truths.append((case.mask.astype(bool), label))
        return truths
    except Exception as err:  # the phantom is optional here: fall back to ellipsoids
        print(f"(phantom unavailable: {type(err).__name__}: {err}; using synthetic ellipsoids)")
    return [(synthetic_truth(), "synthetic ellipsoids")]


def best_time(function, repeats: int = REPEATS) -> tuple[float, object]:
    times, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = function()
        times.append(time.perf_counter() - start)
    return min(times), value


def main() -> dict:
    import cc3d
    import torch
    from monai.metrics import HausdorffDistanceMetric

    limit_threads(1, torch=True)
    warnings.filterwarnings("ignore", category=FutureWarning)  # MONAI's deprecation notices
    monai_metric = HausdorffDistanceMetric(include_background=True, percentile=95)
    runs = []
    for truth, source in load_truths():
        pred = simulate_rater(truth, spacing=(1.0, 1.0, 1.0), seed=1, n_false_positives=5).astype(bool)
        n_lesions = cc3d.connected_components(truth, connectivity=26, return_N=True)[1]
        t_evaluate, result = best_time(lambda pred=pred, truth=truth: evaluate(pred, truth, spacing=(1.0, 1.0, 1.0)))
        t_hd95, ours = best_time(lambda pred=pred, truth=truth: hd95(pred, truth, spacing=(1.0, 1.0, 1.0)))
        y_pred, y = torch.from_numpy(pred[None, None]).float(), torch.from_numpy(truth[None, None]).float()

        def monai_hd95(y_pred=y_pred, y=y) -> float:
            monai_metric.reset()
            monai_metric(y_pred, y, spacing=(1.0, 1.0, 1.0))
            return float(monai_metric.aggregate())

        t_monai, theirs = best_time(monai_hd95)
        runs.append({
            "truth": source, "n_lesions_truth": int(n_lesions), "n_lesions_pred": result["n_lesions_pred"],
            "evaluate_s": round(t_evaluate, 4), "our_hd95_s": round(t_hd95, 4), "monai_hd95_s": round(t_monai, 4),
            "evaluate_faster_than_monai_hd95": t_evaluate < t_monai, "evaluate_within_1s": t_evaluate <= 1.0,
            "hd95_ours_mm": ours, "hd95_monai_mm": theirs, "dice": round(result["dice"], 4),
        })
        print(f"pair: {source}: {n_lesions} truth lesions, shape {SHAPE}")
        print(f"  evaluate (all metrics):  {t_evaluate * 1000:8.1f} ms   (target ≤ 1000 ms)")
        print(f"  our HD95 alone:          {t_hd95 * 1000:8.1f} ms")
        print(f"  MONAI HD95 alone:        {t_monai * 1000:8.1f} ms")
        print(f"  HD95 ours {ours:.6f} mm vs MONAI {theirs:.6f} mm; Dice {result['dice']:.3f}")
    figures = {"shape": list(SHAPE), "threads": 1, "repeats": REPEATS,
               "cpu": machine(), "runs": runs}
    write_json("metrics", figures)
    return figures


if __name__ == "__main__":
    main()
