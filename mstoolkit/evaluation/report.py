"""Cohort summaries, volume agreement, simulated raters, and the ``mstoolkit evaluate`` command.

:func:`mstoolkit.evaluation.metric_tables.evaluate_cohort` gives one row of metrics per case;
this module turns such a table into what a paper reports: mean ± sd with the
empty-case policy stated, the Pearson correlation and Bland–Altman agreement
of total lesion volume, and their figure. :func:`simulate_rater` makes a
plausible second (or third) manual segmentation of a ground truth, to show how
far two experts already disagree.

Introduced in notebook 04 (metrics).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from mstoolkit.data.io import MSToolkitInputError, write_atomic

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

__all__ = ["summarize_cohort", "volume_agreement", "bland_altman_figure", "simulate_rater", "cli_evaluate"]

_SUMMARY_METRICS = ("dice", "ndsc", "sensitivity", "precision", "lesion_f1", "lesion_sensitivity",
                    "lesion_precision", "hd95_mm", "volume_difference_ml", "abs_volume_difference_ml")
# Okabe–Ito colours (colour-blind safe)
_BLUE, _ORANGE, _VERMILLION = "#0072B2", "#E69F00", "#D55E00"


def summarize_cohort(table: "pd.DataFrame", *, metrics: Sequence[str] = _SUMMARY_METRICS, exclude_empty: bool = False) -> "pd.DataFrame":
    """Mean ± sd of each metric over a cohort, saying how empty cases were counted.

    Cases whose truth and prediction are both empty score 1 (Dice, F1 …) and
    HD95 = 0 by policy; a case with one empty mask has HD95 = ``inf``, which no
    mean can hold, so infinite values are left out and counted in ``n_left_out``.
    ``exclude_empty=True`` drops every case with an empty mask first. The
    ``note`` column says what happened, so a reader sees the policy.

    Introduced in notebook 04 (metrics).
    """
    import pandas as pd

    missing = [m for m in metrics if m not in table.columns]
    if missing:
        raise MSToolkitInputError(f"The table has no column(s) {missing}; make it with mstoolkit.evaluation.metric_tables.evaluate_cohort.")
    empty = table["empty"] if "empty" in table.columns else pd.Series("none", index=table.index)
    if exclude_empty:
        table, empty = table[empty == "none"], empty[empty == "none"]
    n_both, n_one = int((empty == "both").sum()), int(empty.isin(["truth", "pred"]).sum())
    rows = []
    for name in metrics:
        values = table[name].astype(float).to_numpy()
        finite = values[np.isfinite(values)]
        notes = []
        if n_both:
            notes.append(f"{n_both} case(s) with both masks empty count as perfect")
        if n_one:
            notes.append(f"{n_one} case(s) with one mask empty")
        if len(finite) < len(values):
            notes.append(f"{len(values) - len(finite)} infinite value(s) left out")
        if exclude_empty:
            notes.append("cases with an empty mask excluded")
        mean = float(finite.mean()) if len(finite) else float("nan")
        sd = float(finite.std(ddof=1)) if len(finite) > 1 else float("nan")
        rows.append({"metric": name, "mean": mean, "sd": sd, "median": float(np.median(finite)) if len(finite) else float("nan"),
                     "n": len(finite), "n_left_out": len(values) - len(finite),
                     "mean ± sd": f"{mean:.3f} ± {sd:.3f}" if len(finite) > 1 else f"{mean:.3f} (n = {len(finite)})",
                     "note": "; ".join(notes)})
    return pd.DataFrame(rows).set_index("metric")


def volume_agreement(table: "pd.DataFrame") -> dict:
    """Total lesion volume agreement: Pearson r and Bland–Altman bias and limits (mL).

    Uses the ``volume_pred_ml`` and ``volume_truth_ml`` columns of
    :func:`mstoolkit.evaluation.metric_tables.evaluate_cohort`. Bland–Altman: differences
    pred − truth; bias = their mean; 95 % limits of agreement = bias ± 1.96 sd.
    With fewer than 3 cases, or constant volumes, ``pearson_r`` is NaN and a
    warning says why. Introduced in notebook 04 (metrics).
    """
    pred = table["volume_pred_ml"].to_numpy(dtype=float)
    truth = table["volume_truth_ml"].to_numpy(dtype=float)
    difference = pred - truth
    n = len(pred)
    if n < 3 or np.ptp(pred) == 0 or np.ptp(truth) == 0:
        warnings.warn(f"Pearson r needs at least 3 cases with varying volumes (got {n}); reporting NaN.", stacklevel=2)
        r = float("nan")
    else:
        r = float(np.corrcoef(pred, truth)[0, 1])
    bias = float(difference.mean()) if n else float("nan")
    sd = float(difference.std(ddof=1)) if n > 1 else float("nan")
    return {"n": n, "pearson_r": r, "bias_ml": bias, "sd_difference_ml": sd,
            "loa_lower_ml": bias - 1.96 * sd, "loa_upper_ml": bias + 1.96 * sd}


def bland_altman_figure(table: "pd.DataFrame", *, title: str = "Total lesion volume agreement") -> "Figure":
    """Two panels: predicted vs true volume (with r), and the Bland–Altman plot.

    Introduced in notebook 04 (metrics).
    """
    import matplotlib.pyplot as plt

    stats = volume_agreement(table)
    pred, truth = table["volume_pred_ml"].to_numpy(float), table["volume_truth_ml"].to_numpy(float)
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.5, 4), constrained_layout=True)
    top = max(pred.max(initial=0), truth.max(initial=0)) * 1.08 + 1e-9
    left.plot([0, top], [0, top], color="grey", linestyle="--", linewidth=1, label="identity")
    left.scatter(truth, pred, color=_BLUE, edgecolor="black", linewidth=0.5, zorder=3, label="case")
    left.set(xlim=(0, top), ylim=(0, top), xlabel="true lesion volume (mL)", ylabel="predicted lesion volume (mL)",
             title=f"Correlation (Pearson r = {stats['pearson_r']:.2f}, n = {stats['n']})")
    left.legend(loc="upper left", fontsize=8)
    mean = (pred + truth) / 2
    right.scatter(mean, pred - truth, color=_BLUE, edgecolor="black", linewidth=0.5, zorder=3)
    right.axhline(stats["bias_ml"], color=_ORANGE, linewidth=2, label=f"bias {stats['bias_ml']:+.2f} mL")
    for value in (stats["loa_lower_ml"], stats["loa_upper_ml"]):
        right.axhline(value, color=_VERMILLION, linestyle="--", linewidth=1.5)
    right.axhline(np.nan, color=_VERMILLION, linestyle="--", label="95 % limits of agreement")
    right.axhline(0, color="grey", linewidth=0.8)
    right.set(xlabel="mean of predicted and true volume (mL)", ylabel="predicted − true volume (mL)",
              title="Bland–Altman")
    right.legend(loc="best", fontsize=8)
    fig.suptitle(title)
    plt.close(fig)
    return fig


def simulate_rater(
    truth: np.ndarray,
    *,
    spacing: Sequence[float],
    seed: int = 0,
    boundary_sd_mm: float = 0.6,
    bias_mm: float = 0.0,
    miss_below_mm3: float = 30.0,
    miss_probability: float = 0.4,
    n_false_positives: int = 3,
    brain_mask: np.ndarray | None = None,
) -> np.ndarray:
    """A plausible manual segmentation of the same scan by another rater.

    Each lesion's border moves by a smooth random amount (standard deviation
    ``boundary_sd_mm``, plus ``bias_mm``: positive draws larger, negative
    smaller), lesions under ``miss_below_mm3`` are missed with
    ``miss_probability``, and ``n_false_positives`` small blobs are added
    (inside ``brain_mask`` when given). Deterministic for a ``seed``.
    Use it to see inter-rater variability, or as an imperfect "model" output.

    Introduced in notebook 04 (metrics).
    """
    import cc3d
    from scipy.ndimage import distance_transform_edt, gaussian_filter

    from mstoolkit.evaluation.metrics import as_mask, check_spacing

    spacing = np.asarray(check_spacing(spacing))
    truth = as_mask(truth, "truth")
    rng = np.random.default_rng(seed)
    labels = cc3d.connected_components(truth, connectivity=26)
    stats = cc3d.statistics(labels)
    volumes = stats["voxel_counts"] * float(np.prod(spacing))
    out = np.zeros_like(truth)
    margin = np.ceil((3 * boundary_sd_mm + abs(bias_mm) + 2) / spacing).astype(int)
    smooth = 2.0 / spacing  # noise correlated over ~2 mm: borders wobble, not speckle
    for k in range(1, len(volumes)):
        if volumes[k] < miss_below_mm3 and rng.random() < miss_probability:
            continue
        box = tuple(slice(max(s.start - m, 0), min(s.stop + m, n))
                    for s, m, n in zip(stats["bounding_boxes"][k], margin, truth.shape))
        lesion = labels[box] == k
        # signed distance to the border (mm): negative inside, positive outside, 0 between voxel centres
        inside, outside = distance_transform_edt(lesion, sampling=spacing), distance_transform_edt(~lesion, sampling=spacing)
        signed = np.where(lesion, -inside, outside) + np.where(lesion, 0.5, -0.5) * spacing.min()
        noise = gaussian_filter(rng.standard_normal(lesion.shape), smooth)
        noise *= boundary_sd_mm / max(noise.std(), 1e-9)
        out[box] |= signed < bias_mm + noise
    allowed = ~truth if brain_mask is None else as_mask(brain_mask, "brain_mask") & ~truth
    candidates = np.argwhere(allowed)
    grid = np.indices((7, 7, 7)).reshape(3, -1).T - 3
    for _ in range(n_false_positives if len(candidates) else 0):
        centre, radius = candidates[rng.integers(len(candidates))], rng.uniform(1.0, 2.5)
        points = centre + grid[(np.linalg.norm(grid * spacing, axis=1) <= radius)]
        points = points[np.all((points >= 0) & (points < truth.shape), axis=1)]
        out[tuple(points.T)] = True
    if brain_mask is not None:
        out &= as_mask(brain_mask, "brain_mask")
    return out.astype(np.uint8)


# --------------------------------------------------------------------------- command line


def _write_out(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, text)


def _nifti_files(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise MSToolkitInputError(f"'{folder}' is not a folder of .nii/.nii.gz masks.")
    return {p.name: p for p in sorted(folder.iterdir()) if p.name.endswith((".nii", ".nii.gz"))}


def _options(args: argparse.Namespace) -> dict:
    return {"matching": args.matching, "connectivity": args.connectivity,
            "min_lesion_mm3": args.min_lesion_mm3, "hd_mode": args.hd_mode}


def _json_ready(result: dict) -> dict:
    # JSON has no infinity: write it as the string "inf" rather than a non-standard token
    return {k: ("inf" if isinstance(v, float) and np.isinf(v) else v) for k, v in result.items()}


def cli_evaluate(args: argparse.Namespace) -> int:
    """``mstoolkit evaluate``: one pair → metrics (text or JSON); two folders → a CSV, one row per case.

    Folders are paired by identical file names. Masks must be binary and share
    one grid; ``--brain-mask`` is one file for every case or a folder of
    same-named files.
    """
    from mstoolkit.evaluation.metric_tables import evaluate_cohort

    single = args.pred is not None or args.truth is not None
    cohort = args.pred_dir is not None or args.truth_dir is not None
    if single == cohort or (single and None in (args.pred, args.truth)) or (cohort and None in (args.pred_dir, args.truth_dir)):
        raise MSToolkitInputError("Give either --pred and --truth (one pair) or --pred-dir and --truth-dir (a cohort).")
    if single:
        brains = None if args.brain_mask is None else {"case": args.brain_mask}
        table = evaluate_cohort({"case": (args.pred, args.truth)}, brain_masks=brains, progress=False, **_options(args))
        result = {k: (v.item() if hasattr(v, "item") else v) for k, v in table.iloc[0].items()}
        text = json.dumps(_json_ready(result), indent=2) if args.json or (args.out or "").endswith(".json") else "\n".join(
            f"{k:>27}: {v:.4f}" if isinstance(v, float) else f"{k:>27}: {v}" for k, v in result.items())
        if args.out:
            _write_out(Path(args.out), text + "\n")
        print(text)
        return 0
    truths, preds = _nifti_files(Path(args.truth_dir)), _nifti_files(Path(args.pred_dir))
    if not truths:
        raise MSToolkitInputError(f"No .nii/.nii.gz files in '{args.truth_dir}'.")
    missing = [name for name in truths if name not in preds]
    if missing:
        raise MSToolkitInputError(
            f"{len(missing)} ground-truth file(s) have no prediction of the same name in '{args.pred_dir}': "
            f"{', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}. Name each prediction like its ground truth.")
    extra = sorted(set(preds) - set(truths))
    if extra:
        warnings.warn(f"{len(extra)} prediction(s) without ground truth ignored: {', '.join(extra[:5])}", stacklevel=2)
    brains = None
    if args.brain_mask is not None:
        brain = Path(args.brain_mask)
        brains = {n: (brain / n if brain.is_dir() else brain) for n in truths}
    table = evaluate_cohort({n: (preds[n], truths[n]) for n in truths}, brain_masks=brains, **_options(args))
    csv = table.to_csv(float_format="%.6g")
    if args.out:
        _write_out(Path(args.out), csv)
        summary = summarize_cohort(table)
        print(summary[["mean ± sd", "n", "note"]].to_string())
        print(f"wrote {len(table)} rows to {args.out}")
    else:
        sys.stdout.write(csv)
    return 0
