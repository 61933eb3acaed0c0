"""Speed and realism of the synthetic MS phantom (target: <= 3 s per subject on one core).

Speed: seconds per 1 mm subject (wall clock and CPU time, one thread), after the
one-off template loading, plus a longitudinal pair and a raw scan.
Realism (when the real open_ms_data sample is on this machine): lesion count,
volume and location share against the 28 real consensus masks, intensity
histograms inside the brain against patient26, and the side-by-side figure
docs/figures/phantom_vs_real.png (phantom vs real, FLAIR and T1, lesion contours).
Prints the figures and writes build/benchmarks/phantom.json.

Run: ``.venv/bin/python benchmarks/bench_phantom.py [--n 5] [--figure PATH]``
"""

from __future__ import annotations

from _common import ROOT, limit_threads, machine, write_json

limit_threads(1)  # one core, as the target says; set before numpy loads

import argparse
import os
import time
from pathlib import Path

import numpy as np

from mstoolkit.data.datasets import real_sample_dir
from mstoolkit.data.io import load_image
from mstoolkit.phantom import anatomy as phantom_anatomy
from mstoolkit.phantom import generator as phantom
from mstoolkit.phantom import lesions as phantom_lesions
from mstoolkit.phantom.lesions import REAL_LESION_DIR

TARGET_S = 3.0
CONTOUR = "#E69F00"  # Okabe-Ito orange: visible on grey, colour-blind safe
PHANTOM_COLOUR, REAL_COLOUR = "#0072B2", "#D55E00"


def _timed(function, *args, **kwargs):
    wall, cpu = time.perf_counter(), time.process_time()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def _lesion_stats(masks: list[np.ndarray]) -> dict:
    import cc3d

    counts, volumes, zones = [], [], []
    for mask in masks:
        labels = cc3d.connected_components(mask.astype(np.uint8), connectivity=26)
        stats = cc3d.statistics(labels)
        counts.append(int(labels.max()))
        volumes += [int(v) for v in stats["voxel_counts"][1:]]
        zones += phantom_lesions._zone_of(stats["centroids"][1:])
    share = {zone: round(zones.count(zone) / max(len(zones), 1), 3) for zone in phantom_anatomy.LESION_ZONES}
    totals = [float(m.sum()) / 1000 for m in masks]
    return {"subjects": len(masks), "count_median": float(np.median(counts)), "count_range": [min(counts), max(counts)],
            "volume_mm3_percentiles_5_50_95": [float(np.percentile(volumes, q)) for q in (5, 50, 95)],
            "volume_mm3_max": int(max(volumes)), "total_ml_median": round(float(np.median(totals)), 2),
            "zone_share": share, "volumes": volumes}


def _histogram_distance(a: np.ndarray, b: np.ndarray) -> float:
    """1-Wasserstein distance between intensity distributions, each divided by its median."""
    from scipy.stats import wasserstein_distance

    return float(wasserstein_distance(a / np.median(a), b / np.median(b)))


