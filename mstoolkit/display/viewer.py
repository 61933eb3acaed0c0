"""Look at MRI volumes and lesion masks slice by slice, in 2D or 3D.

Everything sits on one pure function, :func:`render_slice` (numpy arrays → PNG
bytes with Pillow: no matplotlib, so a slider step is fast). :func:`view` wraps
it in core ipywidgets that work on Colab, Binder, JupyterLab, Notebook 7 and VS
Code without any extension and never block a headless (papermill) run;
:func:`view_side_by_side` links several viewers to one slider; :func:`view_3d`
opens a 3D view with ipyniivue.

Display convention: **radiological**, as a radiologist reads the RAS+ arrays of
:mod:`mstoolkit.data.io`: the patient's right on the left of the image (marked "R"),
anterior up in axial views, superior up otherwise, anterior on the left in
sagittal views. Pixels keep the voxel size, so 1×1×3 mm scans keep their aspect.

Introduced in notebook 01 (data loading).
"""

from __future__ import annotations

import io as _bytes_io
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mstoolkit.data.io import Case, MSToolkitInputError
from mstoolkit.display.plots import (
    OVERLAY_COLOURS,
    OVERLAY_MODES,
    PLANE_AXIS,
    PLANE_EDGE_LETTERS,
    PLANES,
    auto_window,
    check_display_spacing,
    check_overlay_mode,
    check_plane,
    check_volume,
    overlay_rgba,
    slice_spacing,
    take_slice,
)

__all__ = ["BACKENDS_3D", "render_slice", "SliceViewer", "SideBySide", "view",
           "view_side_by_side", "view_3d", "headless_reason"]

#: Backends of :func:`view_3d`.
BACKENDS_3D = ("niivue", "itk", "2d")
# Processes whose kernels have no browser attached: an itkwidgets view would wait forever there.
_HEADLESS_PARENTS = ("papermill", "nbclient", "nbconvert", "pytest", "notebooks run")


# --------------------------------------------------------------------------- pure rendering


def _check_options(plane: str, mode: str, opacity: float) -> int:
    check_overlay_mode(mode)
    if not 0.0 <= float(opacity) <= 1.0:
        raise MSToolkitInputError(f"'opacity' must be between 0 and 1, got {opacity}.")
    return check_plane(plane)


def _check_overlay_grid(extra: Any, shape: tuple, name: str) -> np.ndarray | None:
    if extra is None:
        return None
    extra = np.asarray(extra)
    if extra.shape != shape:
        raise MSToolkitInputError(
            f"'{name}' has shape {extra.shape} but 'image' has shape {shape}: they must be on the same grid. "
            "Resample it first (mstoolkit.preprocessing.registration.resample_to_reference)."
        )
    return extra


def _default_pixels_per_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    # One scale for every plane: the longest side of the volume spans about 400 pixels.
    return max(1.0, 400.0 / max(n * s for n, s in zip(shape, spacing)))


