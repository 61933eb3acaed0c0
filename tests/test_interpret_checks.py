"""Tests of mstoolkit.interpret_checks: pointing game, edge map, display, lesion regions."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest

from mstoolkit import interpret_checks
from mstoolkit.io import MSToolkitInputError


def test_pointing_game_edge_map_and_display():
    brain = np.ones((8, 8, 8), bool)
    lesion = np.zeros_like(brain)
    lesion[2:4, 2:4, 2:4] = True
    assert interpret_checks.pointing_game(np.ones((8, 8, 8)), lesion, brain_mask=brain) == pytest.approx(1.0)
    assert interpret_checks.pointing_game(lesion * 2.0 - 1.0, lesion, brain_mask=brain) == pytest.approx(64.0)
    step = np.zeros((9, 8, 7), np.float32)
    step[5:] = 1.0
    edges = interpret_checks.edge_map(step)
    assert edges[4:6].min() > 0 and edges[:3].max() == 0 and edges[7:].max() == 0
    shown = interpret_checks.normalize_for_display(np.linspace(-1, 3, 8 * 8 * 8).reshape(8, 8, 8))
    assert shown.min() == 0 and shown.max() == 1
    ax = interpret_checks.plot_map(step, step, contour=step > 0, title="toy")
    assert ax.get_title() == "toy"


def test_lesion_region_matches_metrics_numbering():
    from mstoolkit.metric_tables import lesion_table

    mask = np.zeros((12, 10, 9), np.uint8)
    mask[1:3, 1:3, 1:3] = 1  # 8 voxels
    mask[7:10, 5:8, 4:7] = 1  # 27 voxels
    table = lesion_table(mask, mask, spacing=(1, 1, 1)).query("source == 'pred'")
    for _, row in table.iterrows():
        assert interpret_checks.lesion_region(mask, int(row["lesion"])).sum() == row["volume_mm3"]
    with pytest.raises(MSToolkitInputError, match="between 1 and 2"):
        interpret_checks.lesion_region(mask, 3)


def test_errors():
    with pytest.raises(MSToolkitInputError, match="no voxel inside the brain"):
        interpret_checks.pointing_game(np.ones((4, 4, 4)), np.zeros((4, 4, 4)), brain_mask=np.ones((4, 4, 4)))
