"""Static matplotlib figures, for readers of an executed notebook without a kernel.

Widgets (:mod:`mstoolkit.display.viewer`) need a running kernel; a notebook read on
GitHub or as HTML shows only static images. Every function here returns a
titled :class:`matplotlib.figure.Figure` with labelled axes, using the same
slicing and radiological convention as the viewer (patient's right on the
image's left, marked "R") and the same colour-blind-safe colours.

A returned figure is displayed when it is the last expression of a cell; it is
closed in pyplot, so it is never shown twice and does not pile up in memory.

Introduced in notebook 01 (data loading).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from mstoolkit.data.io import MSToolkitInputError

if TYPE_CHECKING:  # matplotlib is imported inside the functions, so `import mstoolkit.display.viewer` stays light
    from matplotlib.figure import Figure

    from mstoolkit.data.io import Case

__all__ = ["plot_history", "OVERLAY_COLOURS", "LINE_COLOURS", "OVERLAY_MODES", "PLANES", "take_slice", "slice_spacing", "auto_window", "overlay_rgba",
           "montage", "case_figure", "overlay_figure", "comparison_figure"]

#: Overlay colours shared by the widgets and the static figures, from the
#: Okabe–Ito palette (distinguishable with every common colour-vision
#: deficiency): sky blue, vermillion and yellow differ in hue *and* lightness.
OVERLAY_COLOURS: dict[str, str] = {
    "mask": "#E69F00",  # orange: a lesion mask
    "probability": "#E69F00",  # the same orange, transparency following the probability
    "TP": "#56B4E9",  # sky blue: lesion found (true positive)
    "FP": "#D55E00",  # vermillion: predicted, not a lesion (false positive)
    "FN": "#F0E442",  # yellow: lesion missed (false negative)
}
_LABELS = {"TP": "true positive", "FP": "false positive", "FN": "false negative (missed)"}
#: Line colours for curves (one per method or measure, in this order), also from
#: Okabe–Ito: blue, vermillion, bluish green, reddish purple, orange, sky blue.
LINE_COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9")

#: How an overlay is drawn: filled voxels or only the outline of each region.
OVERLAY_MODES = ("fill", "contour")
#: Viewing planes; each names the array axis it slices: axial z, coronal y, sagittal x.
PLANES = ("axial", "coronal", "sagittal")
PLANE_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}
# Letters at the left and right edges of each plane (radiological convention).
PLANE_EDGE_LETTERS = {"axial": ("R", "L"), "coronal": ("R", "L"), "sagittal": ("A", "P")}


# --------------------------------------------------------------------------- slice geometry


def check_plane(plane: str) -> int:
    if plane not in PLANE_AXIS:
        raise MSToolkitInputError(f"'plane' must be one of {', '.join(map(repr, PLANES))}, got {plane!r}.")
    return PLANE_AXIS[plane]


def check_overlay_mode(mode: str) -> None:
    if mode not in OVERLAY_MODES:
        raise MSToolkitInputError(f"'mode' must be one of {', '.join(map(repr, OVERLAY_MODES))}, got {mode!r}.")


def check_volume(array: Any, name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 3:
        raise MSToolkitInputError(f"'{name}' must be a 3D array (x, y, z), got shape {array.shape}.")
    return array


def check_display_spacing(spacing: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(float(s) for s in spacing)
    if len(values) != 3 or not all(np.isfinite(v) and v > 0 for v in values):
        raise MSToolkitInputError(f"'spacing' must be 3 positive numbers, got {tuple(spacing)}.")
    return values  # type: ignore[return-value]


def take_slice(volume: np.ndarray, plane: str, index: int) -> np.ndarray:
    """One slice of an RAS+ volume, oriented for display (radiological convention).

    Row 0 is the top of the picture (anterior for axial, superior otherwise) and
    column 0 its left (the patient's right, or anterior for sagittal slices).

    >>> vol = np.zeros((4, 5, 6)); vol[3, 4, 2] = 1  # right-most, front-most voxel
    >>> np.argwhere(take_slice(vol, "axial", 2)).tolist()  # top-left corner
    [[0, 0]]
    """
    axis = check_plane(plane)
    volume = check_volume(volume, "volume")
    size = volume.shape[axis]
    if not 0 <= int(index) < size:
        raise MSToolkitInputError(
            f"slice index {index} is outside the {plane} range 0–{size - 1} (volume shape {volume.shape})."
        )
    # Both remaining axes run towards R/A/S; flipping both and transposing puts
    # R (or A) on the left and A (or S) on top.
    return np.take(volume, int(index), axis=axis)[::-1, ::-1].T


def slice_spacing(spacing: Sequence[float], plane: str) -> tuple[float, float]:
    """(row, column) pixel size in mm of a slice from :func:`take_slice`.

    >>> slice_spacing((1.0, 1.0, 3.0), "coronal")
    (3.0, 1.0)
    """
    check_plane(plane)
    sx, sy, sz = check_display_spacing(spacing)
    return {"axial": (sy, sx), "coronal": (sz, sx), "sagittal": (sz, sy)}[plane]


def auto_window(image: np.ndarray, *, percentiles: tuple[float, float] = (0.5, 99.5)) -> tuple[float, float]:
    """Display range (low, high) from percentiles of the non-zero voxels.

    A sparse sample of the volume is enough and keeps this fast. Skull-stripped
    scans are mostly zeros; ignoring them gives the brain the full grey range.
    """
    image = check_volume(image, "image")
    step = max(1, int(round((image.size / 50_000) ** (1 / 3))))
    sample = image[::step, ::step, ::step]
    sample = sample[np.isfinite(sample) & (sample != 0)]
    if sample.size == 0:
        return 0.0, 1.0
    low, high = (float(v) for v in np.percentile(sample, percentiles))
    return (low, high) if high > low else (low, low + 1.0)


def _edges(region: np.ndarray) -> np.ndarray:
    """Voxels of a 2D region with at least one 4-neighbour outside it."""
    padded = np.pad(region, 1, constant_values=False)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return region & ~interior


def _rgb(colour: str) -> np.ndarray:
    return np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)], dtype=np.uint8)


def overlay_rgba(
    overlay: np.ndarray | None,
    truth: np.ndarray | None = None,
    *,
    opacity: float = 0.5,
    mode: str = "fill",
    threshold: float = 0.5,
) -> np.ndarray | None:
    """Colour a 2D overlay: an RGBA uint8 layer to draw over a grey slice (None if nothing to draw).

    ``overlay`` alone: a mask or probability map in orange, transparency following
    the probability. With ``truth``: ``overlay >= threshold`` is compared with it,
    voxel by voxel, in the TP/FP/FN colours. ``mode="contour"`` keeps only the
    outline of each region. The widgets and the figures share this one definition.
    """
    check_overlay_mode(mode)
    if overlay is None and truth is None:
        return None
    shape = (overlay if overlay is not None else truth).shape  # type: ignore[union-attr]
    layer = np.zeros(shape + (4,), dtype=np.uint8)
    if mode == "contour":  # one-voxel outlines are thin: draw them twice as strong
        opacity = min(1.0, 2 * opacity)
    if truth is not None:
        truth_2d = truth > 0
        predicted = np.zeros(shape, bool) if overlay is None else overlay >= threshold
        regions = {"TP": predicted & truth_2d, "FP": predicted & ~truth_2d, "FN": ~predicted & truth_2d}
        for name, region in regions.items():
            region = _edges(region) if mode == "contour" else region
            layer[region, :3] = _rgb(OVERLAY_COLOURS[name])
            layer[region, 3] = round(255 * opacity)
        return layer
    # A binary mask is a probability map of 0s and 1s: one code path, one colour.
    values = np.clip(np.asarray(overlay, dtype=np.float32), 0, 1)
    layer[..., :3] = _rgb(OVERLAY_COLOURS["mask"])
    if mode == "contour":
        layer[..., 3] = _edges(values >= threshold) * round(255 * opacity)
    else:  # transparency follows the probability: unsure voxels are faint
        layer[..., 3] = np.round(values * (255 * opacity)).astype(np.uint8)
    return layer


# --------------------------------------------------------------------------- figures


def _slices_and_extent(
    volume: np.ndarray, plane: str, index: int, spacing: Sequence[float]
) -> tuple[np.ndarray, list[float]]:
    picture = take_slice(volume, plane, index)
    row_mm, col_mm = slice_spacing(spacing, plane)
    # extent in mm: the axes then show physical distances and keep the voxel aspect
    return picture, [0.0, picture.shape[1] * col_mm, picture.shape[0] * row_mm, 0.0]


def _label_axes(ax, plane: str, index: int) -> None:
    left, right = PLANE_EDGE_LETTERS[plane]
    ax.set_xlabel(f"{left} ← mm → {right}")
    ax.set_ylabel("A ↑ mm" if plane == "axial" else "S ↑ mm")
    ax.set_title(f"{plane} {index}", fontsize=9)


def _indices(volume: np.ndarray, plane: str, n: int, mask: np.ndarray | None) -> list[int]:
    axis = PLANE_AXIS[plane] if plane in PLANE_AXIS else check_plane(plane)
    size = volume.shape[axis]
    if mask is not None and np.any(mask):
        # where the lesions are: the busiest slice, or slices spread over the lesion voxels
        positions = np.argwhere(mask)[:, axis]
        if n == 1:
            return [int(np.bincount(positions).argmax())]
        return sorted({int(i) for i in np.percentile(positions, np.linspace(5, 95, n)).round()})
    return [int(i) for i in np.linspace(size * 0.2, size * 0.8, n).round()] if n > 1 else [size // 2]


def _new_figure(n_panels: int, *, columns: int, panel_size: float = 2.6):
    import matplotlib.pyplot as plt

    columns = max(1, min(columns, n_panels))
    rows = int(np.ceil(n_panels / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(panel_size * columns, panel_size * 1.15 * rows + 0.4),
                             squeeze=False, layout="constrained")
    for ax in axes.ravel()[n_panels:]:
        ax.set_visible(False)
    plt.close(fig)  # shown once, when returned as a cell's value
    return fig, axes.ravel()[:n_panels]


def _window(image: np.ndarray, window: tuple[float, float] | None) -> tuple[float, float]:
    return auto_window(image) if window is None else (float(window[0]), float(window[1]))


def montage(
    image: np.ndarray,
    *,
    plane: str = "axial",
    n_slices: int = 8,
    indices: Sequence[int] | None = None,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    mask: np.ndarray | None = None,
    window: tuple[float, float] | None = None,
    columns: int = 4,
    title: str = "Montage",
) -> "Figure":
    """A grid of slices through a volume, optionally with a mask outlined.

    Slices are spread over the lesion-bearing range when a mask is given,
    otherwise over the middle 60 % of the volume.

    >>> fig = montage(np.random.default_rng(0).random((7, 8, 9)), n_slices=2, title="noise")
    >>> fig._suptitle.get_text(), len(fig.axes)
    ('noise', 2)
    """
    image = check_volume(image, "image")
    indices = list(indices) if indices is not None else _indices(image, plane, n_slices, mask)
    low, high = _window(image, window)
    fig, axes = _new_figure(len(indices), columns=columns)
    for ax, index in zip(axes, indices):
        picture, extent = _slices_and_extent(image, plane, index, spacing)
        ax.imshow(picture, cmap="gray", vmin=low, vmax=high, extent=extent)
        if mask is not None:
            _outline(ax, _slices_and_extent(np.asarray(mask) > 0, plane, index, spacing)[0], extent,
                     OVERLAY_COLOURS["mask"])
        _label_axes(ax, plane, index)
    fig.suptitle(title)
    return fig


def _outline(ax, mask_2d: np.ndarray, extent: list[float], colour: str) -> None:
    if mask_2d.any():  # contour() warns on an empty slice
        ax.contour(mask_2d, levels=[0.5], colors=[colour], linewidths=0.8,
                   extent=[extent[0], extent[1], extent[3], extent[2]], origin="upper")


def case_figure(
    case: "Case",
    *,
    plane: str = "axial",
    index: int | None = None,
    outline_mask: bool = True,
    title: str | None = None,
) -> "Figure":
    """The same slice of every sequence of a case, side by side, with the lesion mask outlined.

    Each sequence shows lesions differently (bright on FLAIR and T2, often dark
    on T1), which is why models get several sequences as input channels.
    """
    mask = case.mask if outline_mask else None
    if index is None:
        index = _indices(case.mask if case.mask is not None else next(iter(case.images.values())), plane, 1,
                         case.mask)[0]
    fig, axes = _new_figure(len(case.images), columns=len(case.images), panel_size=3.0)
    for ax, (name, image) in zip(axes, case.images.items()):
        picture, extent = _slices_and_extent(image, plane, index, case.spacing)
        low, high = auto_window(image)
        ax.imshow(picture, cmap="gray", vmin=low, vmax=high, extent=extent)
        if mask is not None:
            _outline(ax, _slices_and_extent(mask > 0, plane, index, case.spacing)[0], extent, OVERLAY_COLOURS["mask"])
        _label_axes(ax, plane, index)
        ax.set_title(name)
    fig.suptitle(title or f"{case.case_id}: {plane} slice {index}" + (", lesions outlined" if mask is not None else ""))
    return fig


def overlay_figure(
    image: np.ndarray,
    overlay: np.ndarray,
    *,
    plane: str = "axial",
    index: int | None = None,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    window: tuple[float, float] | None = None,
    threshold: float = 0.5,
    title: str = "Image with overlay",
) -> "Figure":
    """Two panels: the image alone, and the image with a mask or probability map.

    A probability map (float) is shown as a translucent orange layer whose
    opacity follows the probability, outlined at ``threshold``; a binary mask
    as a filled layer with its outline.
    """
    image, overlay = check_volume(image, "image"), check_volume(overlay, "overlay")
    if overlay.shape != image.shape:
        raise MSToolkitInputError(f"'overlay' has shape {overlay.shape} but 'image' has shape {image.shape}.")
    if index is None:
        index = _indices(image, plane, 1, overlay >= threshold)[0]
    low, high = _window(image, window)
    picture, extent = _slices_and_extent(image, plane, index, spacing)
    layer, _ = _slices_and_extent(overlay.astype(np.float32), plane, index, spacing)
    fig, (bare, covered) = _new_figure(2, columns=2, panel_size=3.6)
    for ax, name in ((bare, "image"), (covered, "overlay")):
        ax.imshow(picture, cmap="gray", vmin=low, vmax=high, extent=extent)
        _label_axes(ax, plane, index)
        ax.set_title(f"{name}, {plane} slice {index}", fontsize=9)
    covered.imshow(overlay_rgba(layer, opacity=0.6), extent=extent, interpolation="nearest")
    _outline(covered, layer >= threshold, extent, OVERLAY_COLOURS["mask"])
    fig.suptitle(title)
    return fig


def comparison_figure(
    image: np.ndarray,
    prediction: np.ndarray,
    truth: np.ndarray,
    *,
    plane: str = "axial",
    indices: Sequence[int] | None = None,
    n_slices: int = 3,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    window: tuple[float, float] | None = None,
    threshold: float = 0.5,
    title: str = "Prediction vs ground truth",
) -> "Figure":
    """Slices coloured by agreement: true positives, false positives, false negatives.

    Colours are :data:`OVERLAY_COLOURS` ``"TP"``, ``"FP"``, ``"FN"``; a legend names them.
    """
    from matplotlib.patches import Patch

    image = check_volume(image, "image")
    predicted = check_volume(prediction, "prediction") >= threshold
    actual = check_volume(truth, "truth") > 0
    if not image.shape == predicted.shape == actual.shape:
        raise MSToolkitInputError(
            f"image {image.shape}, prediction {predicted.shape} and truth {actual.shape} must have one shape."
        )
    indices = list(indices) if indices is not None else _indices(image, plane, n_slices, predicted | actual)
    low, high = _window(image, window)
    fig, axes = _new_figure(len(indices), columns=len(indices), panel_size=3.2)
    for ax, index in zip(axes, indices):
        picture, extent = _slices_and_extent(image, plane, index, spacing)
        pred_2d, _ = _slices_and_extent(predicted, plane, index, spacing)
        true_2d, _ = _slices_and_extent(actual, plane, index, spacing)
        ax.imshow(picture, cmap="gray", vmin=low, vmax=high, extent=extent)
        ax.imshow(overlay_rgba(pred_2d, true_2d, opacity=0.85), extent=extent, interpolation="nearest")
        _label_axes(ax, plane, index)
    handles = [Patch(color=OVERLAY_COLOURS[n], label=_LABELS[n]) for n in ("TP", "FP", "FN")]
    fig.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=8)
    fig.suptitle(title)
    return fig


def plot_history(history: dict[str, list], *, title: str = "Training history"):
    """Loss and validation Dice per epoch (two panels); returns the matplotlib Figure."""
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(9, 3.2), constrained_layout=True)
    ax_loss.plot(history["epoch"], history["loss"], "o-", color="#0072B2")
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="Loss")
    dice = np.asarray(history["val_dice"], dtype=float)
    epochs = np.asarray(history["epoch"])
    ax_dice.plot(epochs[~np.isnan(dice)], dice[~np.isnan(dice)], "s-", color="#D55E00")
    ax_dice.set(xlabel="epoch", ylabel="validation Dice", title="Validation Dice", ylim=(0, 1))
    fig.suptitle(title)
    return fig
