"""What is this machine? Versions, GPU or CPU, data found, Colab/Binder/local.

``mstoolkit doctor`` prints the full report; every notebook's setup cell calls
:func:`describe_runtime` for a one-line summary. Introduced in notebook 01.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
from importlib import metadata
from pathlib import Path

__all__ = ["detect_platform", "describe_device", "runtime_summary", "describe_runtime", "collect_report",
           "cli_doctor"]

#: Where Debian's orthanc package puts the server (/usr/sbin is not always on PATH).
ORTHANC_PATH = "/usr/sbin/Orthanc"

_PACKAGES = (
    "numpy", "scipy", "nibabel", "nilearn", "SimpleITK", "pydicom", "highdicom", "pynetdicom", "dcm2niix", "torch", "monai", "captum",
    "matplotlib", "ipywidgets", "ipyniivue", "itkwidgets", "papermill", "jupyterlab",
)


def detect_platform() -> str:
    """``"colab"``, ``"binder"`` or ``"local"``: where this Python runs."""
    if "google.colab" in sys.modules or os.environ.get("COLAB_RELEASE_TAG"):
        return "colab"
    if os.environ.get("BINDER_SERVICE_HOST") or os.environ.get("BINDER_REQUEST") or os.environ.get("BINDER_LAUNCH_HOST"):
        return "binder"
    return "local"


def describe_device() -> str:
    """A short description of the accelerator torch can use, or ``"CPU only"``."""
    try:
        import torch
    except ImportError:
        return "torch not installed"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return f"CUDA GPU: {props.name} ({props.total_memory / 2**30:.0f} GiB)"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "Apple GPU (MPS)"
    return f"CPU only ({os.cpu_count()} cores)"


def runtime_summary() -> str:
    """One line: mstoolkit/torch versions, device and platform."""
    from mstoolkit import __version__

    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = "missing"
    return (
        f"mstoolkit {__version__} · Python {platform.python_version()} · torch {torch_version} · "
        f"{describe_device()} · running on {detect_platform()}"
    )


def describe_runtime() -> None:
    """Print :func:`runtime_summary` (every notebook's setup cell calls this)."""
    print(runtime_summary())


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def collect_report() -> dict:
    """Everything ``mstoolkit doctor`` reports, as a dict."""
    from mstoolkit import __version__
    from mstoolkit.data.datasets import default_data_dir, real_sample_dir

    try:
        import psutil

        memory_gb = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:  # pragma: no cover - psutil is a dependency
        memory_gb = None
    cache = default_data_dir()
    datasets = sorted(p.name for p in cache.iterdir() if p.is_dir()) if cache.is_dir() else []
    real = real_sample_dir()
    reference = Path(__file__).parent / "segmentation" / "reference"
    return {
        "mstoolkit": __version__,
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.machine()}",
        "platform": detect_platform(),
        "device": describe_device(),
        "cpu_cores": os.cpu_count(),
        "memory_gb": memory_gb,
        "packages": {name: _version(name) for name in _PACKAGES},
        "data_cache": str(cache),
        "datasets_in_cache": datasets,
        "real_sample": str(real),
        "reference_model": sorted(p.name for p in reference.glob("*")) if reference.is_dir() else [],
        # A PACS to try `mstoolkit study --pacs` against locally; the tests start their own.
        "orthanc": shutil.which("Orthanc") or (ORTHANC_PATH if Path(ORTHANC_PATH).is_file() else None),
    }


def cli_doctor(args) -> int:
    """``mstoolkit doctor``: print the report (text or ``--json``)."""
    report = collect_report()
    if getattr(args, "json", False):
        print(json.dumps(report, indent=2))
        return 0
    print(f"mstoolkit {report['mstoolkit']} on Python {report['python']} ({report['system']}), platform: {report['platform']}")
    print(f"device: {report['device']}; memory: {report['memory_gb']} GiB")
    print("packages:")
    for name, version in report["packages"].items():
        note = "" if version else ("  (optional)" if name == "itkwidgets" else "  MISSING")
        print(f"  {name:<12} {version or '-'}{note}")
    print(f"data cache ($MSTOOLKIT_DATA): {report['data_cache']}")
    print(f"  datasets: {', '.join(report['datasets_in_cache']) or 'none yet (notebooks generate the phantom on first use)'}")
    print(f"real open_ms_data sample: {report['real_sample'] or 'not found (mstoolkit data download open_ms_data)'}")
    print(f"reference model files: {', '.join(report['reference_model']) or 'none'}")
    print(f"Orthanc (a PACS for the DICOM tests): {report['orthanc'] or 'not installed (optional: apt-get install orthanc)'}")
    missing = [n for n, v in report["packages"].items() if v is None and n != "itkwidgets"]
    if missing:
        print(f"problem: missing packages {', '.join(missing)}: run `make install` or `pip install -e .`")
        return 1
    return 0
