"""Benchmark of mstoolkit.explain.interpret: are the maps faithful, and what does a whole brain cost (2 CPU threads).

Figures, each measured in a fresh process (so its peak resident memory is its own; it includes
Python, torch and the loaded scan):

* ``degeneracy`` — Grad-CAM's trap: max over channels of |Σ ∂y/∂A_k| / Σ |∂y/∂A_k| at each
  candidate layer and at each Conv3d (what ``candidate_layers`` used to pick), on a random 64³
  input and on a lesion of the real scan. Near 0: the channel weights α_k cancel.
* ``faithfulness`` — on a 96³ box of the real scan (the box the tests use), per method and layer:
  tiling invariance (Pearson r near each target between one 96³ tile and 64³ tiles; target ≥ 0.8),
  target specificity (largest Spearman ρ between the maps of a true-positive lesion, a false
  positive and healthy brain; target < 0.8), model randomisation (Spearman ρ after every layer is
  randomised; target |ρ| < 0.3) and data randomisation (Spearman ρ with a model trained on
  shuffled labels; target |ρ| < 0.5), all within 15 voxels of the target.
* ``hires_cam`` / ``grad_cam`` — time and peak memory of the map of the whole prediction on a whole
  1 mm brain (182×218×182; target ≤ 30 s); ``integrated_gradients_lesion`` and
  ``gradient_x_input_all_lesions`` — peak memory of input attributions (target ≤ 2 GB).
* ``quality`` — pointing game of HiResCAM at each candidate layer for the whole prediction.

The scan is the shipped real sample's patient26 (Lesjak et al. 2018, CC-BY) and the model the
reference model. Prints the figures and writes build/benchmarks/interpret.json.

    python benchmarks/bench_interpret.py
"""

from __future__ import annotations

import json
import os
import sys
import time

from _common import benchmark_scan, limit_threads, peak_rss_mb, run_fresh, write_json

#: (method, layer role) pairs the faithfulness figures cover; None = an input attribution.
METHODS = [("hires_cam", "decoder"), ("hires_cam", "encoder"), ("hires_cam", "pre_head"), ("gradient_x_input", None),
           ("grad_cam", "decoder"), ("grad_cam", "conv before the head"), ("grad_cam", "pre_head")]
BOX = (slice(40, 136),) * 3  # the tests' box: a true-positive lesion, a false positive, healthy brain


def _load():
    from mstoolkit.segmentation.inference import brain_region, prepare_inputs
    from mstoolkit.segmentation.models import load_model

    limit_threads(2, torch=True)
    case = benchmark_scan()
    model, config = load_model("reference")
    return case, model, prepare_inputs(case, tuple(config["sequences"])), brain_region(case)


def _layers(model) -> dict[str, str]:
    from torch import nn

    from mstoolkit.explain import interpret

    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv3d)]
    return {**interpret.candidate_layers(model), "conv before the head": convs[-2]}


def _degeneracy(model, inputs, lesion) -> dict:
    import numpy as np
    import torch
    from torch import nn

    from mstoolkit.explain import interpret_checks

    layers = {**_layers(model), **{n: n for n, m in model.named_modules() if isinstance(m, nn.Conv3d) and n != "head"}}
    found = {}
    for label, x, target in (("random 64³", None, None), ("real lesion, 96³ box", inputs, lesion)):
        if x is None:
            x = torch.randn(2, 64, 64, 64, generator=torch.Generator().manual_seed(0))
            target = np.zeros((64, 64, 64), bool)
            target[20:40, 20:40, 20:40] = True
        table = interpret_checks.grad_cam_weights(model, x, target=target, layers=layers)
        found[label] = {k: float(f"{v:.2g}") for k, v in table.groupby("role", sort=False)["balance"].max().items()}
    return found


def _faithfulness(model, inputs, truth) -> list[dict]:
    import torch

    from mstoolkit.explain import interpret, interpret_checks

    with torch.no_grad():
        prediction = model(torch.from_numpy(inputs)[None])[0, 0].numpy() > 0
    targets = interpret_checks.example_targets(prediction, truth, brain_mask=inputs[0] != 0)
    targets = {name: targets[name] for name in ("true positive", "false positive", "background")}
    layers = _layers(model)
    rows = []
    for method, role in METHODS:
        start = time.perf_counter()
        options = {"layer": layers[role], "relu": False} if role else {}

        def explain(region, patch, margin, method=method, role=role, options=options):
            if role:
                return interpret_checks.LAYER_METHODS[method](model, inputs, target=region, patch_size=(patch,) * 3,
                                                              margin=margin, **options)
            return interpret.input_attribution(model, inputs, method=method, target=region, patch_size=(patch,) * 3,
                                               margin=margin).sum(0)

        whole = {name: explain(region, 96, 8) for name, region in targets.items()}
        tiling = {name: interpret_checks.map_agreement(whole[name], explain(region, 64, 16), near=region, within=15)
                  for name, region in targets.items()}
        names = list(targets)
        specificity = {f"{a} / {b}": interpret_checks.map_agreement(whole[a], whole[b], near=[targets[a], targets[b]],
                                                                     within=15, method="spearman")
                       for i, a in enumerate(names) for b in names[i + 1:]}
        lesion = targets["true positive"]
        model_random = interpret_checks.randomization_test(model, inputs, method, lesion, steps=2, within=15, **options)
        data_random = interpret_checks.data_randomization_test(model, inputs, truth, method, lesion, within=15,
                                                               train_steps=8, **options)
        rows.append({"method": method, "layer": f"{role} ({layers[role]})" if role else "input",
                     "tiling_r": {k: round(v, 3) for k, v in tiling.items()},
                     "specificity_rho": {k: round(v, 3) for k, v in specificity.items()},
                     "model_randomisation_rho": round(float(model_random["spearman"].iloc[-1]), 3),
                     "data_randomisation_rho": round(data_random["spearman"], 3),
                     "seconds": round(time.perf_counter() - start, 1)})
    return rows


