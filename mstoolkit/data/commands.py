"""The ``mstoolkit data list``, ``data download`` and ``data import`` commands.

They sit above :mod:`mstoolkit.data.download` (public datasets from their manifests) and
:mod:`mstoolkit.data.importers` (datasets that need conversion), which builds on it: the
commands use both, so neither has to import the other's command line.
"""

from __future__ import annotations

import sys
from pathlib import Path
from urllib.parse import quote

from mstoolkit.data.download import (
    DATASETS,
    dataset_dir,
    download_dataset,
    load_manifest,
    mirror_base_url,
    print_about,
)
from mstoolkit.data.fetch import DownloadError, download_file, file_digest
from mstoolkit.data.importers import import_dataset
from mstoolkit.data.io import MSToolkitInputError

__all__ = ["cli_download", "cli_import", "cli_list"]


def cli_list(args) -> int:
    """``mstoolkit data list``: the datasets, how to get them, their licence."""
    for name in DATASETS:
        manifest = load_manifest(name)
        access = "register, then `data import`" if manifest["registration_required"] else "`data download`"
        print(f"{name:13s} {access:29s} {manifest['title']}\n{'':13s} licence: {manifest['licence']}")
    return 0


def cli_download(args) -> int:
    """``mstoolkit data download NAME``: fetch, verify, index; or print the registration steps."""
    manifest = load_manifest(args.name)
    dest = Path(args.dest) if args.dest else dataset_dir(args.name)
    if manifest["registration_required"]:
        print(f"{args.name} needs registration; it cannot be downloaded automatically. Steps:")
        print("\n".join(f"  {i}. {step}" for i, step in enumerate(manifest["steps"], 1)))
        return 1
    if args.name != "open_ms_data" and (args.subset or args.patients):
        raise MSToolkitInputError(f"'--subset' and '--patients' apply to open_ms_data only, not to {args.name}.")
    try:
        if args.name == "mslesseg":
            archive = manifest["archive"]
            url = mirror_base_url(args.mirror, "") + quote(archive["filename"]) if args.mirror else archive["url"]
            target = dest / "download" / archive["filename"]
            if download_file(url, target, sha256=archive["sha256"], size=archive["bytes"]) == "missing":
                raise DownloadError(f"{url} not found")
            if not archive["sha256"]:
                print(f"note: no checksum is pinned for '{archive['filename']}' in mslesseg.json; "
                      f"its SHA-256 is {file_digest(target)}", file=sys.stderr)
            import_dataset(args.name, target, dest)
        else:
            report = download_dataset(args.name, dest, subsets=args.subset, patients=args.patients,
                                      mirror=args.mirror, convert=not args.no_convert)
    except DownloadError as err:
        print(f"mstoolkit data download: error: {err}", file=sys.stderr)
        return 1
    if args.name != "mslesseg":
        print(f"{args.name}: {len(report.downloaded)} downloaded, {len(report.cached)} already present, "
              f"{len(report.missing)} not available, {len(report.failed)} failed → {dest}")
        if report.missing:
            more = len(report.missing) - 10
            shown = "\n  ".join(report.missing[:10]) + (f"\n  … and {more} more" if more > 0 else "")
            print(f"Not available from {args.mirror or 'upstream'} (skipped):\n  {shown}", file=sys.stderr)
        for path, problem in report.failed.items():
            print(f"FAILED {path}: {problem}", file=sys.stderr)
        if (dest / "cross_sectional" / "MNI").is_dir():
            print(f"notebooks: DATASET = 'open_ms_data', DATA_DIR = '{dest}' (cross-sectional MNI cases)")
        for subset, folder in report.converted.items():
            print(f"toolkit layout ({subset}): DATA_DIR = '{folder}'")
        if report.failed or (report.missing and not args.mirror):
            return 1
    print_about(manifest, dest)
    return 0


def cli_import(args) -> int:
    """``mstoolkit data import NAME PATH --dest DIR``: convert what you downloaded."""
    try:
        dest = import_dataset(args.name, args.path, args.dest)
    except DownloadError as err:
        print(f"mstoolkit data import: error: {err}", file=sys.stderr)
        return 1
    print(f"{args.name} imported into {dest} (DATA_DIR = '{dest}')")
    print_about(load_manifest(args.name), dest)
    return 0