def _annotate(picture: Image.Image, plane: str) -> None:
    if min(picture.size) < 48:
        return  # too small to label legibly (toy volumes in tests)
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default(size=max(10, min(picture.size) // 18))
    left, right = PLANE_EDGE_LETTERS[plane]
    middle = picture.size[1] // 2
    style = {"fill": "white", "stroke_width": 2, "stroke_fill": "black", "font": font}
    draw.text((3, middle), left, anchor="lm", **style)
    draw.text((picture.size[0] - 3, middle), right, anchor="rm", **style)


def render_slice(
    image: np.ndarray,
    *,
    plane: str = "axial",
    index: int | None = None,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    window: tuple[float, float] | None = None,
    overlay: np.ndarray | None = None,
    truth: np.ndarray | None = None,
    opacity: float = 0.5,
    mode: str = "fill",
    threshold: float = 0.5,
    pixels_per_mm: float | None = None,
    annotate: bool = True,
) -> bytes:
    """Render one slice of a volume, optionally with an overlay, as PNG bytes.

    Parameters
    ----------
    image : array (x, y, z)
        One MRI sequence in RAS+ orientation.
    plane : {"axial", "coronal", "sagittal"}
    index : int, optional
        Slice number along the plane's axis; default the middle slice.
    spacing : 3 floats
        Voxel size in mm; pixels keep the physical aspect.
    window : (low, high), optional
        Intensities shown black and white (``level ± width/2``); default :func:`~mstoolkit.display.plots.auto_window`.
    overlay : array (x, y, z), optional
        A binary mask (integer or bool: one colour) or a probability map (float
        in [0, 1]: transparency follows the probability).
    truth : binary array (x, y, z), optional
        Ground truth. With it, ``overlay`` is a prediction (thresholded at ``threshold``)
        coloured as true/false positives and false negatives (``OVERLAY_COLOURS``).
    opacity : float in [0, 1]
    mode : {"fill", "contour"}
        Fill the overlay's voxels, or draw only their outline (at twice the opacity, capped at 1)
        so the anatomy stays visible.
    pixels_per_mm : float, optional
        Display scale; default about 400 pixels for the longest side of the volume.
    annotate : bool
        Draw orientation letters (R/L, or A/P for sagittal slices) at the edges.

    Returns
    -------
    bytes
        A PNG file (show it with ``ipywidgets.Image`` or ``IPython.display.Image``).

    Examples
    --------
    >>> render_slice(np.random.default_rng(0).random((7, 8, 9)), plane="coronal", index=3)[:4]
    b'\\x89PNG'
    """
    image = check_volume(image, "image")
    axis = _check_options(plane, mode, opacity)
    spacing = check_display_spacing(spacing)
    overlay = _check_overlay_grid(overlay, image.shape, "overlay")
    truth = _check_overlay_grid(truth, image.shape, "truth")
    index = image.shape[axis] // 2 if index is None else index
    low, high = auto_window(image) if window is None else (float(window[0]), float(window[1]))
    if not high > low:
        raise MSToolkitInputError(f"'window' must be (low, high) with high > low, got {window}.")

    grey = take_slice(image, plane, index).astype(np.float32)
    grey = np.clip((grey - low) * (255.0 / (high - low)), 0, 255).astype(np.uint8)
    over_2d = None if overlay is None else take_slice(overlay, plane, index)
    truth_2d = None if truth is None else take_slice(truth, plane, index)
    if over_2d is not None and np.issubdtype(over_2d.dtype, np.floating) and over_2d.size:
        if over_2d.min() < 0 or over_2d.max() > 1:
            raise MSToolkitInputError(
                f"'overlay' must be a binary mask or probabilities in [0, 1]; this slice holds values from "
                f"{over_2d.min():g} to {over_2d.max():g}. Apply a sigmoid/softmax or threshold it first."
            )
    layer = overlay_rgba(over_2d, truth_2d, opacity=float(opacity), mode=mode, threshold=threshold)

    scale = pixels_per_mm or _default_pixels_per_mm(image.shape, spacing)
    row_mm, col_mm = slice_spacing(spacing, plane)
    size = (max(1, round(grey.shape[1] * col_mm * scale)), max(1, round(grey.shape[0] * row_mm * scale)))
    picture = Image.fromarray(grey, mode="L").resize(size, Image.Resampling.BILINEAR).convert("RGBA")
    if layer is not None:
        # Nearest neighbour keeps voxel edges honest: you see which voxels are labelled.
        over = Image.fromarray(layer, mode="RGBA").resize(size, Image.Resampling.NEAREST)
        picture = Image.alpha_composite(picture, over)
    picture = picture.convert("RGB")
    if annotate:
        _annotate(picture, plane)
    with _bytes_io.BytesIO() as buffer:
        picture.save(buffer, format="PNG", compress_level=1)  # fast: this runs on every slider step
        return buffer.getvalue()


# --------------------------------------------------------------------------- widgets


def _legend_html(choice: str) -> str:
    names = {"lesion mask": ["mask"], "prediction": ["probability"], "TP/FP/FN": ["TP", "FP", "FN"]}.get(choice, [])
    labels = {"mask": "lesion mask", "probability": "prediction", "TP": "true positive",
              "FP": "false positive", "FN": "false negative (missed)"}
    return " ".join(
        f"<span style='background:{OVERLAY_COLOURS[n]};padding:0 0.6em'>&nbsp;</span> {labels[n]}" for n in names
    )


def _set_range(slider: Any, low: float, high: float, step: float) -> None:
    # ipywidgets refuses min > max at every moment, so widen first in the right order.
    if low > slider.max:
        slider.max, slider.min = high, low
    else:
        slider.min, slider.max = low, high
    slider.step = step


@dataclass(eq=False)
class SliceViewer:
    """A slice viewer made of core ipywidgets; create it with :func:`view`.

    The controls are attributes (``slider``, ``plane``, ``sequence``, ``overlay``,
    ``opacity``, ``mode``, ``level``, ``width``), so code and tests can drive the
    viewer: ``viewer.slider.value = 90`` re-renders ``viewer.image.value`` (PNG
    bytes). ``widget`` is the whole box; the last expression of a cell shows it.
    """

    images: dict[str, np.ndarray] = field(repr=False)
    spacing: tuple[float, float, float]
    mask: np.ndarray | None = field(default=None, repr=False)
    prediction: np.ndarray | None = field(default=None, repr=False)
    pixels_per_mm: float | None = None
    windows: dict[str, tuple[float, float]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        import ipywidgets as widgets

        first = next(iter(self.images.values()))
        self.pixels_per_mm = self.pixels_per_mm or _default_pixels_per_mm(first.shape, self.spacing)
        self._positions = {plane: self._start_index(plane) for plane in PLANES}
        self._hold = False
        choices = ["none"] + ["lesion mask"] * (self.mask is not None) + ["prediction"] * (self.prediction is not None)
        choices += ["TP/FP/FN"] * (self.mask is not None and self.prediction is not None)
        self.plane = widgets.ToggleButtons(options=PLANES, value="axial", description="plane")
        self.slider = widgets.IntSlider(value=self._positions["axial"], min=0, max=first.shape[2] - 1,
                                        description="slice", continuous_update=True)
        self.sequence = widgets.Dropdown(options=list(self.images), description="sequence")
        self.overlay = widgets.Dropdown(options=choices, value=choices[-1], description="overlay")
        self.opacity = widgets.FloatSlider(value=0.5, min=0, max=1, step=0.05, description="opacity")
        self.mode = widgets.ToggleButtons(options=OVERLAY_MODES, value="fill", description="draw")
        self.level = widgets.FloatSlider(description="level", readout_format=".3g")
        self.width = widgets.FloatSlider(description="width", readout_format=".3g")
        self.image = widgets.Image(format="png")
        self.legend = widgets.HTML()
        self._show_sequence()
        for control in (self.slider, self.overlay, self.opacity, self.mode, self.level, self.width):
            control.observe(self._on_change, names="value")
        self.plane.observe(self._on_plane, names="value")
        self.sequence.observe(self._show_sequence, names="value")
        columns = [widgets.VBox([self.plane, self.slider, self.level]), widgets.VBox([self.overlay, self.opacity,
                   self.mode, self.width])]  # two columns keep the image in view without scrolling
        self.widget = widgets.VBox([self.sequence, widgets.HBox(columns), self.image, self.legend])
        self.widget.add_class("mstoolkit-viewer")  # a stable hook for custom CSS and the browser test

    def _start_index(self, plane: str) -> int:
        # Start on the slice with the most lesion voxels, else in the middle of the volume.
        axis, shape = PLANE_AXIS[plane], next(iter(self.images.values())).shape
        if self.mask is not None and self.mask.any():
            return int(np.bincount(np.argwhere(self.mask)[:, axis]).argmax())
        return shape[axis] // 2

    def _show_sequence(self, change: dict | None = None) -> None:
        """Fit level and width to the sequence now chosen (its own intensity range), then render."""
        name = self.sequence.value
        volume = self.images[name]
        if name not in self.windows:
            self.windows[name] = auto_window(volume)
        low, high = self.windows[name]
        vmin, vmax = float(volume.min()), float(volume.max())
        span = max(vmax - vmin, high - low, 1e-6)
        self._hold = True
        _set_range(self.level, min(vmin, low), max(vmax, high), span / 200)
        _set_range(self.width, span / 200, 2 * span, span / 200)
        self.level.value, self.width.value = (low + high) / 2, high - low
        self._hold = False
        self.render()

    def _on_plane(self, change: dict) -> None:
        self._positions[change["old"]] = self.slider.value
        self._hold = True
        size = next(iter(self.images.values())).shape[PLANE_AXIS[change["new"]]]
        self.slider.max = size - 1
        self.slider.value = min(self._positions[change["new"]], size - 1)
        self._hold = False
        self.render()

    def _on_change(self, change: dict) -> None:
        if not self._hold:  # a batched update (plane or sequence change) renders once at its end
            self.render()

    def render(self) -> bytes:
        """Render the current view into ``self.image`` and return the PNG bytes."""
        choice = self.overlay.value
        overlay = {"lesion mask": self.mask, "prediction": self.prediction, "TP/FP/FN": self.prediction}.get(choice)
        window = (self.level.value - self.width.value / 2, self.level.value + self.width.value / 2)
        png = render_slice(self.images[self.sequence.value], plane=self.plane.value, index=self.slider.value,
                           spacing=self.spacing, window=window, overlay=overlay, opacity=self.opacity.value,
                           truth=self.mask if choice == "TP/FP/FN" else None, mode=self.mode.value,
                           pixels_per_mm=self.pixels_per_mm)
        self.legend.value = _legend_html(choice)
        self.image.value = png
        return png

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)


def _as_images(case_or_image: Case | np.ndarray, spacing: Sequence[float] | None) -> tuple[dict, tuple, Any]:
    if isinstance(case_or_image, Case):
        return dict(case_or_image.images), case_or_image.spacing, case_or_image.mask
    image = check_volume(case_or_image, "image")
    return {"image": image}, check_display_spacing((1.0, 1.0, 1.0) if spacing is None else spacing), None


def view(
    case_or_image: Case | np.ndarray,
    *,
    mask: np.ndarray | None = None,
    prediction: np.ndarray | None = None,
    spacing: Sequence[float] | None = None,
    sequences: Sequence[str] | None = None,
    plane: str = "axial",
    mode: str = "fill",
    opacity: float = 0.5,
    pixels_per_mm: float | None = None,
) -> SliceViewer:
    """An interactive slice viewer (ipywidgets) for a :class:`~mstoolkit.data.io.Case` or one image.

    Parameters
    ----------
    case_or_image : Case or array (x, y, z)
    mask : binary array, optional
        Lesion mask; default the case's ground-truth mask.
    prediction : array, optional
        A predicted mask or probability map; with a mask, the overlay menu offers TP/FP/FN.
    spacing : 3 floats, optional
        Voxel size of a bare array (a Case knows its own).
    sequences : list of str, optional
        Which of the case's sequences the dropdown offers (default all).
    plane, mode, opacity
        Starting values of the controls (see :func:`render_slice`).
    """
    _check_options(plane, mode, opacity)
    images, spacing_mm, case_mask = _as_images(case_or_image, spacing)
    if sequences is not None:
        unknown = [s for s in sequences if s not in images]
        if unknown:
            raise MSToolkitInputError(f"Unknown sequence(s) {unknown}; this case has {', '.join(images)}.")
        images = {s: images[s] for s in sequences}
    shape = next(iter(images.values())).shape
    viewer = SliceViewer(
        images=images,
        spacing=spacing_mm,
        mask=_check_overlay_grid(mask if mask is not None else case_mask, shape, "mask"),
        prediction=_check_overlay_grid(prediction, shape, "prediction"),
        pixels_per_mm=pixels_per_mm,
    )
    viewer.plane.value, viewer.mode.value, viewer.opacity.value = plane, mode, opacity
    return viewer


@dataclass(eq=False)
class SideBySide:
    """Several :class:`SliceViewer` panels whose slice, plane and overlay controls are linked."""

    viewers: list[SliceViewer]
    widget: Any

    @property
    def slider(self) -> Any:
        """The slice slider of the first panel; moving it moves every panel."""
        return self.viewers[0].slider

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)


def view_side_by_side(
    cases_or_images: Case | Sequence[Case | np.ndarray],
    *,
    sequences: Sequence[str] | None = None,
    titles: Sequence[str] | None = None,
    mode: str = "contour",
    pixels_per_mm: float | None = None,
) -> SideBySide:
    """Show several sequences (of one case) or several cases next to each other, with linked sliders.

    ``view_side_by_side(case)`` shows every sequence of ``case``;
    ``view_side_by_side([phantom_case, real_case], sequences=["FLAIR"])`` compares
    two cases on the same grid. Contours are the default so the anatomy stays visible.
    """
    import ipywidgets as widgets

    one_case = isinstance(cases_or_images, Case)
    items = [cases_or_images] if one_case else list(cases_or_images)
    if not items:
        raise MSToolkitInputError("Nothing to show: pass a Case or a list of cases/images.")
    default_titles = list(sequences or items[0].sequences) if one_case else [
        getattr(item, "case_id", f"image {i + 1}") for i, item in enumerate(items)]
    images, spacing, _ = _as_images(items[0], None)
    extent = max(n * mm for n, mm in zip(next(iter(images.values())).shape, spacing))
    # Panels share about 960 pixels of width, so a row of them fits a notebook.
    options = {"mode": mode, "pixels_per_mm": pixels_per_mm or min(400, 960 / len(default_titles)) / extent}
    if one_case:
        panels = [view(items[0], sequences=[name], **options) for name in default_titles]
    else:
        panels = [view(item, sequences=sequences, **options) for item in items]
    shapes = {next(iter(p.images.values())).shape for p in panels}
    if len(shapes) != 1:
        raise MSToolkitInputError(f"Linked panels need images on one grid, got shapes {sorted(shapes)}.")
    first = panels[0]
    for other, name in ((o, n) for o in panels[1:] for n in ("plane", "slider", "opacity", "mode", "overlay")):
        if name != "overlay" or first.overlay.options == other.overlay.options:  # same menu, else each its own
            widgets.link((getattr(first, name), "value"), (getattr(other, name), "value"))
    columns = [widgets.VBox([widgets.HTML(f"<b>{t}</b>"), p.image, p.sequence])
               for t, p in zip(titles or default_titles, panels)]
    controls = widgets.HBox([widgets.VBox([first.plane, first.slider]),
                             widgets.VBox([first.overlay, first.opacity, first.mode])])
    return SideBySide(viewers=panels, widget=widgets.VBox([controls, widgets.HBox(columns), first.legend]))


# --------------------------------------------------------------------------- 3D


def headless_reason() -> str | None:
    """Why no browser is attached to this kernel (papermill, CI, plain Python), or None.

    Widgets that wait for a browser (itkwidgets) must not be started then:
    under papermill the next cell would never run.
    """
    if os.environ.get("MSTOOLKIT_HEADLESS"):
        return "MSTOOLKIT_HEADLESS is set"
    if os.environ.get("CI"):
        return "running in CI"
    shell = sys.modules.get("IPython") and getattr(sys.modules["IPython"], "get_ipython", lambda: None)()
    if shell is None or not hasattr(shell, "kernel"):
        return "not running in a Jupyter kernel"
    try:
        import psutil

        for parent in psutil.Process().parents():
            command = " ".join(parent.cmdline())
            for marker in _HEADLESS_PARENTS:
                if marker in command:
                    return f"executed by {marker}"
    except Exception:  # process tables can be unreadable (sandboxes); then assume a browser
        pass
    return None


def _nifti_bytes(volume: np.ndarray, affine: np.ndarray) -> bytes:
    import gzip

    import nibabel as nib

    return gzip.compress(nib.Nifti1Image(volume, affine).to_bytes(), compresslevel=1)


def view_3d(
    case_or_image: Case | np.ndarray,
    *,
    mask: np.ndarray | None = None,
    sequence: str = "FLAIR",
    affine: np.ndarray | None = None,
    backend: str = "niivue",
    height: int = 400,
) -> Any:
    """A 3D, multi-planar view of an image with its lesion mask.

    ``backend="niivue"`` (default) uses ipyniivue: it renders in the browser and
    is safe under papermill. ``"itk"`` uses itkwidgets (optional extra
    ``pip install 'mstoolkit[itk]'``) only when a live browser is attached;
    otherwise it prints one line and falls back to niivue. ``"2d"`` returns :func:`view`.
    ``mask`` defaults to the case's lesion mask; ``affine`` (default 1 mm
    identity) is for a bare array.
    """
    if backend not in BACKENDS_3D:
        raise MSToolkitInputError(f"'backend' must be one of {', '.join(map(repr, BACKENDS_3D))}, got {backend!r}.")
    if isinstance(case_or_image, Case):
        if sequence not in case_or_image.images:
            raise MSToolkitInputError(f"No {sequence!r} image in this case; it has {', '.join(case_or_image.images)}.")
        image, affine, mask = case_or_image.images[sequence], case_or_image.affine, (
            case_or_image.mask if mask is None else mask)
    else:
        image = check_volume(case_or_image, "image")
        affine = np.eye(4) if affine is None else np.asarray(affine, dtype=float)
    mask = _check_overlay_grid(mask, image.shape, "mask")
    if backend == "2d":
        if isinstance(case_or_image, Case):
            return view(case_or_image, mask=mask)
        return view(image, mask=mask, spacing=tuple(np.linalg.norm(affine[:3, :3], axis=0)))
    if backend == "itk":
        reason = headless_reason()
        try:
            if reason is not None:
                raise RuntimeError(f"no live browser ({reason})")
            import itkwidgets
        except ImportError:
            print("itkwidgets not used: it is not installed (pip install 'mstoolkit[itk]'); showing ipyniivue instead.")
        except RuntimeError as err:
            print(f"itkwidgets not used: {err}; showing the ipyniivue 3D view instead.")
        else:
            return itkwidgets.view(image=image, label_image=mask)
    import ipyniivue

    # 8-bit, windowed volumes keep the notebook small (the widget stores the data).
    low, high = auto_window(image)
    scaled = np.clip((image - low) * (255.0 / (high - low)), 0, 255).astype(np.uint8)
    volumes = [{"data": _nifti_bytes(scaled, affine), "name": f"{sequence}.nii.gz", "colormap": "gray"}]
    if mask is not None:
        volumes.append({"data": _nifti_bytes((mask > 0).astype(np.uint8), affine), "name": "lesions.nii.gz",
                        "colormap": "warm", "opacity": 0.7, "cal_min": 0.5, "cal_max": 1.0})
    widget = ipyniivue.NiiVue(height=height, multiplanar_show_render=ipyniivue.ShowRender.ALWAYS)
    widget.load_volumes(volumes)
    widget.set_slice_type(ipyniivue.SliceType.MULTIPLANAR)
    return widget
