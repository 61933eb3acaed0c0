"""Extract zip and tar archives safely: every member is checked before anything is written.

Absolute paths, ``..`` components, links that point outside the destination and
special files (devices, FIFOs) are refused (zip-slip / tar-slip); tar archives also
pass the standard library's own ``data`` filter where it exists.

Introduced in notebook 01 (data loading): ``mstoolkit data import`` and
:func:`mstoolkit.data.importers.import_dataset` unpack the archives of datasets you
downloaded yourself with it.
"""

from __future__ import annotations

import os
import re
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from mstoolkit.data.io import MSToolkitInputError

__all__ = ["extract_archive"]


def _check_member(name: str, root: Path, archive: Path) -> None:
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or re.match(r"^[A-Za-z]:", name) or ".." in posix.parts:
        raise MSToolkitInputError(
            f"Unsafe archive {archive.name}: member '{name}' has an absolute path or '..'; refusing to extract."
        )
    if not (root / posix).resolve().is_relative_to(root):
        raise MSToolkitInputError(f"Unsafe archive {archive.name}: member '{name}' would be written outside {root}.")


def _check_link(name: str, target: str, root: Path, archive: Path, *, hard: bool) -> None:
    base = root if hard else (root / PurePosixPath(name)).parent
    if PurePosixPath(target).is_absolute() or not (base / target).resolve().is_relative_to(root):
        raise MSToolkitInputError(
            f"Unsafe archive {archive.name}: link '{name}' -> '{target}' points outside the archive."
        )


def extract_archive(archive: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Extract a zip or tar archive into ``dest`` after checking every member.

    Absolute paths, ``..`` components, links that point outside ``dest`` and
    special files (devices, FIFOs) are refused before anything is written.
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                _check_member(info.filename, root, archive)
                if stat.S_ISLNK(info.external_attr >> 16):
                    _check_link(info.filename, zf.read(info).decode(), root, archive, hard=False)
            zf.extractall(dest)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            members = tf.getmembers()
            for member in members:
                _check_member(member.name, root, archive)
                if member.issym() or member.islnk():
                    _check_link(member.name, member.linkname, root, archive, hard=member.islnk())
                elif not (member.isfile() or member.isdir()):
                    raise MSToolkitInputError(f"Unsafe archive {archive.name}: '{member.name}' is a special file.")
            # the standard library's own 'data' filter is a second line of defence
            options = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            try:
                tf.extractall(dest, members=members, **options)
            except tarfile.TarError as err:  # includes the filter's refusals
                raise MSToolkitInputError(f"Unsafe or damaged archive {archive.name}: {err}") from None
    else:
        raise MSToolkitInputError(f"'{archive}' is neither a zip nor a tar archive.")
    return dest
