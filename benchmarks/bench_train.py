"""Benchmark training presets: wall time, best validation Dice and peak memory.

Runs `mstoolkit train --preset workshop` (default) in a fresh process on the
phantom, with torch limited to the given number of threads, and reads the
history it wrote. Target for `workshop`: validation Dice >= 0.80 within 10 min
on 2 CPU cores, peak memory <= 2 GB.

Run: python benchmarks/bench_train.py [--preset workshop] [--threads 2]
Writes build/benchmarks/train.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import thread_env, write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="workshop")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", default=None, help="dataset folder (default: the preset's phantom, generated first)")
    args = parser.parse_args()

    data = args.data
    if data is None and args.preset != "reference":  # generate the preset's phantom first, so it is not timed
        from mstoolkit.data.datasets import subject_split
        from mstoolkit.phantom.dataset import ensure_phantom

        ensure_phantom(n_subjects=subject_split(args.preset).n_subjects, seed=0)
    env = thread_env(args.threads)
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "mstoolkit.cli", "train", "--preset", args.preset, "--out", out, "--device", "cpu"]
        command += ["--data", data] if data else []
        started = time.perf_counter()
        result = subprocess.run(command, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if result.returncode != 0:
            raise SystemExit(f"training failed:\n{result.stderr[-3000:]}")
        history = json.loads((Path(out) / "history.json").read_text())
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    dice = [d for d in history["val_dice"] if d == d]
    figures = {
        "preset": args.preset,
        "threads": args.threads,
        "wall_seconds": round(seconds, 1),
        "training_seconds": history["seconds"][-1],
        "epochs_run": len(history["epoch"]),
        "best_val_dice": round(max(dice), 4) if dice else None,
        "final_loss": round(history["loss"][-1], 4),
        "peak_memory_mb": round(peak_mb),
    }
    print(json.dumps(figures, indent=2))
    if args.preset == "workshop":
        ok = figures["best_val_dice"] is not None and figures["best_val_dice"] >= 0.80 and seconds <= 600 and peak_mb <= 2048
        print(f"workshop target (Dice >= 0.80, <= 600 s, <= 2048 MB): {'met' if ok else 'NOT met'}")
    write_json("train", figures)


if __name__ == "__main__":
    main()
