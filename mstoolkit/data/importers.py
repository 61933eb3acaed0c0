"""Convert MS datasets you downloaded yourself into the toolkit's layout.

ISBI 2015 and MSSEG-1/-2 need registration, and MSLesSeg may come as your own
archive: ``mstoolkit data import NAME ARCHIVE_OR_DIR --dest DIR`` unpacks it
safely (see :func:`mstoolkit.data.archives.extract_archive`) and lays it out
BIDS-like (ARCHITECTURE.md), so every notebook takes it as ``DATA_DIR``.

Introduced in notebook 01 (data loading).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from mstoolkit.data.archives import extract_archive
from mstoolkit.data.datasets import bids_paths
from mstoolkit.data.download import (
    download_dataset,
    load_manifest,
    place_file,
    write_about,
    write_participants,
)
from mstoolkit.data.fetch import DownloadError
from mstoolkit.data.io import MSToolkitInputError

__all__ = ["import_dataset"]


def _find(root: Path, pattern: str) -> list[tuple[re.Match, Path]]:
    """Files under ``root`` whose '/'-joined relative path matches ``pattern`` at its end."""
    regex = re.compile(pattern + r"$", re.IGNORECASE)
    found = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if "__MACOSX" not in relative.parts and path.is_file() and (match := regex.search(relative.as_posix())):
            found.append((match, path))
    return found


def _import_mslesseg(root: Path, out: Path, move: bool) -> list[dict]:
    keys = {"FLAIR": "FLAIR", "T1": "T1", "T2": "T2", "MASK": "mask"}
    rows = {}
    pattern = r"(train|test)/P(\d+)/(?:T(\d+)/)?P\2_(?:T\3_)?(FLAIR|T1|T2|MASK)\.nii\.gz"
    for match, path in _find(root, pattern):
        split, number, timepoint, kind = match.groups()
        subject = f"sub-P{int(number):02d}"
        session = f"ses-{int(timepoint):02d}" if timepoint else None
        place_file(path, bids_paths(out, subject, session)[keys[kind.upper()]], move=move)
        rows[subject] = {"participant_id": subject, "source_id": f"P{int(number)}", "split": split.lower()}
    return list(rows.values())


def _import_isbi2015(root: Path, out: Path, move: bool) -> list[dict]:
    keys = {"flair": "FLAIR", "mprage": "T1", "t2": "T2"}
    rows = {}
    pattern = r"(?:^|/)(training|test)(\d+)_(\d+)_(flair|mprage|t2|pd|mask1|mask2)(?:_pp)?\.nii(?:\.gz)?"
    for match, path in _find(root, pattern):
        split, number, timepoint, kind = match.groups()
        if not kind.lower().startswith("mask") and "_pp." not in path.name:
            continue  # the 'orig' folder holds the unprocessed scans, on other grids
        subject, session = f"sub-{split.lower()}{number}", f"ses-{timepoint}"
        paths = bids_paths(out, subject, session)
        anat, stem = paths["FLAIR"].parent, f"{subject}_{session}"
        target = {
            "pd": anat / f"{stem}_PDw.nii.gz",
            "mask1": paths["mask"],  # rater 1 is the toolkit's mask; rater 2 is kept beside it
            "mask2": anat / f"{stem}_label-lesion_desc-rater2_mask.nii.gz",
        }.get(kind.lower()) or paths[keys[kind.lower()]]
        place_file(path, target, move=move)
        rows[subject] = {"participant_id": subject, "source_id": f"{split}{number}", "split": split.lower()}
    return list(rows.values())


def _import_msseg1(root: Path, out: Path, move: bool) -> list[dict]:
    keys = {"flair_preprocessed": "FLAIR", "t1_preprocessed": "T1", "gado_preprocessed": "T1CE",
            "t2_preprocessed": "T2", "consensus": "mask", "brain_mask": "brain_mask"}
    rows = {}
    pattern = r"(?:(train\w*|test\w*)/)?(?:center_(\d+)/)?([\w-]+)/(preprocessed_data|masks)/(\w+)\.nii\.gz"
    for match, path in _find(root, pattern):
        split, center, patient, _, kind = match.groups()
        label = re.sub(r"[^A-Za-z0-9]", "", re.sub(r"(?i)^patient", "P", patient))
        prefix = {"tr": "train", "te": "test"}.get((split or "")[:2].lower(), "")
        subject = f"sub-{prefix}{f'C{center}' if center else ''}{label}"
        paths = bids_paths(out, subject)
        target = paths.get(keys.get(kind.lower(), ""))
        if kind.lower() == "dp_preprocessed":
            target = paths["FLAIR"].with_name(f"{subject}_PDw.nii.gz")
        elif (rater := re.fullmatch(r"manualsegmentation_(\d+)", kind.lower())):
            target = paths["mask"].with_name(f"{subject}_label-lesion_desc-rater{rater.group(1)}_mask.nii.gz")
        if target is not None:
            place_file(path, target, move=move)
            rows[subject] = {"participant_id": subject, "source_id": path.parent.parent.relative_to(root).as_posix()}
    return list(rows.values())


def _import_msseg2(root: Path, out: Path, move: bool) -> list[dict]:
    rows = {}
    pattern = r"([\w-]+)/(flair_time0([12])_on_middle_space|ground_truth(?:_expert(\d))?)\.nii\.gz"
    for match, path in _find(root, pattern):
        patient, kind, time_point, expert = match.groups()
        subject = f"sub-{re.sub(r'[^A-Za-z0-9]', '', patient)}"
        if time_point:
            target = bids_paths(out, subject, f"ses-0{time_point}")["FLAIR"]
        else:
            desc = f"_desc-expert{expert}" if expert else ""
            target = out / subject / f"{subject}_label-change{desc}_mask.nii.gz"
        place_file(path, target, move=move)
        rows[subject] = {"participant_id": subject, "source_id": patient}
    return list(rows.values())


_IMPORTERS = {
    "mslesseg": _import_mslesseg, "isbi2015": _import_isbi2015, "msseg1": _import_msseg1, "msseg2": _import_msseg2,
}


def import_dataset(name: str, source: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Convert a dataset you downloaded yourself (archive or folder) into the toolkit layout.

    Images are neither resampled nor reoriented (loading does that); files are
    moved out of a freshly extracted archive, or hard-linked/copied from a
    folder (your folder is left untouched). Uncompressed ``.nii`` are gzipped.
    ``open_ms_data`` accepts a copy of its repository and verifies every file.
    Introduced in notebook 01.
    """
    source, dest = Path(source), Path(dest)
    if not source.exists():
        raise FileNotFoundError(f"'{source}' does not exist: pass the archive or folder you downloaded.")
    manifest = load_manifest(name)
    scratch = dest / f".import-{name}.tmp"
    try:
        if source.is_file():
            root, move = extract_archive(source, scratch), True
            for inner in sorted(root.rglob("*.zip")):  # figshare wraps the dataset zip in another zip
                extract_archive(inner, inner.with_suffix(""))
        else:
            root, move = source, False
        if name == "open_ms_data":  # a copy of the repository: treat it as a mirror, verify every file
            tops = [p.parent for p in sorted(root.rglob("*")) if p.name in ("cross_sectional", "longitudinal")]
            report = download_dataset(name, dest, subsets=["all"], mirror=str(tops[0] if tops else root))
            if report.failed:
                raise DownloadError("; ".join(f"{path}: {why}" for path, why in report.failed.items()))
            return dest
        rows = _IMPORTERS[name](root, dest, move)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if not rows:
        raise MSToolkitInputError(f"No {name} images found in '{source}'. Expected: {manifest['layout']}.")
    write_about(dest, manifest, note=f"imported from {source.name}")
    write_participants(dest, rows)
    return dest
