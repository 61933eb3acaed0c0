"""Benchmark of mstoolkit.interpret on one 1 mm brain (182×218×182), on 2 CPU threads.

Measures Grad-CAM of the whole prediction (target: ≤ 30 s) and the peak memory of input
attributions (target: ≤ 2 GB): Integrated Gradients of one lesion and gradient × input of all the
lesions. Also reports the quality figures: the energy-based pointing game of Grad-CAM for the whole
prediction (target ≥ 2) and the Spearman correlation after full cascading randomisation for Grad-CAM
and gradients (target < 0.3). Each measurement runs in a fresh process, so its peak resident memory is its own
(it includes Python, torch and the loaded scan). Uses the real sample's patient26 when present,
else a phantom subject, and the reference model. Prints the figures and writes
build/benchmarks/interpret.json.

    python benchmarks/bench_interpret.py
"""

from __future__ import annotations

import json
import os
import sys
import time

from _common import benchmark_scan, limit_threads, peak_rss_mb, run_fresh, write_json


def _load():
    import numpy as np

    from mstoolkit.inference import brain_region, prepare_inputs
    from mstoolkit.models import load_model

    limit_threads(2, torch=True)
    case = benchmark_scan()
    model, config = load_model("reference")
    inputs = prepare_inputs(case, tuple(config["sequences"]))
    return case, model, inputs, brain_region(case), np


def _one(name: str) -> dict:
    """Run one measurement in this (fresh) process."""
    from mstoolkit import interpret, interpret_checks

    case, model, inputs, brain, np = _load()
    target = case.mask > 0  # a fixed, known region: the ground-truth lesions
    lesion = interpret_checks.example_targets(target, target)["true positive"]
    start = time.perf_counter()
    if name == "grad_cam":
        interpret.grad_cam(model, inputs, target="prediction", roi_mask=brain)
    elif name == "integrated_gradients_lesion":
        interpret.input_attribution(model, inputs, method="integrated_gradients", target=lesion, roi_mask=brain)
    elif name == "gradient_x_input_all_lesions":
        interpret.input_attribution(model, inputs, method="gradient_x_input", target=target, roi_mask=brain)
    elif name == "quality":
        from mstoolkit.inference import predict

        _, predicted = predict(model, case, sequences=("FLAIR", "T1"))
        region = predicted > 0 if predicted.any() else target
        found = {"predicted_voxels": int(predicted.sum())}
        for layer_kind, layer in interpret.candidate_layers(model).items():
            cam = interpret.grad_cam(model, inputs, target=region, layer=layer, roi_mask=brain)
            found[f"pointing_game_{layer_kind}"] = round(interpret_checks.pointing_game(cam, region, brain_mask=brain), 3)
        for method in ("grad_cam", "saliency"):
            table = interpret_checks.randomization_test(model, inputs, method, region, steps=2, roi_mask=brain)
            found[f"spearman_full_randomisation_{method}"] = round(float(table["spearman"].iloc[-1]), 3)
            found[f"spearman_abs_full_randomisation_{method}"] = round(float(table["spearman_abs"].iloc[-1]), 3)
        return {"name": name, "case": case.case_id, **found}
    seconds = time.perf_counter() - start
    return {"name": name, "case": case.case_id, "shape": list(case.shape), "seconds": round(seconds, 2),
            "cpu_seconds": round(time.process_time(), 2),
            "peak_rss_mb": peak_rss_mb()}


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--one":
        print(json.dumps(_one(sys.argv[2])))
        return 0
    results = []
    for name in ("grad_cam", "integrated_gradients_lesion", "gradient_x_input_all_lesions", "quality"):
        found = run_fresh(__file__, name)
        results.append(found)
        if name == "quality":
            print("quality on", found["case"], {k: v for k, v in found.items() if k not in ("name", "case")})
        else:
            print(f"{name:>30}: {found['seconds']:6.1f} s wall, peak memory {found['peak_rss_mb']:7.0f} MB "
                  f"({found['case']} {tuple(found['shape'])})")
    summary = {"threads": 2, "load_average": os.getloadavg(), "results": results,
               "targets": {"grad_cam_seconds": 30, "attribution_peak_mb": 2048}}
    print(f"load average {summary['load_average'][0]:.1f}")
    write_json("interpret", summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
