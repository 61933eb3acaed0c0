"""Fixtures shared by the whole test suite: tiny, odd-shaped synthetic volumes.

Also the MNI template and a synthetic skull-on head that the registration and
preprocessing tests share. Module-specific fixtures live in that module's test file.
"""

from __future__ import annotations

import numpy as np
import pytest

#: An odd shape so that axis mix-ups show up as errors.
ODD_SHAPE = (7, 8, 9)


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded random generator (tests stay deterministic)."""
    return np.random.default_rng(0)


@pytest.fixture
def anisotropic_affine() -> np.ndarray:
    """RAS+ voxel→world affine with 0.9 × 1.2 × 3.0 mm voxels and an offset origin."""
    affine = np.diag([0.9, 1.2, 3.0, 1.0])
    affine[:3, 3] = (-3.0, 5.0, 10.0)
    return affine


@pytest.fixture
def tiny_image(rng: np.random.Generator) -> np.ndarray:
    """A float32 (7, 8, 9) image."""
    return rng.normal(100.0, 10.0, size=ODD_SHAPE).astype(np.float32)


@pytest.fixture
def empty_mask() -> np.ndarray:
    """An all-zero uint8 (7, 8, 9) mask."""
    return np.zeros(ODD_SHAPE, dtype=np.uint8)


# --------------------------------------------------------------------------- registration and preprocessing


def _rigid(angles_deg, shift_mm, scale: float = 1.0) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    matrix = np.eye(4)
    matrix[:3, :3] = Rotation.from_euler("xyz", angles_deg, degrees=True).as_matrix() * scale
    matrix[:3, 3] = shift_mm
    return matrix


@pytest.fixture(scope="session")
def rigid():
    """``rigid(angles_deg, shift_mm, scale=1.0)``: a 4x4 world move (rotation about x, y, z, then shift)."""
    return _rigid


@pytest.fixture(scope="module")
def template2():
    """MNI template at 2 mm: (image, brain mask, affine)."""
    from mstoolkit.preprocessing.preprocess import load_mni_template

    return load_mni_template(resolution=2)


@pytest.fixture(scope="module")
def synthetic_head(template2):
    """A skull-on head: deformed MNI brain + dark bone + bright scalp, placed by a known rigid+scale move.

    Returns (image, true brain mask, affine, move) where move maps template world to head world.
    """
    from scipy import ndimage

    t1, brain, affine = template2
    rng = np.random.default_rng(1)
    shape = t1.shape
    coarse = [rng.normal(0, 1, (5, 6, 5)) for _ in range(3)]
    disp = [ndimage.zoom(c, np.array(shape) / np.array(c.shape), order=3)[: shape[0], : shape[1], : shape[2]] * 1.5 for c in coarse]
    grid = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    coords = [g + d for g, d in zip(grid, disp)]
    t1d = ndimage.map_coordinates(t1, coords, order=1)
    truth = (ndimage.map_coordinates(brain.astype(float), coords, order=1) > 0.5).astype(np.uint8)
    head = ndimage.binary_dilation(truth, iterations=6)
    bone = head & ~ndimage.binary_dilation(truth, iterations=1)
    scalp = head & ~ndimage.binary_dilation(truth, iterations=4)
    image = t1d.copy()
    image[bone & ~scalp] = 0.1
    image[scalp] = 0.8
    image = (image + rng.normal(0, 0.02, shape)).astype(np.float32)
    move = _rigid([6, -4, 3], [4, -6, 3], scale=1.04)
    return image, truth, move @ affine, move


# --------------------------------------------------------------------------- the full real sample beside the repository

def shared_sample_dir():
    """The larger open_ms_data sample in ``shared/data/open_ms_data`` beside the repository, or None.

    It holds what the package does not ship (longitudinal scans, 28 masks, the upstream MANIFEST);
    tests that need those skip without it. The notebooks and the package never read it: they use
    the sample shipped in the package (:func:`mstoolkit.data.datasets.real_sample_dir`).
    """
    from pathlib import Path

    for parent in Path(__file__).resolve().parents[:3]:
        candidate = parent / "shared" / "data" / "open_ms_data"
        if (candidate / "MANIFEST.tsv").is_file():
            return candidate
    return None


# --------------------------------------------------------------------------- a real PACS (Orthanc on loopback)


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory):
    """A running Orthanc on free loopback ports, started once for the session (see tests/orthanc.py).

    Yields an object with ``.address`` (a PacsAddress), ``.rest_url`` and ``.instances()``.
    Skipped where Orthanc is not installed, a failure instead under MSTOOLKIT_REQUIRE_ORTHANC=1.
    """
    from orthanc import running_orthanc

    with running_orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        yield server


# --------------------------------------------------------------------------- scanner-like DICOM studies


@pytest.fixture(scope="session")
def teaching_export(tmp_path_factory):
    """`mstoolkit data dicom` written once for the session (about 20 s; read it, do not change it).

    Returns (folder, truth.json as a dict, what the command printed). Used by
    tests/test_scanner_export.py and tests/test_study.py.
    """
    import argparse
    import contextlib
    import io
    import json

    from mstoolkit.clinical.scanner_export import cli_data_dicom

    out = tmp_path_factory.mktemp("export") / "cd"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli_data_dicom(argparse.Namespace(out=str(out), source="all", seed=3)) == 0
    truth = json.loads((out / "truth" / "truth.json").read_text())
    return out, truth, printed.getvalue()
