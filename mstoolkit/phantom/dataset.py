"""Write phantom datasets to disk in the toolkit's BIDS-like layout; ``mstoolkit data phantom``.

:func:`generate_dataset` writes subjects of :func:`mstoolkit.phantom.generator.generate_subject`
(or longitudinal pairs, and optionally the "raw" scans) as int16 NIfTI files, with
``participants.tsv`` and ``dataset_description.json``, into the layout of ARCHITECTURE.md.
It builds the dataset in a temporary folder and renames it at the end, so an interrupted
run never leaves a half-written dataset.

Introduced in notebook 01 (data loading); notebooks call it through
:func:`mstoolkit.phantom.dataset.ensure_phantom`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mstoolkit import __version__
from mstoolkit.data.datasets import NOTEBOOK_SUBJECTS, bids_paths, default_data_dir
from mstoolkit.data.io import Case, MSToolkitInputError, save_image, save_mask
from mstoolkit.phantom.anatomy import load_template
from mstoolkit.phantom.generator import (
    PROFILES,
    check_phantom_options,
    check_seed,
    clear_cache,
    generate_longitudinal_pair,
    generate_raw_scan,
    generate_subject,
)

__all__ = ["cli_phantom", "cli_prepare", "dataset_profile", "ensure_phantom", "generate_dataset", "phantom_dir", "raw_paths",
           "render_subject"]


def raw_paths(data_dir: str | os.PathLike, subject: str, session: str | None = None) -> dict[str, Path]:
    """Where the "raw" scan of a subject lives: the BIDS names with ``acq-raw`` added.

    >>> raw_paths("data", "sub-001")["FLAIR"].name
    'sub-001_acq-raw_FLAIR.nii.gz'
    """

    stem = subject if session is None else f"{subject}_{session}"
    paths = bids_paths(data_dir, subject, session)
    return {key: paths[key].with_name(paths[key].name.replace(f"{stem}_", f"{stem}_acq-raw_", 1))
            for key in ("FLAIR", "T1", "mask", "brain_mask")}


def _save_image(path: Path, image: np.ndarray, affine: np.ndarray) -> None:
    # Whole numbers in int16, as scanners store them: a third of the size of float32 on disk.
    save_image(path, np.rint(np.clip(image, 0, 32767)), affine, dtype=np.int16)


def _save_case(case: Case, paths: dict[str, Path]) -> None:
    for seq, image in case.images.items():
        _save_image(paths[seq], image, case.affine)
    save_mask(paths["mask"], case.mask, case.affine)
    save_mask(paths["brain_mask"], case.brain_mask, case.affine)


def _subject_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def dataset_profile(index: int) -> str:
    """The scanner profile that renders subject ``index`` (1-based) of a dataset written without ``profile``.

    >>> [dataset_profile(i) for i in (1, 2, 5)]
    ['standard', 'low_field', 'standard']
    """
    return list(PROFILES)[(index - 1) % len(PROFILES)]


def render_subject(index: int, profile: str | None = None, *, seed: int, spacing: Sequence[float] | None = None,
                   t1ce: bool = False) -> Case:
    """Subject ``sub-{index:03d}`` of the dataset ``generate_dataset(seed=seed)``, seen by scanner ``profile``.

    The anatomy and lesions are those of the subject on disk (they depend on the subject's seed
    only); ``profile`` (default: the one the dataset used, :func:`dataset_profile`) changes
    contrast, noise, bias field and slice thickness. Rendered through the dataset's own profile,
    the images equal the files on disk up to their rounding to int16. Notebook 03 uses it to
    show the same test subjects through every scanner (domain shift).
    """
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 1:
        raise MSToolkitInputError(f"'index' must be a subject number >= 1 (1 for sub-001), got {index!r}.")
    chosen = dataset_profile(index) if profile is None else profile
    return generate_subject(seed=_subject_seed(check_seed(seed), int(index)), profile=chosen, spacing=spacing,
                            t1ce=t1ce, case_id=f"sub-{int(index):03d}")


def generate_dataset(out_dir: str | os.PathLike, *, n_subjects: int, seed: int, longitudinal: bool = False,
                     profile: str | None = None, spacing: Sequence[float] | None = None, t1ce: bool = False,
                     raw: bool = False, progress: bool = True) -> Path:
    """Write a phantom dataset in the BIDS-like layout of ARCHITECTURE.md.

    Introduced in notebook 01 (data loading); notebooks call it through
    :func:`mstoolkit.phantom.dataset.ensure_phantom`.

    Parameters
    ----------
    out_dir : path
        A new (or empty) folder. It is built in a temporary folder beside it and renamed at
        the end, so an interrupted run never leaves a half-written dataset.
    n_subjects, seed : int, keyword-only
        Subject ``i`` (1-based) uses the seed ``SeedSequence([seed, i])``, listed in participants.tsv.
    longitudinal : bool
        Two sessions per subject (``ses-01``, ``ses-02``) and a change mask per subject.
    profile : str, optional
        One scanner profile for all subjects; default None cycles through :data:`PROFILES`.
    spacing, t1ce
        As in :func:`generate_subject`.
    raw : bool
        Also write the "raw" scan of :func:`generate_raw_scan` (files ``*_acq-raw_*``).
    """
    from tqdm.auto import tqdm

    from mstoolkit.data.datasets import bids_paths

    if isinstance(n_subjects, bool) or not isinstance(n_subjects, (int, np.integer)) or n_subjects < 1:
        raise MSToolkitInputError(f"'n_subjects' must be an integer >= 1, got {n_subjects!r}.")
    seed = check_seed(seed)
    for name in [profile] if profile is not None else []:
        check_phantom_options(name, None)
    spacing = check_phantom_options("standard", spacing)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MSToolkitInputError(f"'{out}' already exists and is not an empty folder; choose a new output folder.")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out.name}-", dir=out.parent))
    cached_before = load_template.cache_info().currsize > 0
    rows = []
    try:
        for i in tqdm(range(1, n_subjects + 1), desc="phantom", unit="subject", disable=not progress):
            subject, subject_seed = f"sub-{i:03d}", _subject_seed(seed, i)
            chosen = profile or dataset_profile(i)
            row = {"participant_id": subject, "profile": chosen, "seed": subject_seed,
                   "spacing_mm": "x".join(f"{s:g}" for s in (spacing or (1, 1, 1)))}
            options = {"seed": subject_seed, "profile": chosen, "spacing": spacing, "t1ce": t1ce}
            if longitudinal:
                baseline, followup, change = generate_longitudinal_pair(**options)
                _save_case(baseline, bids_paths(tmp, subject, "ses-01"))
                _save_case(followup, bids_paths(tmp, subject, "ses-02"))
                save_mask(tmp / subject / f"{subject}_label-change_mask.nii.gz", change, baseline.affine)
                evolution = baseline.meta["evolution"]
                row.update(n_lesions=baseline.meta["n_lesions"], lesion_volume_ml=baseline.meta["lesion_volume_ml"],
                           n_lesions_followup=followup.meta["n_lesions"],
                           lesion_volume_ml_followup=followup.meta["lesion_volume_ml"],
                           n_new=evolution["new"], n_enlarging=evolution["enlarging"],
                           n_shrinking=evolution["shrinking"],
                           change_volume_ml=round(float(change.sum()) * float(np.prod(baseline.spacing)) / 1000, 3))
            else:
                case = generate_subject(**options)
                _save_case(case, bids_paths(tmp, subject))
                row.update(n_lesions=case.meta["n_lesions"], lesion_volume_ml=case.meta["lesion_volume_ml"])
            if raw:
                scan = generate_raw_scan(seed=subject_seed, profile=chosen)
                paths = raw_paths(tmp, subject, "ses-01" if longitudinal else None)
                for seq, image in scan["images"].items():
                    _save_image(paths[seq], image, scan["affine"])
                save_mask(paths["mask"], scan["mask"], scan["affine"])
                save_mask(paths["brain_mask"], scan["brain_mask"], scan["affine"])
            rows.append(row)
        _write_tables(tmp, rows, seed=seed, longitudinal=longitudinal, raw=raw)
        if not cached_before:  # give the ~400 MB of cached maps back (notebooks train next)
            clear_cache()
        tmp.chmod(0o755)  # mkdtemp makes it private; a dataset is meant to be shared
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_tables(folder: Path, rows: list[dict], *, seed: int, longitudinal: bool, raw: bool) -> None:
    columns = list(rows[0])
    lines = ["\t".join(columns)] + ["\t".join(str(row[c]) for c in columns) for row in rows]
    (folder / "participants.tsv").write_text("\n".join(lines) + "\n")
    description = {
        "Name": "mstoolkit synthetic MS phantom",
        "BIDSVersion": "1.9.0",
        "DatasetType": "raw",
        "GeneratedBy": [{"Name": "mstoolkit.phantom.generator", "Version": __version__}],
        "generator": "mstoolkit.phantom.dataset.generate_dataset",
        "version": __version__,
        "seed": seed,
        "n_subjects": len(rows),
        "longitudinal": longitudinal,
        "raw_scans": raw,
        "space": "MNI152 (FSL 1 mm grid, 182x218x182), RAS+",
        "License": ("Synthetic images derived from the MNI ICBM 152 2009a nonlinear symmetric templates, "
                    "Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, Montreal "
                    "Neurological Institute, McGill University; use, copying and distribution permitted "
                    "provided this copyright notice is kept (see nilearn's dataset description). "
                    "Lesion statistics were fitted to the open_ms_data consensus masks (CC-BY)."),
        "References": ["Fonov et al. (2011) NeuroImage 54:313-327; Fonov et al. (2009) NeuroImage 47:S102",
                       "Lesjak et al. (2018) Neuroinformatics 16:51-63 (lesion statistics)"],
    }
    (folder / "dataset_description.json").write_text(json.dumps(description, indent=2) + "\n")


def cli_phantom(args: argparse.Namespace) -> int:
    """``mstoolkit data phantom``: write a phantom dataset and print a one-line summary."""
    start = time.perf_counter()
    out = generate_dataset(args.out, n_subjects=args.n, seed=args.seed, longitudinal=args.longitudinal,
                           profile=args.profile, spacing=args.spacing, t1ce=args.t1ce, raw=args.raw)
    rows = [line.split("\t") for line in (out / "participants.tsv").read_text().splitlines()]
    table = [dict(zip(rows[0], row)) for row in rows[1:]]
    lesions = sum(int(r["n_lesions"]) for r in table)
    volume = sum(float(r["lesion_volume_ml"]) for r in table)
    kind = "longitudinal subjects" if args.longitudinal else "subjects"
    print(f"Wrote {len(table)} {kind} ({lesions} lesions, {volume:.1f} mL in total) to {out} "
          f"in {time.perf_counter() - start:.1f} s.")
    return 0


# --------------------------------------------------------------------------- the notebooks' phantom


def phantom_dir(n_subjects: int, seed: int, *, longitudinal: bool = False) -> Path:
    """Cache folder of a phantom dataset with these settings."""
    kind = "phantom-long" if longitudinal else "phantom"
    return default_data_dir() / f"{kind}-n{n_subjects}-seed{seed}"


def ensure_phantom(
    data_dir: str | os.PathLike | None = None,
    *,
    n_subjects: int = 4,
    seed: int = 0,
    longitudinal: bool = False,
    **phantom_options,
) -> Path:
    """Return a folder holding a phantom dataset, generating it first if needed.

    Notebooks call this so they run on a fresh machine with no download: the
    phantom is built from templates shipped inside nilearn's wheel.
    """
    out = Path(data_dir) if data_dir is not None else phantom_dir(n_subjects, seed, longitudinal=longitudinal)
    if (out / "participants.tsv").exists():
        return out
    generate_dataset(out, n_subjects=n_subjects, seed=seed, longitudinal=longitudinal, **phantom_options)
    return out


def cli_prepare(args) -> int:
    """``mstoolkit data prepare``: build the data the notebooks use at a profile (Binder, workshops)."""
    if args.profile not in NOTEBOOK_SUBJECTS:
        raise MSToolkitInputError(f"'profile' must be one of {', '.join(NOTEBOOK_SUBJECTS)}, got {args.profile!r}.")
    for n_subjects in NOTEBOOK_SUBJECTS[args.profile]:
        path = ensure_phantom(n_subjects=n_subjects, seed=args.seed)
        print(f"phantom with {n_subjects} subjects ready in {path}")
    return 0
