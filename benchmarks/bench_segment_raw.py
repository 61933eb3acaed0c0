"""`mstoolkit segment --skull-strip --register` on raw clinical scans: the longitudinal study-2 visits.

open_ms_data's longitudinal patients 01 and 03 (Lesjak et al. 2016, CC-BY) come as acquired:
2D FLAIR with 3-4 mm slices, T1W on its own grid, skull on, LPS. This is the path a user takes
with scans straight from a scanner, so the benchmark runs the whole command in a fresh process
(time and peak memory) on each patient's study 2 (FLAIR + T1W).

Their only truth is the experts' lesion **change** mask (``gt.nii.gz``, in a common space): new
and enlarging lesions, not every lesion. A lesion the model marks outside it may well be a real,
stable lesion, so precision, Dice and F1 would be wrong here. What partial labels do allow is a
positives-only check: the share of the change lesions the segmentation touches at study 2
(lesion-wise sensitivity, any-overlap, 26-connectivity, changes of 3 mm³ and more), and the share
of their voxels inside it. Both masks are compared in the common space: the segmentation is
carried there with the study's ``study2_FLAIR_to_common_space.txt``.

Needs the shared data folder (``../shared`` next to the repository); skips with a message without it.
Run: python benchmarks/bench_segment_raw.py [--model reference|PATH] [--threads 2]
Writes build/benchmarks/segment_raw[_NAME].json.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _common import ROOT, run_cli, write_json

SHARED = ROOT.parent / "shared" / "data" / "open_ms_data" / "longitudinal" / "raw"
PATIENTS = ("patient01", "patient03")


def positives_only(mask_path: Path, patient_dir: Path) -> dict:
    """How much of the experts' change at study 2 the segmentation covers (see the module text)."""
    import cc3d
    import numpy as np

    from mstoolkit.data.io import load_mask, spacing_from_affine
    from mstoolkit.longitudinal.change import to_common_space

    truth, affine = load_mask(patient_dir / "gt.nii.gz")
    voxel_mm3 = float(np.prod(spacing_from_affine(affine)))
    pred, _ = to_common_space(mask_path, patient_dir, "study2", is_mask=True)
    components = cc3d.connected_components(truth.astype(np.uint8), connectivity=26)
    sizes = np.bincount(components.ravel())
    kept = [label for label in range(1, len(sizes)) if sizes[label] * voxel_mm3 >= 3.0]
    found = [label for label in kept if pred[components == label].any()]
    change = np.isin(components, kept)
    return {"change_lesions": len(kept), "change_lesions_touched": len(found),
            "lesion_sensitivity": round(len(found) / len(kept), 3) if kept else None,
            "change_voxels_covered": round(float(pred[change].mean()), 3) if change.any() else None,
            "segmented_volume_ml_common_space": round(float(pred.sum()) * voxel_mm3 / 1000, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="reference", help="'reference' or a model folder")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not SHARED.is_dir():
        print(f"skipping: {SHARED} is absent (the shared data folder next to the repository)")
        return
    results: dict = {"model": args.model, "threads": args.threads, "patients": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for patient in PATIENTS:
            folder, out = SHARED / patient, Path(tmp) / patient
            seconds, peak_mb = run_cli(["segment", "--flair", str(folder / "study2_FLAIR.nii.gz"), "--t1",
                                        str(folder / "study2_T1W.nii.gz"), "--skull-strip", "--register",
                                        "--model", args.model, "--out", str(out)], args.threads)
            scores = positives_only(out / "lesion_mask.nii.gz", folder)
            results["patients"][patient] = {"seconds": round(seconds, 1), "peak_mb": round(peak_mb), **scores}
            print(f"{patient} study 2 (raw 2D FLAIR + T1W, skull on): {seconds:.0f} s, peak {peak_mb:.0f} MB; "
                  f"touches {scores['change_lesions_touched']} of {scores['change_lesions']} change lesions "
                  f"(sensitivity {scores['lesion_sensitivity']}), covers {scores['change_voxels_covered']} of their voxels; "
                  f"segmented {scores['segmented_volume_ml_common_space']} mL", flush=True)
    name = "segment_raw" if args.model == "reference" else f"segment_raw_{Path(args.model).name}"
    write_json(name, results)


if __name__ == "__main__":
    main()
