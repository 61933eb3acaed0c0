"""What every benchmark script shares: thread limits, the machine, fresh processes, JSON results.

Each script runs as ``python benchmarks/bench_X.py`` from the repository root; Python
then puts ``benchmarks/`` on the import path, so ``from _common import ...`` works.
Results go to ``build/benchmarks/X.json``.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "build" / "benchmarks"
#: Environment variables that cap the threads of OpenMP, MKL and OpenBLAS.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def limit_threads(threads: int, *, torch: bool = False, simpleitk: bool = False) -> None:
    """Use at most ``threads`` threads in the numerical libraries.

    The environment variables act on libraries loaded afterwards: call this before
    numpy is imported where that matters. ``torch`` and ``simpleitk`` also import
    those packages and set their own thread counts.
    """
    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)
    if torch:
        import torch as torch_module

        torch_module.set_num_threads(threads)
    if simpleitk:
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


def thread_env(threads: int) -> dict[str, str]:
    """The environment for a child process limited to ``threads`` threads."""
    return {**os.environ, **{name: str(threads) for name in THREAD_VARIABLES}}


def machine() -> str:
    """The processor (or, when the platform does not say, the machine type) of this computer."""
    return platform.processor() or platform.machine()


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (Linux reports kB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def run_fresh(script: str, name: str) -> dict[str, Any]:
    """Run ``python SCRIPT --one NAME`` in a fresh process; return the JSON it printed last.

    A fresh process per measurement makes its peak memory its own.
    """
    done = subprocess.run([sys.executable, script, "--one", name], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_cli(arguments: list[str], threads: int) -> tuple[float, float]:
    """Run ``mstoolkit ARGUMENTS`` in a fresh process; return (seconds, peak resident memory in MB).

    The seconds include Python start-up, as a user waits for them; the peak is the child's own:
    its VmHWM (reset when the new program starts), not ``ru_maxrss``, which Linux carries over
    from the parent that forked it (a benchmark holding 1.9 GB made every child report 1.9 GB).
    A failing command stops the benchmark with the end of its error output.
    """
    import time

    command = [sys.executable, "-c",
               "import sys; from mstoolkit.cli import main; code = main(sys.argv[1:]); "
               "print('PEAK_KB', next(int(line.split()[1]) for line in open('/proc/self/status') "
               "if line.startswith('VmHWM'))); sys.exit(code)",
               *arguments]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=thread_env(threads))
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"mstoolkit {arguments[0]} failed:\n{done.stderr[-2000:]}")
    peak_kb = next(int(line.split()[1]) for line in done.stdout.splitlines() if line.startswith("PEAK_KB"))
    return seconds, peak_kb / 1024


def write_json(name: str, data: Any, *, path: str | os.PathLike | None = None) -> Path:
    """Write ``data`` to ``build/benchmarks/NAME.json`` (or ``path``) whole, then rename it.

    A run that stops half-way never leaves a half-written result. Prints and
    returns the path.
    """
    from mstoolkit.data.io import write_atomic  # here: numpy loads only after limit_threads

    out = Path(path) if path is not None else OUT_DIR / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, json.dumps(data, indent=2) + "\n")
    print(f"wrote {out}")
    return out


def benchmark_scan():
    """The scan most benchmarks time: the shipped real sample's patient26 (1 mm MNI,
    FLAIR + T1; Lesjak et al. 2018, CC-BY)."""
    from mstoolkit.data.datasets import load_dataset_case, real_sample_dir

    return load_dataset_case(real_sample_dir(), "patient26")

