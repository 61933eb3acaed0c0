"""Download one file safely: checksummed, resumable, atomic, retried.

Every download is checksummed (SHA-256, or the upstream git blob SHA-1
``sha1(b"blob %d\\0" % len(data) + data)``), resumable (HTTP ``Range``) and
atomic: bytes go to ``NAME.part``, are verified, and only then renamed, so a
failed or corrupted transfer never leaves a file that looks complete. Network
errors are retried with exponential backoff. A ``file://`` URL (a mirror on a
USB stick or a shared folder) works like an ``http(s)://`` one.

Introduced in notebook 01 (data loading), through
:func:`mstoolkit.data.download.download_dataset` and ``mstoolkit data download``.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import time
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.parse import urlparse
from urllib.request import Request, url2pathname, urlopen

from mstoolkit import __version__
from mstoolkit.data.io import MSToolkitInputError

__all__ = ["DownloadError", "download_file", "file_digest"]

log = logging.getLogger(__name__)

RETRIES = 3  # extra attempts after the first, with exponential backoff
BACKOFF_S = 1.0
TIMEOUT_S = 30.0
CHUNK_BYTES = 1 << 20  # read and write files in 1 MiB pieces
_OFFLINE_HINT = "check your connection, or use --mirror URL pointing at a copy (see data_download/README.md)"


class DownloadError(RuntimeError):
    """A transfer failed: network (``network=True``, retried already), HTTP error or checksum mismatch."""

    def __init__(self, message: str, *, network: bool = False) -> None:
        super().__init__(message)
        self.network = network


def file_digest(path: str | os.PathLike, kind: str = "sha256") -> str:
    """Hex digest of a file, streamed: ``"sha256"`` or ``"git_blob_sha1"``.

    The git blob SHA-1 is what ``git hash-object`` prints, so any file of a git
    repository can be verified against the repository's tree.
    """
    path = Path(path)
    if kind == "sha256":
        digest = hashlib.sha256()
    elif kind == "git_blob_sha1":
        digest = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    else:
        raise MSToolkitInputError(f"'kind' must be 'sha256' or 'git_blob_sha1', got '{kind}'.")
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _problem(path: Path, sha256: str | None, git_blob_sha1: str | None, size: int | None) -> str | None:
    """Why ``path`` is not the expected file, or None when it is."""
    if size is not None and path.stat().st_size != size:
        return f"size {path.stat().st_size} bytes, expected {size}"
    for kind, expected in (("sha256", sha256), ("git_blob_sha1", git_blob_sha1)):
        if expected:  # the strongest checksum known is enough
            actual = file_digest(path, kind)
            return None if actual == expected else f"{kind} {actual}, expected {expected}"
    return None


def _fetch(url: str, part: Path, progress) -> bool:
    """Append the rest of ``url`` to ``part`` (resuming); False when the source has no such file."""
    offset = part.stat().st_size if part.exists() else 0
    parsed = urlparse(url)
    if parsed.scheme == "file":
        source = Path(url2pathname(parsed.path))
        if not source.is_file():
            return False
        part.parent.mkdir(parents=True, exist_ok=True)
        with open(source, "rb") as src, open(part, "ab" if offset <= source.stat().st_size else "wb") as out:
            src.seek(offset if out.tell() else 0)
            for chunk in iter(lambda: src.read(CHUNK_BYTES), b""):
                out.write(chunk)
                progress.update(len(chunk))
        return True
    request = Request(url, headers={"User-Agent": f"mstoolkit/{__version__}"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urlopen(request, timeout=TIMEOUT_S)
    except HTTPError as err:
        if err.code == 404:
            return False
        if err.code == 416:  # our partial file is not a prefix of theirs: start again
            part.unlink()
            raise
        if err.code >= 500 or err.code == 429:
            raise  # worth retrying
        raise DownloadError(f"{url}: HTTP {err.code} {err.reason}") from None
    with response:
        resumed = offset and response.status == 206
        expected = response.headers.get("Content-Length")
        received = 0
        part.parent.mkdir(parents=True, exist_ok=True)
        with open(part, "ab" if resumed else "wb") as out:
            for chunk in iter(lambda: response.read(CHUNK_BYTES), b""):
                out.write(chunk)
                received += len(chunk)
                progress.update(len(chunk))
    # http.client returns b"" instead of raising when a server hangs up early
    if expected is not None and received < int(expected):
        raise ConnectionError(f"connection closed after {received} of {expected} bytes")
    return True


def download_file(
    url: str,
    target: str | os.PathLike,
    *,
    sha256: str | None = None,
    git_blob_sha1: str | None = None,
    size: int | None = None,
    progress=None,
) -> str:
    """Download ``url`` to ``target`` atomically; return ``"cached"``, ``"downloaded"`` or ``"missing"``.

    A target that already verifies is not transferred again. Bytes go to
    ``TARGET.part`` (kept between attempts so a new attempt resumes with an HTTP
    ``Range`` request), are verified, then renamed. Network errors are retried
    :data:`RETRIES` times with exponential backoff. ``"missing"`` means the
    source has no such file (HTTP 404, or absent from a ``file://`` mirror).

    Raises
    ------
    DownloadError
        Checksum mismatch (the partial file is deleted), host unreachable, HTTP error.
    """
    target = Path(target)
    if target.exists():
        if _problem(target, sha256, git_blob_sha1, size) is None:
            return "cached"
        log.warning("%s does not match its checksum; downloading it again", target)
        target.unlink()
    part = target.with_name(target.name + ".part")
    progress = progress if progress is not None else _NoProgress()
    status = _fetch_with_retries(url, part, progress)
    if status == "missing":
        return "missing"
    problem = _problem(part, sha256, git_blob_sha1, size)
    if problem and status == "resumed":  # the two halves may come from different versions: once more from zero
        part.unlink()
        status = _fetch_with_retries(url, part, progress)
        problem = "gone from the source" if status == "missing" else _problem(part, sha256, git_blob_sha1, size)
    if problem:
        part.unlink(missing_ok=True)
        raise DownloadError(f"{target.name}: checksum mismatch ({problem}); the download was deleted. Source: {url}")
    os.replace(part, target)  # not data.io.write_atomic: TARGET.part has a fixed name so a later attempt resumes it
    return "downloaded"


def _fetch_with_retries(url: str, part: Path, progress) -> str:
    """``"fresh"``, ``"resumed"`` (part of the bytes came from an earlier attempt) or ``"missing"``."""
    resumed = part.exists()
    for attempt in range(RETRIES + 1):
        try:
            return ("resumed" if resumed else "fresh") if _fetch(url, part, progress) else "missing"
        except (OSError, http.client.HTTPException) as err:
            if attempt == RETRIES:
                unreachable = isinstance(err, (URLError, TimeoutError)) and not isinstance(err, HTTPError)
                reason = f"cannot reach {urlparse(url).netloc}" if unreachable else f"downloading {url} failed ({err})"
                raise DownloadError(f"{reason}: {_OFFLINE_HINT}", network=True) from None
            resumed = resumed or part.exists()
            log.info("attempt %d for %s failed (%s); retrying", attempt + 1, url, err)
            time.sleep(BACKOFF_S * 2**attempt)
    raise AssertionError("the loop returns or raises")


class _NoProgress:
    def update(self, n: int) -> None:
        pass
