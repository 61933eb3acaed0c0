"""Tests of mstoolkit.display.viewer: the pure renderer, the widgets and the 3D fallbacks."""

from __future__ import annotations

import gzip
import io
import sys
import types

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from mstoolkit.data.io import Case, MSToolkitInputError
from mstoolkit.display import plots, viewer
from mstoolkit.display.plots import OVERLAY_COLOURS

SHAPE = (7, 8, 9)


def _decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _hex(colour: str) -> list[int]:
    return [int(colour[i : i + 2], 16) for i in (1, 3, 5)]


def _pixel(picture: np.ndarray, x: int, y: int, *, shape=SHAPE, scale: int = 4) -> list[int]:
    """Colour at the centre of voxel (x, y) of an axial slice, radiological convention, 1 mm voxels."""
    row, col = (shape[1] - 1 - y) * scale + scale // 2, (shape[0] - 1 - x) * scale + scale // 2
    return picture[row, col].tolist()


@pytest.fixture
def volume() -> np.ndarray:
    return np.random.default_rng(0).uniform(10, 20, SHAPE).astype(np.float32)


@pytest.fixture
def case(volume: np.ndarray) -> Case:
    mask = np.zeros(SHAPE, np.uint8)
    mask[2:5, 3:6, 3:6] = 1
    affine = np.diag([1.0, 1.0, 3.0, 1.0])
    return Case("toy", {"FLAIR": volume, "T1": 30 - volume}, affine, mask=mask)


# --------------------------------------------------------------------------- slicing and geometry


def test_take_slice_is_radiological_and_agrees_with_nibabel():
    vol = np.zeros(SHAPE)
    vol[6, 7, 4] = 1  # the most Right, most Anterior voxel
    axial = plots.take_slice(vol, "axial", 4)
    assert axial.shape == (8, 7)
    assert np.argwhere(axial).tolist() == [[0, 0]]  # top (anterior), left (patient's right)
    assert nib.aff2axcodes(np.eye(4)) == ("R", "A", "S")  # the convention take_slice assumes
    vol[:] = 0
    vol[3, 2, 8] = 1  # most superior voxel: top row of coronal and sagittal views
    assert np.argwhere(plots.take_slice(vol, "coronal", 2)).tolist() == [[0, 3]]
    assert np.argwhere(plots.take_slice(vol, "sagittal", 3)).tolist() == [[0, 8 - 1 - 2]]


def test_slice_spacing_per_plane():
    assert plots.slice_spacing((1, 2, 3), "axial") == (2.0, 1.0)
    assert plots.slice_spacing((1, 2, 3), "coronal") == (3.0, 1.0)
    assert plots.slice_spacing((1, 2, 3), "sagittal") == (3.0, 2.0)


@pytest.mark.parametrize("plane,size", [("axial", (14, 32)), ("coronal", (14, 54)), ("sagittal", (32, 54))])
def test_anisotropic_spacing_sets_the_aspect(volume, plane, size):
    png = viewer.render_slice(volume, plane=plane, index=3, spacing=(1, 2, 3), pixels_per_mm=2)
    assert Image.open(io.BytesIO(png)).size == size


def test_auto_window_ignores_background_zeros():
    vol = np.zeros((20, 20, 20), np.float32)
    vol[5:15, 5:15, 5:15] = np.linspace(100, 200, 1000).reshape(10, 10, 10)
    low, high = plots.auto_window(vol)
    assert 100 <= low < 110 and 190 < high <= 200
    assert plots.auto_window(np.zeros(SHAPE)) == (0.0, 1.0)


# --------------------------------------------------------------------------- overlay colours


def test_comparison_colours_on_a_toy_case(volume):
    truth = np.zeros(SHAPE, np.uint8)
    prediction = np.zeros(SHAPE, np.uint8)
    truth[1, 1, 4] = prediction[1, 1, 4] = 1  # TP
    prediction[5, 2, 4] = 1  # FP
    truth[3, 6, 4] = 1  # FN
    png = viewer.render_slice(volume, index=4, overlay=prediction, truth=truth, opacity=1.0,
                              pixels_per_mm=4, annotate=False)
    picture = _decode(png)
    assert _pixel(picture, 1, 1) == _hex(OVERLAY_COLOURS["TP"])
    assert _pixel(picture, 5, 2) == _hex(OVERLAY_COLOURS["FP"])
    assert _pixel(picture, 3, 6) == _hex(OVERLAY_COLOURS["FN"])
    red, green, blue = _pixel(picture, 4, 4)
    assert red == green == blue  # untouched voxel stays grey


