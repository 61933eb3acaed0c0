"""Benchmark of mstoolkit.uncertainty.sampling on one 1 mm brain (182×218×182), on 2 CPU threads.

Measures 10 MC-dropout samples (target: ≤ 60 s, peak memory ≤ 2 GB) and the uncertainty maps
computed from them. Also reports the quality figures on patient26 and the test subjects of the
``quick`` subject split (``mstoolkit.data.datasets.SUBJECT_SPLITS``): area above the nDSC retention curve
with entropy and mutual information vs the mean of 5 random orders (target: ≥ 20 % smaller), mean
lesion uncertainty of false- vs true-positive lesions, and the ECE inside the brain before/after
temperature scaling (temperature fitted on the split's calibration subjects, which are not reported).
Each measurement runs in a fresh process, so its peak resident memory is its own (it includes
Python, torch and the loaded scan). The timings use the shipped real sample's patient26
(Lesjak et al. 2018, CC-BY) and the reference model. Prints the figures and writes
build/benchmarks/uncertainty.json.

    python benchmarks/bench_uncertainty.py
"""

from __future__ import annotations

import json
import os
import sys
import time

from _common import benchmark_scan, limit_threads, peak_rss_mb, run_fresh, write_json


def _one(name: str) -> dict:
    from mstoolkit.segmentation.inference import brain_region, prepare_inputs
    from mstoolkit.segmentation.models import load_model
    from mstoolkit.uncertainty import sampling as uncertainty

    limit_threads(2, torch=True)
    case = benchmark_scan()
    model, config = load_model("reference")
    inputs, brain = prepare_inputs(case, tuple(config["sequences"])), brain_region(case)
    start = time.perf_counter()
    samples = uncertainty.sample_predictions(model, inputs, method="mc_dropout", n=10, brain_mask=brain)
    sampling = time.perf_counter() - start
    start = time.perf_counter()
    uncertainty.uncertainty_maps(samples)
    maps = time.perf_counter() - start
    return {"name": name, "case": case.case_id, "shape": list(case.shape), "samples": 10,
            "seconds": round(sampling, 2), "maps_seconds": round(maps, 2), "cpu_seconds": round(time.process_time(), 2),
            "peak_rss_mb": peak_rss_mb()}


def _quality() -> dict:
    import numpy as np

    from mstoolkit.data.datasets import list_cases, load_dataset_case, real_sample_dir, subject_split
    from mstoolkit.phantom.dataset import ensure_phantom
    from mstoolkit.segmentation.inference import brain_region, prepare_inputs
    from mstoolkit.segmentation.models import load_model
    from mstoolkit.uncertainty import calibration
    from mstoolkit.uncertainty import sampling as uncertainty

    limit_threads(2, torch=True)
    model, config = load_model("reference")
    sequences = tuple(config["sequences"])
    split = subject_split("quick")
    refs = list_cases(ensure_phantom(None, n_subjects=split.n_subjects, seed=0))

    def mc_maps(case):
        brain = brain_region(case)
        samples = uncertainty.sample_predictions(model, prepare_inputs(case, sequences), method="mc_dropout", n=10,
                                                 brain_mask=brain)
        return brain, samples, uncertainty.uncertainty_maps(samples)

    fitted = [mc_maps(case) + (case.mask,) for case in (ref.load(sequences) for ref in split.select(refs, "calibration"))]
    temperature = calibration.fit_temperature([maps["mean"] for _, _, maps, _ in fitted], [mask for *_, mask in fitted],
                                              brain_masks=[brain for brain, *_ in fitted])
    del fitted
    tested = [ref.load(sequences) for ref in split.select(refs, "test")]
    tested.append(load_dataset_case(real_sample_dir(), "patient26", sequences=sequences))
    rng = np.random.default_rng(0)
    results = {}
    for case in tested:
        brain, samples, maps = mc_maps(case)
        pred = maps["mean"] >= 0.5
        found = {"predicted_voxels": int(pred.sum()), "truth_voxels": int(case.mask.sum())}
        randoms = [uncertainty.retention_curve(pred, case.mask, rng.random(pred.shape), brain_mask=brain)["area_above"]
                   for _ in range(5)]
        found["aac_random"] = round(float(np.mean(randoms)), 4)
        for key in ("entropy", "mutual_information"):
            aac = uncertainty.retention_curve(pred, case.mask, maps[key], brain_mask=brain)["area_above"]
            found[f"aac_{key}"] = round(aac, 4)
            found[f"aac_{key}_smaller_than_random_percent"] = round(100 * (1 - aac / found["aac_random"]), 1)
        lesions = uncertainty.lesion_uncertainty(samples, truth=case.mask)
        for status in ("TP", "FP"):
            chosen = lesions.loc[lesions["status"] == status, "uncertainty"] if len(lesions) else []
            found[f"n_{status}_lesions"] = len(chosen)
            found[f"mean_mi_{status}_lesions"] = round(float(np.mean(chosen)), 5) if len(chosen) else None
        found["temperature_from_calibration_subjects"] = round(temperature, 3)
        found["ece_before"] = round(calibration.calibration(maps["mean"], case.mask, brain_mask=brain)["ece"], 4)
        found["ece_after"] = round(calibration.calibration(calibration.apply_temperature(maps["mean"], temperature),
                                                           case.mask, brain_mask=brain)["ece"], 4)
        results[case.case_id] = found
    return {"name": "quality", "results": results}


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--one":
        print(json.dumps(_quality() if sys.argv[2] == "quality" else _one(sys.argv[2])))
        return 0
    found = run_fresh(__file__, "mc_dropout_10")
    print(f"10 MC-dropout samples: {found['seconds']:.1f} s wall (+ {found['maps_seconds']:.1f} s for the maps), "
          f"peak memory {found['peak_rss_mb']:.0f} MB ({found['case']} {tuple(found['shape'])})")
    quality = run_fresh(__file__, "quality")
    for case_id, figures in quality["results"].items():
        print(case_id, figures)
    summary = {"threads": 2, "load_average": os.getloadavg(), "results": [found, quality],
               "targets": {"seconds": 60, "peak_mb": 2048}}
    print(f"load average {summary['load_average'][0]:.1f}")
    write_json("uncertainty", summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
