"""Fixtures shared by the whole test suite: tiny, odd-shaped synthetic volumes.

Module-specific fixtures live in that module's test file.
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