def test_mask_fill_blends_with_opacity():
    mask = np.zeros(SHAPE, bool)
    mask[2, 2, 4] = True
    window = (10.0, 20.0)
    volume = np.full(SHAPE, 14.0, np.float32)  # uniform: interpolation cannot change the grey
    full = _decode(viewer.render_slice(volume, index=4, overlay=mask, opacity=1.0, window=window,
                                       pixels_per_mm=4, annotate=False))
    half = _decode(viewer.render_slice(volume, index=4, overlay=mask, opacity=0.5, window=window,
                                       pixels_per_mm=4, annotate=False))
    orange = np.array(_hex(OVERLAY_COLOURS["mask"]))
    assert _pixel(full, 2, 2) == orange.tolist()
    grey = np.clip((volume[2, 2, 4] - 10) * 25.5, 0, 255)
    np.testing.assert_allclose(_pixel(half, 2, 2), (orange + grey) / 2, atol=2)


def test_probability_transparency_follows_probability(volume):
    probability = np.zeros(SHAPE, np.float32)
    probability[2, 2, 4], probability[4, 4, 4] = 1.0, 0.2
    flat = np.full(SHAPE, 15.0, np.float32)  # uniform grey, so only the overlay differs
    picture = _decode(viewer.render_slice(flat, index=4, overlay=probability, opacity=1.0, window=(10, 20),
                                          pixels_per_mm=4, annotate=False))
    orange, grey = np.array(_hex(OVERLAY_COLOURS["probability"])), np.array(_pixel(picture, 0, 0))
    np.testing.assert_allclose(_pixel(picture, 2, 2), orange, atol=1)
    np.testing.assert_allclose(_pixel(picture, 4, 4), 0.8 * grey + 0.2 * orange, atol=2)


def test_contour_mode_draws_only_edges(volume):
    mask = np.zeros(SHAPE, np.uint8)
    mask[1:6, 1:6, 4] = 1  # a 5 x 5 square
    orange = _hex(OVERLAY_COLOURS["mask"])
    fill = _decode(viewer.render_slice(volume, index=4, overlay=mask, opacity=1, pixels_per_mm=4, annotate=False))
    contour = _decode(viewer.render_slice(volume, index=4, overlay=mask, mode="contour", opacity=1,
                                          pixels_per_mm=4, annotate=False))
    coloured = {(x, y) for x in range(7) for y in range(8) if _pixel(contour, x, y) == orange}
    ring = {(x, y) for x in range(1, 6) for y in range(1, 6) if x in (1, 5) or y in (1, 5)}
    assert coloured == ring
    assert _pixel(fill, 3, 3) == orange and _pixel(contour, 3, 3) != orange


def test_annotation_marks_the_right_side():
    vol = np.zeros((60, 60, 60), np.float32)
    left = _decode(viewer.render_slice(vol, pixels_per_mm=2))[:, :20]
    right = _decode(viewer.render_slice(vol, pixels_per_mm=2, annotate=False))[:, :20]
    assert left.max() > 200 and right.max() == 0  # the white "R" is drawn at the left edge


# --------------------------------------------------------------------------- errors


def test_errors_are_clear(volume):
    with pytest.raises(MSToolkitInputError, match=r"'overlay' has shape \(7, 8, 8\) but 'image' has shape \(7, 8, 9\)"):
        viewer.render_slice(volume, overlay=np.zeros((7, 8, 8)))
    with pytest.raises(MSToolkitInputError, match=r"'image' must be a 3D array \(x, y, z\), got shape \(7, 8\)"):
        viewer.render_slice(volume[..., 0])
    with pytest.raises(MSToolkitInputError, match=r"one of 'axial', 'coronal', 'sagittal', got 'transverse'"):
        viewer.render_slice(volume, plane="transverse")
    with pytest.raises(MSToolkitInputError, match=r"slice index 9 is outside the axial range 0–8"):
        viewer.render_slice(volume, index=9)
    with pytest.raises(MSToolkitInputError, match=r"slice index -1 is outside the coronal range 0–7"):
        viewer.render_slice(volume, plane="coronal", index=-1)
    with pytest.raises(MSToolkitInputError, match=r"'mode' must be one of 'fill', 'contour', got 'outline'"):
        viewer.render_slice(volume, mode="outline")
    with pytest.raises(MSToolkitInputError, match=r"'opacity' must be between 0 and 1, got 1.5"):
        viewer.render_slice(volume, opacity=1.5)
    with pytest.raises(MSToolkitInputError, match=r"'spacing' must be 3 positive numbers, got \(1.0, 0.0, 1.0\)"):
        viewer.render_slice(volume, spacing=(1.0, 0.0, 1.0))
    with pytest.raises(MSToolkitInputError, match=r"probabilities in \[0, 1\].*from 0 to 3"):
        viewer.render_slice(volume, index=4, overlay=np.full(SHAPE, 3.0) * (np.arange(7)[:, None, None] > 2))
    with pytest.raises(MSToolkitInputError, match=r"'window' must be \(low, high\) with high > low"):
        viewer.render_slice(volume, window=(5, 5))


