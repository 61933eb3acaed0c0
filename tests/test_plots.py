"""Tests of mstoolkit.display.plots: static figures and the shared colours."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure

from mstoolkit.data.io import MSToolkitInputError
from mstoolkit.display import plots

SHAPE = (7, 8, 9)
OKABE_ITO = {"#000000", "#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7"}


@pytest.fixture
def image() -> np.ndarray:
    return np.random.default_rng(1).uniform(1, 2, SHAPE).astype(np.float32)


def _assert_titled_and_labelled(fig: Figure, title: str) -> None:
    assert isinstance(fig, Figure)
    assert fig._suptitle is not None and fig._suptitle.get_text() == title
    for ax in fig.axes:
        if ax.get_visible():
            assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()


def test_overlay_colours_are_okabe_ito_and_distinct():
    assert set(plots.OVERLAY_COLOURS.values()) <= OKABE_ITO
    assert len({plots.OVERLAY_COLOURS[k] for k in ("TP", "FP", "FN")}) == 3


def test_montage_is_titled_and_picks_lesion_slices(image):
    mask = np.zeros(SHAPE, np.uint8)
    mask[2:4, 2:4, 6:8] = 1
    fig = plots.montage(image, mask=mask, n_slices=2, title="Lesions")
    _assert_titled_and_labelled(fig, "Lesions")
    assert [ax.get_title() for ax in fig.axes if ax.get_visible()] == ["axial 6", "axial 7"]
    assert len(fig.axes[0].collections) == 1  # the mask outline


def test_montage_respects_anisotropic_spacing(image):
    fig = plots.montage(image, plane="coronal", indices=[3], spacing=(1, 1, 3))
    left, right, bottom, top = fig.axes[0].images[0].get_extent()
    assert (right - left, bottom - top) == (7.0, 27.0)  # 7 x 1 mm wide, 9 x 3 mm tall


def test_overlay_figure_shows_probability_on_its_busiest_slice(image):
    probability = np.zeros(SHAPE, np.float32)
    probability[3, 3, 5] = 0.9
    probability[1:6, 1:6, 2] = 0.7
    fig = plots.overlay_figure(image, probability, title="Probability")
    _assert_titled_and_labelled(fig, "Probability")
    assert "slice 2" in fig.axes[1].get_title()
    rgba = fig.axes[1].images[1].get_array()
    assert rgba[..., 3].max() == round(255 * 0.6 * 0.7)  # transparency follows the probability
    with pytest.raises(MSToolkitInputError, match=r"'overlay' has shape \(7, 8, 8\) but 'image' has shape"):
        plots.overlay_figure(image, np.zeros((7, 8, 8)))


def test_comparison_figure_colours_tp_fp_fn(image):
    truth, prediction = np.zeros(SHAPE, np.uint8), np.zeros(SHAPE, np.float32)
    truth[1, 1, 4] = 1
    prediction[1, 1, 4] = 0.9  # TP
    prediction[5, 2, 4] = 0.8  # FP
    truth[3, 6, 4] = 1  # FN
    prediction[3, 6, 4] = 0.2  # below the threshold: still missed
    fig = plots.comparison_figure(image, prediction, truth, indices=[4], title="Agreement")
    _assert_titled_and_labelled(fig, "Agreement")
    rgba = fig.axes[0].images[1].get_array()
    def picture(x, y):  # radiological orientation
        return tuple(rgba[SHAPE[1] - 1 - y, SHAPE[0] - 1 - x, :3] / 255)

    assert picture(1, 1) == pytest.approx(to_rgb(plots.OVERLAY_COLOURS["TP"]))
    assert picture(5, 2) == pytest.approx(to_rgb(plots.OVERLAY_COLOURS["FP"]))
    assert picture(3, 6) == pytest.approx(to_rgb(plots.OVERLAY_COLOURS["FN"]))
    assert rgba[..., 3].astype(bool).sum() == 3
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["true positive", "false positive", "false negative (missed)"]
    with pytest.raises(MSToolkitInputError, match="must have one shape"):
        plots.comparison_figure(image, prediction[:, :, :5], truth)


def test_plot_errors_are_clear(image):
    with pytest.raises(MSToolkitInputError, match=r"'plane' must be one of 'axial', 'coronal', 'sagittal', got 'side'"):
        plots.montage(image, plane="side")
    with pytest.raises(MSToolkitInputError, match=r"'image' must be a 3D array"):
        plots.montage(image[0])
    with pytest.raises(MSToolkitInputError, match=r"slice index 12 is outside the axial range 0–8"):
        plots.montage(image, indices=[12])


def test_figures_are_not_left_open_in_pyplot(image):
    import matplotlib.pyplot as plt

    before = len(plt.get_fignums())
    plots.montage(image, n_slices=3)
    assert len(plt.get_fignums()) == before


def test_case_figure_shows_every_sequence_on_the_lesion_slice(image):
    from mstoolkit.data.io import Case

    mask = np.zeros(SHAPE, np.uint8)
    mask[2:4, 2:4, 6] = 1
    case = Case("toy", {"FLAIR": image, "T1": 3 - image}, np.diag([1.0, 1.0, 2.0, 1.0]), mask=mask)
    fig = plots.case_figure(case)
    _assert_titled_and_labelled(fig, "toy: axial slice 6, lesions outlined")
    assert [ax.get_title() for ax in fig.axes] == ["FLAIR", "T1"]
    assert all(len(ax.collections) == 1 for ax in fig.axes)  # mask outline on each sequence


def test_overlay_rgba_fill_contour_and_nothing():
    square = np.zeros((6, 6), np.uint8)
    square[1:5, 1:5] = 1
    fill = plots.overlay_rgba(square, opacity=1.0)
    contour = plots.overlay_rgba(square, opacity=0.25, mode="contour")
    assert (fill[..., 3] > 0).sum() == 16 and (contour[..., 3] > 0).sum() == 12  # the 4 x 4 square's ring
    assert contour[..., 3].max() == round(255 * 0.5)  # outlines drawn at twice the opacity
    assert plots.overlay_rgba(None) is None
