"""Download public MS datasets and lay them out as the toolkit's cases.

A manifest in ``data_download/`` lists each dataset's files with their checksums,
licence and citation. :func:`download_dataset` fetches the chosen subsets and
patients file by file (:func:`mstoolkit.data.fetch.download_file`: checksummed,
resumable, atomic), from upstream or from a ``mirror`` (``http(s)://`` or
``file://``) that replaces the upstream base URL for workshops without reliable
network; it writes the licence and citation beside the data and indexes the
co-registered subsets of ``open_ms_data`` as BIDS-like cases. Archives are
extracted by :mod:`mstoolkit.data.archives`; datasets that need registration print
the steps a user takes.

Introduced in notebook 01 (data loading); see also ``mstoolkit data --help``.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import re
import shutil
import site
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlparse
from urllib.request import url2pathname

from mstoolkit import __version__
from mstoolkit.data.datasets import bids_paths, default_data_dir
from mstoolkit.data.fetch import CHUNK_BYTES, DownloadError, download_file
from mstoolkit.data.io import MSToolkitInputError, write_atomic

__all__ = [
    "DATASETS",
    "DownloadReport",
    "dataset_dir",
    "load_manifest",
    "select_files",
    "download_dataset",
    "mirror_base_url",
    "place_file",
    "print_about",
    "write_about",
    "write_participants",
]

#: Datasets the toolkit knows; each has ``data_download/NAME.json``.
DATASETS = ("open_ms_data", "mslesseg", "isbi2015", "msseg1", "msseg2")


@dataclass
class DownloadReport:
    """What :func:`download_dataset` did, file by file (upstream paths)."""

    dest: Path
    downloaded: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    converted: dict[str, Path] = field(default_factory=dict)


# --------------------------------------------------------------------------- manifests


def dataset_dir(name: str) -> Path:
    """Default folder of a dataset: ``$MSTOOLKIT_DATA/NAME`` (``~/.cache/mstoolkit/NAME``)."""
    return default_data_dir() / name


def _manifest_dirs() -> list[Path]:
    dirs = [Path(os.environ["MSTOOLKIT_MANIFESTS"])] if os.environ.get("MSTOOLKIT_MANIFESTS") else []
    # a source checkout (editable install), then where a wheel's data files land (system or --user)
    checkout = Path(__file__).resolve().parents[2] / "data_download"
    wheel = [Path(base) / "share/mstoolkit/data_download" for base in (sys.prefix, site.getuserbase())]
    return dirs + [checkout] + wheel


def load_manifest(name: str) -> dict:
    """The manifest of a dataset (files, checksums, licence, citation, access steps).

    >>> load_manifest("open_ms_data")["base_url"].startswith("https://raw.githubusercontent.com/")
    True
    """
    if name not in DATASETS:
        raise MSToolkitInputError(f"Unknown dataset '{name}'; known: {', '.join(DATASETS)}.")
    for folder in _manifest_dirs():
        if (folder / f"{name}.json").is_file():
            return json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))
    raise FileNotFoundError(
        f"Manifest '{name}.json' not found in {', '.join(map(str, _manifest_dirs()))}. "
        "Set MSTOOLKIT_MANIFESTS to the data_download folder of a mstoolkit checkout."
    )


def _subset_of(path: str) -> str | None:
    """``cross_sectional/MNI/patient07/…`` → ``cross_sectional_mni``; None for shared files."""
    parts = path.split("/")
    if len(parts) >= 4 and re.fullmatch(r"patient\d+", parts[2]):
        return f"{parts[0]}_{parts[1].lower()}"
    return None


def _patient_number(text: str) -> int:
    match = re.fullmatch(r"(?:patient)?0*(\d+)", str(text).strip())
    if not match:
        raise MSToolkitInputError(f"'patients' must be numbers like 7 or patient07, got '{text}'.")
    return int(match.group(1))


def select_files(manifest: dict, *, subsets: list[str] | None = None, patients: list | None = None) -> list[dict]:
    """The manifest entries of the chosen subsets and patients, plus their shared files.

    ``subsets`` defaults to the manifest's ``default_subsets``; ``["all"]`` takes all.
    Shared files (licences, patient tables) of each chosen group come along.
    """
    files = manifest["files"]
    available = sorted({s for f in files if (s := _subset_of(f["path"]))})
    chosen = set(subsets or manifest.get("default_subsets", available))
    if "all" in chosen:
        chosen = set(available)
    unknown = sorted(chosen - set(available))
    if unknown:
        raise MSToolkitInputError(f"Unknown subset(s) {unknown}; available: {', '.join(available)} or all.")
    picked = [f for f in files if _subset_of(f["path"]) in chosen]
    if patients:
        wanted = {_patient_number(p) for p in patients}
        picked = [f for f in picked if _patient_number(f["path"].split("/")[2]) in wanted]
        if not picked:
            raise MSToolkitInputError(f"No files for patients {sorted(wanted)} in subsets {sorted(chosen)}.")
    groups = {f["path"].split("/")[0] for f in picked}
    shared = [f for f in files if _subset_of(f["path"]) is None and f["path"].split("/")[0] in groups]
    return shared + picked


# --------------------------------------------------------------------------- writing a dataset


def place_file(source: Path, target: Path, *, move: bool) -> None:
    """Put ``source`` at ``target`` (atomically): gzip ``.nii``, else move, hard-link or copy."""
    if target.exists() and os.path.samefile(source, target):
        return  # already linked by an earlier run
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.suffix == ".nii" and target.name.endswith(".nii.gz"):
        def gzipped(temporary: Path) -> None:
            with open(source, "rb") as src, gzip.open(temporary, "wb", compresslevel=6) as out:
                shutil.copyfileobj(src, out, CHUNK_BYTES)

        write_atomic(target, gzipped)
    elif move:
        os.replace(source, target)
    else:
        def linked(temporary: Path) -> None:
            temporary.unlink()  # a link needs a free name
            try:
                os.link(source, temporary)  # same bytes, no extra disk space
            except OSError:
                shutil.copyfile(source, temporary)

        write_atomic(target, linked)


def write_about(dest: Path, manifest: dict, note: str = "") -> None:
    """LICENSE.md and CITATION.md beside the data, and a BIDS dataset_description.json."""
    dest.mkdir(parents=True, exist_ok=True)
    source = manifest.get("homepage", "")
    write_atomic(dest / "LICENSE.md", f"# Licence of {manifest['name']}\n\n{manifest['licence']}\n\nSource: {source}\n")
    cites = "\n".join(f"- {c}" for c in manifest["citation"])
    write_atomic(dest / "CITATION.md", f"# Cite {manifest['name']}\n\nAny work using these data must cite:\n\n{cites}\n")
    if note:
        description = {
            "Name": f"{manifest['name']} ({note})",
            "BIDSVersion": "1.9.0",
            "DatasetType": "derivative",
            "License": manifest["licence"],
            "HowToAcknowledge": " ".join(manifest["citation"]),
            "ReferencesAndLinks": [source],
            "GeneratedBy": [{"Name": "mstoolkit", "Version": __version__, "Description": note}],
            "SourceDatasets": [{"URL": source, "Version": manifest.get("commit", "")}],
        }
        write_atomic(dest / "dataset_description.json", json.dumps(description, indent=2) + "\n")


def write_participants(dest: Path, rows: list[dict]) -> None:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    table = io.StringIO()
    writer = csv.DictWriter(table, columns, delimiter="\t", restval="n/a", lineterminator="\n")
    writer.writeheader()
    writer.writerows(sorted(rows, key=lambda r: r["participant_id"]))
    write_atomic(dest / "participants.tsv", table.getvalue())


# --------------------------------------------------------------------------- open_ms_data


# upstream file names (glob patterns, without .nii.gz) → toolkit keys, per subset folder
_CROSS_SECTIONAL = {
    "FLAIR": "FLAIR", "T1": "T1W", "T1CE": "T1WKS", "T2": "T2W", "mask": "consensus_gt", "brain_mask": "brainmask",
}
_OPEN_MS_FILES = {
    ("cross_sectional", "MNI"): {
        None: {"FLAIR": "FLAIR_*", "T1": "T1_*", "T1CE": "T1POST_*", "T2": "T2_*", "mask": "GOLD_STANDARD_*"}
    },
    ("cross_sectional", "coregistered"): {None: _CROSS_SECTIONAL},
    ("cross_sectional", "coregistered_resampled"): {None: _CROSS_SECTIONAL},
    # two studies per patient on one common grid; gt is the lesion CHANGE between them
    ("longitudinal", "coregistered"): {
        f"ses-0{k}": {
            "FLAIR": f"study{k}_FLAIR", "T1": f"study{k}_T1W", "T2": f"study{k}_T2W", "brain_mask": "brainmask",
        }
        for k in (1, 2)
    },
}
# raw subsets are not converted: their sequences are on different grids (as acquired)


def _patient_table(csv_path: Path) -> dict[int, dict]:
    if not csv_path.is_file():
        return {}
    with open(csv_path, newline="", encoding="utf-8") as handle:
        return {int(row.pop("patient_id")): row for row in csv.DictReader(handle)}


def _convert_open_ms(dest: Path, group: str, space: str, manifest: dict) -> Path | None:
    """Index one downloaded subset as BIDS-like cases in ``dest/bids/SUBSET`` (hard links, no copies)."""
    out = dest / "bids" / f"{group}_{space.lower()}"
    table = _patient_table(dest / group / "patient_info.csv")
    rows = []
    for patient in sorted((dest / group / space).glob("patient*")):
        number = _patient_number(patient.name)
        subject = f"sub-{number:02d}"
        pairs = []  # (upstream file, toolkit path)
        for session, names in _OPEN_MS_FILES[group, space].items():
            paths = bids_paths(out, subject, session)
            for key, pattern in names.items():
                if found := sorted(patient.glob(f"{pattern}.nii.gz")):
                    pairs.append((found[0], paths[key]))
        if group == "longitudinal" and (patient / "gt.nii.gz").is_file():
            pairs.append((patient / "gt.nii.gz", out / subject / f"{subject}_label-change_mask.nii.gz"))
        # the sample keeps masks of patients whose images it lacks: those are no case
        if any("_mask" not in target.name for _, target in pairs):
            for source, target in pairs:
                place_file(source, target, move=False)
            source_id = f"{group}/{space}/{patient.name}"
            rows.append({"participant_id": subject, "source_id": source_id, **table.get(number, {})})
    if not rows:
        return None
    write_about(out, manifest, note=f"{group}/{space} indexed into the toolkit layout")
    write_participants(out, rows)
    return out


def mirror_base_url(mirror: str | None, default: str) -> str:
    """The base URL files are fetched from: ``mirror`` (a URL or a local folder) when given, else ``default``."""
    if mirror is None:
        return default
    if "://" not in mirror and Path(mirror).is_dir():
        return Path(mirror).resolve().as_uri() + "/"
    scheme = urlparse(mirror).scheme
    if scheme not in ("http", "https", "file"):
        raise MSToolkitInputError(f"'--mirror' must start with http://, https:// or file://, got '{mirror}'.")
    if scheme == "file" and not Path(url2pathname(urlparse(mirror).path)).is_dir():
        raise MSToolkitInputError(f"Mirror folder '{url2pathname(urlparse(mirror).path)}' does not exist.")
    return mirror.rstrip("/") + "/"


def download_dataset(
    name: str = "open_ms_data",
    dest: str | os.PathLike | None = None,
    *,
    subsets: list[str] | None = None,
    patients: list | None = None,
    mirror: str | None = None,
    convert: bool = True,
) -> DownloadReport:
    """Download (the chosen part of) a public dataset, verify it and index it as cases.

    Files keep their upstream paths under ``dest`` (so ``dest`` can itself serve
    as a mirror); with ``convert`` the co-registered subsets are also laid out
    as BIDS-like cases in ``dest/bids/SUBSET`` by hard links. Files a partial
    mirror lacks are reported in ``report.missing``; corrupted files in
    ``report.failed``. Introduced in notebook 01.

    Parameters
    ----------
    name : str
        ``"open_ms_data"`` (``mslesseg`` goes through :func:`mstoolkit.data.importers.import_dataset`).
    dest : path, optional
        Defaults to :func:`dataset_dir`.
    subsets : list of str, optional
        e.g. ``["cross_sectional_mni", "longitudinal_coregistered"]`` or ``["all"]``.
    patients : list, optional
        Patient numbers (``7`` or ``"patient07"``).
    mirror : str, optional
        Base URL (``http(s)://`` or ``file://``) or folder replacing the upstream one.
    """
    manifest = load_manifest(name)
    if "files" not in manifest:
        raise MSToolkitInputError(
            f"'{name}' is not downloaded file by file; use `mstoolkit data download {name}`."
        )
    from tqdm.auto import tqdm

    dest = Path(dest) if dest is not None else dataset_dir(name)
    entries = select_files(manifest, subsets=subsets, patients=patients)
    base = mirror_base_url(mirror, manifest["base_url"])
    report = DownloadReport(dest=dest)
    known = sum(e["bytes"] or 0 for e in entries)
    with tqdm(total=known or None, unit="B", unit_scale=True, desc=name, leave=False) as bar:
        for entry in entries:
            path = entry["path"]
            try:
                status = download_file(base + quote(path), dest / path, sha256=entry["sha256"],
                                       git_blob_sha1=entry["git_blob_sha1"], size=entry["bytes"], progress=bar)
            except DownloadError as err:
                if err.network:  # the next files come from the same host: stop here
                    raise
                report.failed[path] = str(err)
                continue
            {"cached": report.cached, "downloaded": report.downloaded, "missing": report.missing}[status].append(path)
    write_about(dest, manifest)
    if convert:
        folders = {tuple(e["path"].split("/")[:2]) for e in entries if _subset_of(e["path"])}
        for group, space in sorted(folders & set(_OPEN_MS_FILES)):
            if (folder := _convert_open_ms(dest, group, space, manifest)) is not None:
                report.converted[f"{group}_{space.lower()}"] = folder
    return report


def print_about(manifest: dict, dest: Path) -> None:
    """Print a dataset's licence and citations, and where they were saved."""
    print(f"Licence: {manifest['licence']}")
    print("Cite:\n" + "\n".join(f"  - {c}" for c in manifest["citation"]))
    print(f"(saved in {dest / 'LICENSE.md'} and {dest / 'CITATION.md'})")