def _figure(case, real: dict, real_mask: np.ndarray, stats: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 4, figsize=(12, 9.6), gridspec_kw={"height_ratios": [1, 0.86, 0.62]})
    views = [("axial", lambda a: a[:, :, 98].T), ("coronal", lambda a: a[:, 110, :].T)]
    columns = [("FLAIR", "phantom"), ("FLAIR", "real"), ("T1", "phantom"), ("T1", "real")]
    for row, (plane, cut) in enumerate(views):
        for col, (seq, source) in enumerate(columns):
            image = case.images[seq] if source == "phantom" else real[seq]
            mask = case.mask if source == "phantom" else real_mask
            brain = case.brain_mask > 0 if source == "phantom" else real[seq] > 0
            ax = axes[row, col]
            ax.imshow(cut(image), origin="lower", cmap="gray", vmin=0, vmax=np.percentile(image[brain], 99.5))
            ax.contour(cut(mask), levels=[0.5], colors=CONTOUR, linewidths=0.7)
            ax.set_title(f"{source} {seq}, {plane}", fontsize=10)
            ax.set_xticks([]), ax.set_yticks([])
    for col, seq in enumerate(("FLAIR", "T1")):
        ax = axes[2, col]
        for values, label, colour in ((case.images[seq][case.brain_mask > 0], "phantom", PHANTOM_COLOUR),
                                      (real[seq][real[seq] > 0], "real patient26", REAL_COLOUR)):
            ax.hist(values / np.median(values), bins=120, range=(0, 2), density=True, histtype="step",
                    color=colour, label=label)
        ax.set_title(f"{seq} inside the brain", fontsize=10)
        ax.set_xlabel("intensity / brain median"), ax.set_ylabel("density")
        ax.legend(fontsize=8)
    ax = axes[2, 2]
    for key, label, colour in (("phantom", "phantom", PHANTOM_COLOUR), ("real", "28 real masks", REAL_COLOUR)):
        ax.hist(np.log10(stats[key]["volumes"]), bins=40, range=(0, 4.7), density=True, histtype="step",
                color=colour, label=label)
    ax.set_title("lesion volumes", fontsize=10)
    ax.set_xlabel("log10 volume (mm³)"), ax.set_ylabel("density"), ax.legend(fontsize=8)
    ax = axes[2, 3]
    x = np.arange(len(phantom_anatomy.LESION_ZONES))
    for offset, key, colour in ((-0.2, "phantom", PHANTOM_COLOUR), (0.2, "real", REAL_COLOUR)):
        ax.bar(x + offset, [stats[key]["zone_share"][z] for z in phantom_anatomy.LESION_ZONES], 0.4, color=colour, label=key)
    ax.set_xticks(x, ["periventr.", "juxtacort.", "deep WM", "infratent."], fontsize=8)
    ax.set_title("lesion location (share of lesions)", fontsize=10), ax.set_ylabel("share"), ax.legend(fontsize=8)
    fig.suptitle(f"Synthetic phantom (seed {case.meta['seed']}, profile '{case.meta['profile']}') vs a real MS patient "
                 "on the same MNI 1 mm grid; orange contour = lesion mask", fontsize=11)
    fig.text(0.5, 0.005, "Real images and masks: open_ms_data patient26, Lesjak et al. (2018), Neuroinformatics "
             "16:51-63, CC-BY. Phantom built from the MNI ICBM152 2009a templates (Fonov et al. 2011).",
             ha="center", fontsize=8)
    fig.tight_layout(rect=(0, 0.02, 1, 0.97))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=72)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5, help="subjects to time (default 5)")
    parser.add_argument("--figure", default=str(ROOT / "docs" / "figures" / "phantom_vs_real.png"))
    parser.add_argument("--figure-seed", type=int, default=0)
    args = parser.parse_args()

    _, template_s, _ = _timed(lambda: (phantom_anatomy.load_template(), phantom_anatomy.noise_volume("fine"), phantom_anatomy.noise_volume("coarse")))
    walls, cpus, masks = [], [], []
    for seed in range(args.n):
        case, wall, cpu = _timed(phantom.generate_subject, seed=seed)
        walls.append(wall), cpus.append(cpu), masks.append(case.mask)
    _, pair_s, pair_cpu = _timed(phantom.generate_longitudinal_pair, seed=0)
    _, raw_s, raw_cpu = _timed(phantom.generate_raw_scan, seed=0)
    result = {
        "target_s_per_subject": TARGET_S,
        "s_per_subject_wall_median": round(float(np.median(walls)), 3),
        "s_per_subject_cpu_median": round(float(np.median(cpus)), 3),
        "s_per_subject_wall": [round(w, 3) for w in walls],
        "template_load_s": round(template_s, 3),
        "longitudinal_pair_s": round(pair_s, 3), "longitudinal_pair_cpu_s": round(pair_cpu, 3),
        "raw_scan_s": round(raw_s, 3), "raw_scan_cpu_s": round(raw_cpu, 3),
        "threads": 1, "machine": machine(), "cpus": os.cpu_count(),
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    print(f"phantom: {result['s_per_subject_wall_median']:.2f} s/subject wall, "
          f"{result['s_per_subject_cpu_median']:.2f} s CPU (1 thread; target <= {TARGET_S} s; "
          f"template load {template_s:.1f} s once per process)")
    print(f"longitudinal pair {pair_s:.2f} s, raw scan {raw_s:.2f} s; load average {result['load_average']}")

    # the real masks: the 27 shipped in the package (real_lesions/) and the shipped sample's patient26
    patient = real_sample_dir() / "cross_sectional" / "MNI" / "patient26"
    mask_files = [*sorted(REAL_LESION_DIR.glob("patient*.nii.gz")), next(patient.glob("GOLD_STANDARD_*.nii.gz"))]
    real_masks = [load_image(p)[0] > 0.5 for p in mask_files]
    stats = {"phantom": _lesion_stats(masks), "real": _lesion_stats(real_masks)}
    real = {seq: load_image(next(patient.glob(f"{seq}_*.nii.gz")))[0] for seq in ("FLAIR", "T1", "T2")}
    case = phantom.generate_subject(seed=args.figure_seed)
    distances = {seq: round(_histogram_distance(case.images[seq][case.brain_mask > 0], real[seq][real[seq] > 0]), 3)
                 for seq in real}
    for key in ("phantom", "real"):
        s = stats[key]
        print(f"{key:8s} lesions/subject median {s['count_median']:.0f} {s['count_range']}, volume mm3 "
              f"p5/p50/p95 {s['volume_mm3_percentiles_5_50_95']}, max {s['volume_mm3_max']}, total mL median "
              f"{s['total_ml_median']}, zones {s['zone_share']}")
    print(f"intensity histograms (brain, / median) Wasserstein distance phantom vs real: {distances}")
    result["realism"] = dict({k: {n: v for n, v in s.items() if n != "volumes"} for k, s in stats.items()},
                             histogram_wasserstein=distances)
    _figure(case, real, load_image(next(patient.glob("GOLD_STANDARD_*.nii.gz")))[0], stats, Path(args.figure))
    print(f"figure: {args.figure} ({Path(args.figure).stat().st_size / 1024:.0f} KB)")
    write_json("phantom", result)


if __name__ == "__main__":
    main()
