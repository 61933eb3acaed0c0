"""Training in a second process, so that the notebook's kernel stays free.

A training loop in a notebook cell keeps the kernel busy: nothing else runs until it ends.
``start_training`` launches ``mstoolkit train`` (the same loop, settings and subject split:
the ``workshop`` preset is notebook 03's ``workshop`` profile) as a separate process that
writes ``history.json`` after every epoch; ``training_progress`` reads it, with the
process's own peak memory, whenever a cell asks; ``wait_for_training`` polls until it ends.

Introduced in notebook 03 (U-Net training).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

__all__ = ["start_training", "training_progress", "wait_for_training"]


def start_training(preset: str, out_dir: str | os.PathLike, *, seed: int = 0, device: str = "auto") -> subprocess.Popen:
    """Start ``mstoolkit train --preset PRESET --out OUT_DIR`` in the background and return at once.

    Its output goes to ``OUT_DIR/train.log``. The process is the caller's to wait for
    (:func:`wait_for_training`) or stop (``process.terminate()``).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "history.json").unlink(missing_ok=True)  # a previous run's progress is not this run's
    log = open(out_dir / "train.log", "w")  # noqa: SIM115 - the child process writes to it after we return
    command = [sys.executable, "-m", "mstoolkit.cli", "train", "--preset", preset, "--out", str(out_dir),
               "--seed", str(seed), "--device", device]
    try:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    finally:
        log.close()  # the child has its own copy of the file handle


def _peak_memory_mb(pid: int) -> float | None:
    """The process's high-water mark of resident memory (Linux ``VmHWM``), None elsewhere or after it ended."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def training_progress(out_dir: str | os.PathLike, process: subprocess.Popen | None = None) -> dict[str, Any]:
    """What a background training has done so far, read from ``OUT_DIR/history.json``.

    Returns ``history`` (the loop's lists, empty before the first epoch ends), ``epochs``
    (epochs finished), ``running`` (whether ``process`` is still alive), ``returncode``
    and ``peak_mb`` (the process's peak resident memory, while it runs on Linux).

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "history.json").write_text('{"loss": [0.9, 0.7], "val_dice": [0.1, 0.3]}')
    >>> progress = training_progress(folder)
    >>> progress["epochs"], progress["running"]
    (2, False)
    """
    path = Path(out_dir) / "history.json"
    try:
        history = json.loads(path.read_text())
    except (OSError, ValueError):  # not written yet (the file is written atomically, so never half)
        history = {}
    running = process is not None and process.poll() is None
    return {"history": history, "epochs": len(history.get("loss", [])), "running": running,
            "returncode": None if process is None else process.poll(),
            "peak_mb": _peak_memory_mb(process.pid) if running else None}


def wait_for_training(process: subprocess.Popen, out_dir: str | os.PathLike, *, poll_seconds: float = 5.0,
                      callback: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Poll a background training until it ends; call ``callback(progress)`` when an epoch is added.

    Returns the last progress (with ``peak_mb``, the largest value seen). Raises
    ``RuntimeError`` with the end of ``train.log`` when the process failed.
    """
    seen, peak = -1, 0.0
    while True:
        progress = training_progress(out_dir, process)
        peak = max(peak, progress["peak_mb"] or 0.0)
        if callback is not None and progress["epochs"] != seen and progress["epochs"]:
            callback(progress)
        seen = progress["epochs"]
        if not progress["running"]:
            break
        time.sleep(poll_seconds)
    progress["peak_mb"] = peak or None
    if process.returncode:
        log = (Path(out_dir) / "train.log").read_text(errors="replace").splitlines()[-15:]
        raise RuntimeError(f"the background training failed (exit code {process.returncode}):\n" + "\n".join(log))
    return progress
