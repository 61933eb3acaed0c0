"""Tests of mstoolkit.data.fetch that need no server (transfers through a local server: test_download.py)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess

import pytest

from mstoolkit.data import fetch
from mstoolkit.data.io import MSToolkitInputError


def test_git_blob_sha1_matches_git_itself(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(b"MS lesions\n" * 1000)
    data = path.read_bytes()
    assert fetch.file_digest(path, "git_blob_sha1") == hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    if shutil.which("git"):
        git = subprocess.run(["git", "hash-object", str(path)], capture_output=True, text=True, check=True)
        assert fetch.file_digest(path, "git_blob_sha1") == git.stdout.strip()
    assert fetch.file_digest(path) == hashlib.sha256(data).hexdigest()
    with pytest.raises(MSToolkitInputError, match="'kind' must be 'sha256' or 'git_blob_sha1', got 'md5'"):
        fetch.file_digest(path, "md5")