# --------------------------------------------------------------------------- widgets


def test_widget_controls_change_the_rendered_bytes(case):
    v = viewer.view(case)
    assert v.image.value == v.render()  # rendering is deterministic
    seen = [v.image.value]
    v.slider.value = (v.slider.value + 1) % (v.slider.max + 1)
    seen.append(v.image.value)
    v.opacity.value = 0.9
    seen.append(v.image.value)
    v.mode.value = "contour"
    seen.append(v.image.value)
    v.sequence.value = "T1"
    seen.append(v.image.value)
    v.width.value = v.width.value / 2
    seen.append(v.image.value)
    v.overlay.value = "none"
    seen.append(v.image.value)
    v.plane.value = "coronal"
    seen.append(v.image.value)
    assert len(set(seen)) == len(seen)
    assert v.slider.max == SHAPE[1] - 1
    width, height = Image.open(io.BytesIO(v.image.value)).size
    assert height / width == pytest.approx(9 * 3 / 7, rel=0.05)  # coronal view of 1 x 1 x 3 mm voxels


def test_viewer_starts_on_the_lesions_and_remembers_each_plane(case):
    case.mask[3, 0:2, 5] = 1  # a second lesion: slice z = 5 and slice x = 3 now hold the most lesion voxels
    v = viewer.view(case)
    assert v.slider.value == 5
    v.slider.value = 1
    v.plane.value = "sagittal"
    assert v.slider.value == 3 and v.slider.max == 6
    v.plane.value = "axial"
    assert v.slider.value == 1


def test_overlay_menu_offers_comparison_with_a_prediction(case):
    prediction = np.zeros(SHAPE, np.float32)
    prediction[3:6, 3:6, 4] = 0.9
    v = viewer.view(case, prediction=prediction)
    assert list(v.overlay.options) == ["none", "lesion mask", "prediction", "TP/FP/FN"]
    assert v.overlay.value == "TP/FP/FN" and "false negative" in v.legend.value
    v.overlay.value = "prediction"
    assert "prediction" in v.legend.value


def test_view_of_a_bare_array_and_its_errors(volume):
    v = viewer.view(volume, spacing=(1, 1, 2))
    assert list(v.sequence.options) == ["image"] and list(v.overlay.options) == ["none"]
    with pytest.raises(MSToolkitInputError, match=r"'mask' has shape \(7, 8, 8\) but 'image' has shape \(7, 8, 9\)"):
        viewer.view(volume, mask=np.zeros((7, 8, 8)))
    with pytest.raises(MSToolkitInputError, match=r"Unknown sequence\(s\) \['T2'\]; this case has FLAIR, T1"):
        viewer.view(Case("c", {"FLAIR": volume, "T1": volume}, np.eye(4)), sequences=["T2"])
    with pytest.raises(MSToolkitInputError, match="'plane' must be one of"):
        viewer.view(volume, plane="oblique")


def test_side_by_side_sliders_are_linked(case):
    side = viewer.view_side_by_side(case)
    assert [p.sequence.value for p in side.viewers] == ["FLAIR", "T1"]
    before = [p.image.value for p in side.viewers]
    side.slider.value = 2
    assert all(p.slider.value == 2 for p in side.viewers)
    assert all(p.image.value != b for p, b in zip(side.viewers, before))
    side.viewers[0].plane.value = "sagittal"
    assert all(p.plane.value == "sagittal" for p in side.viewers)
    with pytest.raises(MSToolkitInputError, match="one grid"):
        viewer.view_side_by_side([case.images["FLAIR"], np.zeros((5, 5, 5))])


# --------------------------------------------------------------------------- 3D


