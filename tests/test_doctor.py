"""Platform and device detection shown by `mstoolkit doctor` and every notebook's setup cell."""

import subprocess
import sys
import types

import pytest

from mstoolkit import doctor


def test_platform_detection(monkeypatch):
    for var in ("COLAB_RELEASE_TAG", "BINDER_SERVICE_HOST", "BINDER_REQUEST", "BINDER_LAUNCH_HOST"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    assert doctor.detect_platform() == "local"
    monkeypatch.setenv("BINDER_SERVICE_HOST", "10.0.0.1")
    assert doctor.detect_platform() == "binder"
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    assert doctor.detect_platform() == "colab"


def test_describe_runtime_prints_one_line(capsys):
    assert doctor.describe_runtime() is None  # nothing echoed a second time in a notebook
    line = capsys.readouterr().out.strip()
    assert line == doctor.runtime_summary()
    assert "\n" not in line and "torch" in line and ("CPU only" in line or "GPU" in line)


def test_missing_package_is_reported(monkeypatch, capsys):
    real_version = doctor._version
    monkeypatch.setattr(doctor, "_version", lambda name: None if name == "monai" else real_version(name))
    assert doctor.cli_doctor(types.SimpleNamespace(json=False)) == 1
    assert "missing packages monai" in capsys.readouterr().out


RELEASE_PROBE = """
import numpy as np, psutil
from mstoolkit.runtime import release_memory
process = psutil.Process()
blocks, pins = [], []
for _ in range(2000):
    blocks.append(np.ones(100 * 1024 // 8))  # below glibc's 128 kB mmap threshold: served from its heap
    pins.append(np.ones(512))  # small arrays between the blocks: the heap cannot shrink from its top
del blocks
held = process.memory_info().rss
release_memory()
print((held - process.memory_info().rss) / 2**20)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim is Linux-only")
def test_release_memory_returns_freed_arrays_to_the_system():
    # A fresh interpreter: the heap's layout must not depend on which tests ran before.
    result = subprocess.run([sys.executable, "-c", RELEASE_PROBE], capture_output=True, text=True, check=True)
    released_mb = float(result.stdout)
    assert released_mb > 150, f"only {released_mb:.0f} MB of ~195 MB freed arrays went back to the system"
