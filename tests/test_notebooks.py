"""The course notebooks: structure, a papermill `quick` run of each, the Colab setup cell, student versions.

Tests marked ``notebook`` execute notebooks (minutes); ``pytest -m "not notebook"`` skips them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path
from unittest import mock

import nbformat
import pytest

from mstoolkit.course.runner import (
    REQUIRED_PARAMETERS,
    check_notebook_structure,
    make_student_version,
    notebook_paths,
    repository_url,
    run_notebooks,
    setup_cell_source,
    write_student_versions,
)
from mstoolkit.data.datasets import real_sample_dir

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = notebook_paths(ROOT / "notebooks")
NAMES = [p.name for p in NOTEBOOKS]
QUICK_TIMEOUT = 600  # seconds per notebook; the quick profile aims at ≤ 90 s


def _tags(cell) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def _read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(ROOT / "notebooks" / name, as_version=4)


def _data_cache(folder: Path):
    """Point MSTOOLKIT_DATA (inherited by the kernels) at ``folder`` for the duration of a run."""
    return mock.patch.dict(os.environ, {"MSTOOLKIT_DATA": str(folder)})


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory) -> Path:
    """One data cache for every notebook run of the session: the phantom is generated once."""
    return tmp_path_factory.mktemp("mstoolkit-data")


# --------------------------------------------------------------------------- (a) structure

@pytest.mark.parametrize("name", NAMES)
def test_structure(name):
    problems = check_notebook_structure(ROOT / "notebooks" / name)
    assert not problems, f"{name}:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("name", NAMES)
def test_parameters_cell_names(name):
    cells = [c for c in _read(name).cells if "parameters" in _tags(c)]
    assert len(cells) == 1, f"{name}: {len(cells)} cells tagged 'parameters'"
    for parameter in REQUIRED_PARAMETERS:
        assert re.search(rf"^{parameter}\s*=", cells[0].source, flags=re.MULTILINE), f"{name}: {parameter} missing"


@pytest.mark.parametrize("name", NAMES)
def test_no_committed_outputs(name):
    for i, cell in enumerate(_read(name).cells):
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{name} cell {i} carries outputs"


def _readme_table_rows() -> list[str]:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines() if (ROOT / "README.md").exists() else []
    is_table = any(re.match(r"^\s*\|\s*:?-{3,}", line) for line in lines)
    return [line for line in lines if line.lstrip().startswith("|")] if is_table else []


@pytest.mark.parametrize("name", NAMES)
def test_notebook_in_readme_table(name):
    rows = _readme_table_rows()
    if not rows:
        pytest.skip("README.md has no table of notebooks yet")
    assert any(name in row for row in rows), f"{name} is missing from README.md's table of notebooks"


# --------------------------------------------------------------------------- (b) papermill quick run

@pytest.fixture(scope="session")
def quick_run(data_cache) -> tuple[dict, Path]:
    """Every notebook in one run, in numeric order, so 03's model reaches 04–06.

    The executed notebooks, their HTML and summary.json stay in build/quick/ (the
    browser test opens the HTML; CI keeps them as artifacts).
    """
    if not NOTEBOOKS:
        pytest.skip("no notebooks yet")
    out = ROOT / "build" / "quick"
    shutil.rmtree(out, ignore_errors=True)
    with _data_cache(data_cache):
        summary = run_notebooks(NOTEBOOKS, profile="quick", out_dir=out, timeout=QUICK_TIMEOUT)
    return summary, out


@pytest.mark.notebook
@pytest.mark.parametrize("name", NAMES)
def test_quick_run(quick_run, name):
    summary, _ = quick_run
    record = {r["notebook"]: r for r in summary["notebooks"]}[name]
    error = record["error"] or {}
    assert record["status"] == "ok", (
        f"{name} {record['status']} in cell {error.get('cell_index')}:\n{error.get('cell_source')}\n{error.get('traceback')}"
    )
    assert record["seconds"] > 0 and record["peak_memory_mb"] > 0


@pytest.mark.notebook
def test_quick_run_summary(quick_run):
    summary, out = quick_run
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert [r["notebook"] for r in on_disk["notebooks"]] == NAMES
    assert on_disk["profile"] == "quick" and on_disk["parameters"]["OUTPUT_DIR"] == str(out.resolve() / "outputs")
    assert on_disk["totals"]["notebooks"] == len(NAMES)
    assert on_disk["totals"]["ok"] + on_disk["totals"]["failed"] == len(NAMES)
    assert on_disk["versions"]["mstoolkit"]
    for record in on_disk["notebooks"]:
        assert {"status", "seconds", "peak_memory_mb", "error", "executed"} <= set(record)
        assert record["peak_memory_mb"] > 0
        assert (out / record["executed"]).is_file()
        if record.get("html"):
            assert (out / record["html"]).stat().st_size > 1000


@pytest.mark.notebook
@pytest.mark.parametrize("name", NAMES)
def test_quick_run_used_real_data(quick_run, name):
    """Every notebook has a section on the real sample shipped in the package, and it ran
    (a fresh clone has no download and no ../shared: nothing may be skipped)."""
    summary, _ = quick_run
    record = {r["notebook"]: r for r in summary["notebooks"]}[name]
    assert record.get("real_data_sections"), f"{name}: no section ran on real data (cells tagged 'real-data')"


# --------------------------------------------------------------------------- (c) Colab setup cell

def _setup_sources() -> list[tuple[str, str]]:
    sources = [("template", setup_cell_source())]
    for path in NOTEBOOKS:
        code = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
        if code:
            sources.append((path.name, code[0].source))
    return sources


@pytest.fixture
def mstoolkit_missing(monkeypatch):
    """importlib.util.find_spec says mstoolkit is not installed; pip calls are recorded, not run."""
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: None if name == "mstoolkit" else real_find_spec(name, *a, **k))
    calls = []

    def fake_run(command, *args, **kwargs):
        calls.append((command, kwargs))
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(subprocess, "run", fake_run)
    return calls


@pytest.mark.parametrize("label, source", _setup_sources(), ids=[s[0] for s in _setup_sources()])
def test_setup_cell_on_colab_installs_from_repository(label, source, mstoolkit_missing, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    exec(compile(source, f"<setup cell of {label}>", "exec"), {"__name__": "__main__"})
    assert mstoolkit_missing == [
        ([sys.executable, "-m", "pip", "install", "--quiet", f"git+{repository_url()}"], {"check": True})
    ]
    said = capsys.readouterr().out  # describe_runtime(): the platform and the device it found
    assert "running on colab" in said and re.search(r"CPU only|GPU", said)


@pytest.mark.parametrize("label, source", _setup_sources(), ids=[s[0] for s in _setup_sources()])
def test_setup_cell_outside_colab_explains(label, source, mstoolkit_missing, monkeypatch):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    with pytest.raises(ModuleNotFoundError, match=r"mstoolkit is not installed: run `make run` in the repository"):
        exec(compile(source, f"<setup cell of {label}>", "exec"), {"__name__": "__main__"})
    assert mstoolkit_missing == []


def test_setup_cell_when_installed_does_not_pip(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(a))
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    exec(compile(setup_cell_source(), "<setup cell>", "exec"), {"__name__": "__main__"})
    assert calls == [] and "mstoolkit" in capsys.readouterr().out


# --------------------------------------------------------------------------- (d) student versions

@pytest.mark.parametrize("name", NAMES)
def test_every_exercise_has_solution_and_check(name):
    code = [c for c in _read(name).cells if c.cell_type == "code"]
    exercises = [i for i, c in enumerate(code) if "exercise" in _tags(c)]
    assert len(exercises) >= 2, f"{name}: {len(exercises)} exercises; each notebook has 2–3"
    for i in exercises:
        assert "NotImplementedError" in code[i].source, f"{name}: exercise stub {i} raises no NotImplementedError"
        assert i + 2 < len(code) and "solution" in _tags(code[i + 1]), f"{name}: exercise {i} has no solution cell after it"
        assert re.search(r"\bcheck_\w*\s*\(", code[i + 2].source), f"{name}: exercise {i} has no check_* call after its solution"


def test_student_versions_generated_for_all(tmp_path):
    written = write_student_versions(NOTEBOOKS, tmp_path) if NOTEBOOKS else []
    assert [p.name for p in written] == NAMES
    for path in written:
        student = nbformat.read(path, as_version=4)
        original = _read(path.name)
        assert not [c for c in student.cells if "solution" in _tags(c)], f"{path.name}: solution left"
        n_exercises = sum("exercise" in _tags(c) for c in original.cells)
        assert sum("exercise" in _tags(c) for c in student.cells) == n_exercises
        assert sum("exercise-check" in _tags(c) for c in student.cells) == n_exercises
        assert len(student.cells) == len(original.cells) - n_exercises
        assert student == make_student_version(original)


def _student_cases() -> list[str]:
    # A student run costs everything up to its first exercise: notebook 01 always, all on request.
    if os.environ.get("MSTOOLKIT_TEST_ALL_STUDENT"):
        return NAMES
    return [n for n in NAMES if n.startswith("01_")]


@pytest.mark.notebook
@pytest.mark.parametrize("name", _student_cases())
def test_student_version_fails_only_at_exercise(name, tmp_path, data_cache):
    (student,) = write_student_versions([ROOT / "notebooks" / name], tmp_path / "student")
    with _data_cache(data_cache):
        summary = run_notebooks([student], profile="quick", out_dir=tmp_path / "build", timeout=QUICK_TIMEOUT, html=False)
    record = summary["notebooks"][0]
    cells = nbformat.read(student, as_version=4).cells
    if not any("exercise" in _tags(c) for c in cells):
        assert record["status"] == "ok"
        return
    error = record["error"] or {}
    assert record["status"] == "failed", f"{name}: the student version ran through its exercise stubs"
    assert error["ename"] == "NotImplementedError", f"{name} failed before its exercises:\n{error['traceback']}"
    assert {"exercise", "exercise-check"} & set(error["cell_tags"]), (
        f"{name}: NotImplementedError outside an exercise cell:\n{error['cell_source']}"
    )
    executed = nbformat.read(tmp_path / "build" / "notebooks" / name, as_version=4).cells
    first_exercise = next(i for i, c in enumerate(executed) if "exercise" in _tags(c))
    assert error["cell_index"] >= first_exercise, f"{name} failed before its first exercise"


# --------------------------------------------------------------------------- real data

@pytest.mark.notebook
def test_notebook_01_on_real_sample(tmp_path, data_cache):
    first = [p for p in NOTEBOOKS if p.name.startswith("01_")]
    if not first:
        pytest.skip("notebook 01 does not exist yet")
    sample = real_sample_dir()
    with _data_cache(data_cache):
        summary = run_notebooks(
            first, profile="quick", out_dir=tmp_path, timeout=QUICK_TIMEOUT, html=False,
            parameters={"DATASET": "open_ms_data", "DATA_DIR": str(sample)},
        )
    record = summary["notebooks"][0]
    error = record["error"] or {}
    assert record["status"] == "ok", f"cell {error.get('cell_index')}:\n{error.get('cell_source')}\n{error.get('traceback')}"