def test_view_3d_niivue_carries_the_volume_and_mask(case):
    import ipyniivue

    widget = viewer.view_3d(case)
    assert isinstance(widget, ipyniivue.NiiVue) and len(widget.volumes) == 2
    image = nib.Nifti1Image.from_bytes(gzip.decompress(widget.volumes[0].data))
    mask = nib.Nifti1Image.from_bytes(gzip.decompress(widget.volumes[1].data))
    assert image.shape == SHAPE and np.allclose(image.affine, case.affine)
    assert np.array_equal(np.asarray(mask.dataobj), case.mask)
    assert isinstance(viewer.view_3d(case, backend="2d"), viewer.SliceViewer)
    with pytest.raises(MSToolkitInputError, match="'backend' must be one of 'niivue', 'itk', '2d', got 'vtk'"):
        viewer.view_3d(case, backend="vtk")
    with pytest.raises(MSToolkitInputError, match="No 'T2' image in this case; it has FLAIR, T1"):
        viewer.view_3d(case, sequence="T2")


def test_headless_reason_detects_a_papermill_parent(monkeypatch):
    import psutil

    monkeypatch.delenv("MSTOOLKIT_HEADLESS", raising=False)
    monkeypatch.delenv("CI", raising=False)
    fake_ipython = types.SimpleNamespace(get_ipython=lambda: types.SimpleNamespace(kernel=object()))
    monkeypatch.setitem(sys.modules, "IPython", fake_ipython)

    def process_with_parents(commands):
        parents = [types.SimpleNamespace(cmdline=lambda c=c: c.split()) for c in commands]
        return lambda *a: types.SimpleNamespace(parents=lambda: parents)

    parents = ["python -m ipykernel_launcher", "/usr/bin/papermill in.ipynb out.ipynb"]
    monkeypatch.setattr(psutil, "Process", process_with_parents(parents))
    assert viewer.headless_reason() == "executed by papermill"
    monkeypatch.setattr(psutil, "Process", process_with_parents(["jupyter-lab --no-browser"]))
    assert viewer.headless_reason() is None
    monkeypatch.setenv("CI", "true")
    assert viewer.headless_reason() == "running in CI"


def test_itk_backend_falls_back_with_one_line_when_headless(case, capsys, monkeypatch):
    import ipyniivue

    monkeypatch.setattr(viewer, "headless_reason", lambda: "executed by papermill")
    widget = viewer.view_3d(case, backend="itk")
    out = capsys.readouterr().out
    assert isinstance(widget, ipyniivue.NiiVue)
    assert out.count("\n") == 1 and "itkwidgets not used" in out and "papermill" in out
    assert "itkwidgets" not in sys.modules  # not even imported when there is no browser


def test_importing_the_viewer_loads_neither_itkwidgets_nor_matplotlib():
    import subprocess

    code = "import sys, mstoolkit.display.viewer; print(sorted({'itkwidgets', 'matplotlib'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.notebook
def test_itk_fallback_under_real_papermill_does_not_block(tmp_path):
    import nbformat
    import papermill

    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell(
            "import numpy as np\nfrom mstoolkit.display import viewer\n"
            "w = viewer.view_3d(np.ones((5, 6, 7), np.float32), backend='itk')"
        ),
        nbformat.v4.new_code_cell("print('next cell ran')"),
    ]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    source, result = tmp_path / "in.ipynb", tmp_path / "out.ipynb"
    nbformat.write(notebook, source)
    papermill.execute_notebook(str(source), str(result), kernel_name="python3", progress_bar=False,
                               execution_timeout=120)
    cells = nbformat.read(result, as_version=4).cells
    first = "".join(o.get("text", "") for o in cells[0].outputs)
    assert "itkwidgets not used" in first
    assert "next cell ran" in "".join(o.get("text", "") for o in cells[1].outputs)


@pytest.mark.parametrize("offset", [5000.0, -5000.0])
def test_window_sliders_follow_any_intensity_range(volume, offset):
    v = viewer.view(volume * 100 + offset)  # scanner units far outside the sliders' default 0-100
    low, high = plots.auto_window(volume * 100 + offset)
    assert v.level.value == pytest.approx((low + high) / 2, rel=1e-3)
    assert v.width.value == pytest.approx(high - low, rel=1e-2)


def test_itk_backend_without_itkwidgets_says_how_to_install(case, capsys, monkeypatch):
    monkeypatch.setattr(viewer, "headless_reason", lambda: None)  # as if a browser were attached
    monkeypatch.setitem(sys.modules, "itkwidgets", None)  # importing it now raises ImportError
    viewer.view_3d(case, backend="itk")
    assert "pip install 'mstoolkit[itk]'" in capsys.readouterr().out
