"""Render latency of one slider step of the slice viewer (target: <= 50 ms).

A 182 x 218 x 182 volume at 1 mm (the MNI grid of the phantom and of the real
sample) with a lesion mask and a probability map. Measures the pure renderer
in each overlay style and a full widget step (``viewer.slider.value += 1``),
for each plane. Prints ms/step and writes build/benchmarks/viewer.json.

Run: ``.venv/bin/python benchmarks/bench_viewer.py``
"""

from __future__ import annotations

import os
import time

import numpy as np
from _common import machine, write_json
from scipy import ndimage

from mstoolkit.display import viewer

SHAPE = (182, 218, 182)
TARGET_MS = 50.0
STEPS = 40


def _volumes() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    image = ndimage.gaussian_filter(rng.normal(size=SHAPE).astype(np.float32), 2) * 50 + 300
    centres = rng.integers((40, 40, 40), (140, 170, 140), size=(30, 3))
    mask = np.zeros(SHAPE, np.uint8)
    grid = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    for c in centres:
        mask[sum((g - v) ** 2 for g, v in zip(grid, c)) <= rng.integers(2, 8) ** 2] = 1
    probability = np.clip(ndimage.gaussian_filter(mask.astype(np.float32), 1.5) * 1.5, 0, 1)
    return image, mask, probability


def _ms_per_step(step) -> float:
    step(0)  # warm-up
    start = time.perf_counter()
    for i in range(STEPS):
        step(i)
    return (time.perf_counter() - start) / STEPS * 1000


def main() -> dict:
    image, mask, probability = _volumes()
    results: dict[str, float] = {}
    for plane, axis in (("axial", 2), ("coronal", 1), ("sagittal", 0)):
        start = SHAPE[axis] // 2 - STEPS // 2
        styles = {
            "mask_fill": {"overlay": mask},
            "mask_contour": {"overlay": mask, "mode": "contour"},
            "probability_fill": {"overlay": probability},
            "tp_fp_fn": {"overlay": probability, "truth": mask},
        }
        for name, options in styles.items():
            results[f"render_{plane}_{name}_ms"] = _ms_per_step(
                lambda i, plane=plane, start=start, options=options: viewer.render_slice(image, plane=plane, index=start + i, **options)
            )
        widget = viewer.view(image, mask=mask, prediction=probability, spacing=(1, 1, 1))
        widget.plane.value = plane
        widget.slider.value = start

        def widget_step(i: int, widget=widget, start=start) -> None:
            widget.slider.value = start + 1 + i % (STEPS - 1)

        results[f"widget_step_{plane}_ms"] = _ms_per_step(widget_step)
    worst = max(results.values())
    report = {
        "shape": list(SHAPE),
        "steps": STEPS,
        "ms_per_step": {k: round(v, 2) for k, v in results.items()},
        "worst_ms_per_step": round(worst, 2),
        "target_ms": TARGET_MS,
        "meets_target": worst <= TARGET_MS,
        "machine": f"{machine()}, {os.cpu_count()} cores",
    }
    for key, value in report["ms_per_step"].items():
        print(f"{key:42s} {value:7.2f} ms/step")
    print(f"worst {worst:.1f} ms/step (target <= {TARGET_MS:.0f} ms): {'OK' if worst <= TARGET_MS else 'TOO SLOW'}")
    write_json("viewer", report)
    return report


if __name__ == "__main__":
    raise SystemExit(0 if main()["meets_target"] else 1)
