"""The repository as users clone it: no file left half-merged."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEXT_SUFFIXES = {".py", ".md", ".ipynb", ".toml", ".yml", ".yaml", ".txt", ".json", ".cfg", ".sh", ".tsv", ".csv"}
# A conflict marker opens a line (in a notebook, a JSON string that opens a line of a cell).
MARKER = re.compile(r'^\s*"?(<<<<<<<|>>>>>>>) ', flags=re.MULTILINE)


def tracked_text_files() -> list[Path]:
    try:
        listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [ROOT / name for name in listed.splitlines() if Path(name).suffix in TEXT_SUFFIXES and (ROOT / name).is_file()]


def test_no_merge_conflict_markers():
    found = [f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, match.start()) + 1}"
             for path in tracked_text_files()
             for text in [path.read_text(encoding="utf-8", errors="replace")]
             for match in MARKER.finditer(text)]
    assert not found, "merge conflict markers left in: " + ", ".join(found)