def _one(name: str) -> dict:
    """Run one measurement in this (fresh) process."""
    from mstoolkit.explain import interpret, interpret_checks

    case, model, inputs, brain = _load()
    truth = case.mask > 0  # a fixed, known region: the ground-truth lesions
    if name in ("degeneracy", "faithfulness"):
        box_inputs, box_truth = inputs[(slice(None),) + BOX].copy(), truth[BOX]
        if name == "faithfulness":
            return {"name": name, "case": case.case_id, "rows": _faithfulness(model, box_inputs, box_truth)}
        lesion = interpret_checks.example_targets(box_truth, box_truth)["true positive"]
        return {"name": name, "case": case.case_id, "balance": _degeneracy(model, box_inputs, lesion)}
    lesion = interpret_checks.example_targets(truth, truth)["true positive"]
    start = time.perf_counter()
    if name in ("hires_cam", "grad_cam"):
        getattr(interpret, name)(model, inputs, target="prediction", roi_mask=brain)
    elif name == "integrated_gradients_lesion":
        interpret.input_attribution(model, inputs, method="integrated_gradients", target=lesion, roi_mask=brain)
    elif name == "gradient_x_input_all_lesions":
        interpret.input_attribution(model, inputs, method="gradient_x_input", target=truth, roi_mask=brain)
    elif name == "quality":
        from mstoolkit.segmentation.inference import predict

        _, predicted = predict(model, case, sequences=("FLAIR", "T1"))
        region = predicted > 0 if predicted.any() else truth
        found = {"predicted_voxels": int(predicted.sum())}
        for role, layer in interpret.candidate_layers(model).items():
            cam = interpret.hires_cam(model, inputs, target=region, layer=layer, roi_mask=brain)
            found[f"pointing_game_{role}"] = round(interpret_checks.pointing_game(cam, region, brain_mask=brain), 3)
        return {"name": name, "case": case.case_id, **found}
    seconds = time.perf_counter() - start
    return {"name": name, "case": case.case_id, "shape": list(case.shape), "seconds": round(seconds, 2),
            "cpu_seconds": round(time.process_time(), 2), "peak_rss_mb": peak_rss_mb()}


def _print(found: dict) -> None:
    if found["name"] == "degeneracy":
        for label, balance in found["balance"].items():
            print(f"Grad-CAM weight balance max_k |Σ∂y/∂A_k| / Σ|∂y/∂A_k|, {label}:")
            for layer, value in balance.items():
                print(f"    {layer:>22}: {value:.1e}")
    elif found["name"] == "faithfulness":
        print(f"faithfulness on a 96³ box of {found['case']} (within 15 voxels of each target):")
        for row in found["rows"]:
            print(f"  {row['method']:>16} at {row['layer']:<36} tiling r min {min(row['tiling_r'].values()):5.2f}, "
                  f"specificity ρ max {max(row['specificity_rho'].values()):5.2f}, model randomisation ρ "
                  f"{row['model_randomisation_rho']:5.2f}, data randomisation ρ {row['data_randomisation_rho']:5.2f}")
    elif found["name"] == "quality":
        print("quality on", found["case"], {k: v for k, v in found.items() if k not in ("name", "case")})
    else:
        print(f"{found['name']:>30}: {found['seconds']:6.1f} s wall, peak memory {found['peak_rss_mb']:7.0f} MB "
              f"({found['case']} {tuple(found['shape'])})")


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--one":
        print(json.dumps(_one(sys.argv[2])))
        return 0
    names = sys.argv[1:] or ["degeneracy", "faithfulness", "hires_cam", "grad_cam", "integrated_gradients_lesion",
                             "gradient_x_input_all_lesions", "quality"]
    results = []
    for name in names:
        results.append(run_fresh(__file__, name))
        _print(results[-1])
    summary = {"threads": 2, "load_average": os.getloadavg(), "results": results,
               "targets": {"layer_map_seconds": 30, "attribution_peak_mb": 2048, "tiling_r": 0.8, "specificity_rho": 0.8,
                           "model_randomisation_abs_rho": 0.3, "data_randomisation_abs_rho": 0.5}}
    print(f"load average {summary['load_average'][0]:.1f}")
    write_json("interpret", summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
