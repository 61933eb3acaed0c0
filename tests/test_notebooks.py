"""The course notebooks: structure, a papermill `quick` run of each, the Colab setup cell, student versions.

Tests marked ``notebook`` execute notebooks (minutes); ``pytest -m "not notebook"`` skips them.

The quick run executes each notebook's *both-paths* version (``runner.make_both_paths_version``):
every exercise's solution and its check, then its stub and its check again. One run per
notebook thus proves that the solutions pass their checks (what a run of the notebooks
proves) and that each stub falls back to the package's answer with a visible note, so that
every later cell runs as in a student's Run-All (what a run of the student versions proves),
for the price of the repeated check cells instead of a second run of every notebook. What
the both-paths run cannot see, a later cell leaning on a name that only a solution cell
defines, a static test catches (``test_solutions_define_only_what_their_stub_defines``);
``MSTOOLKIT_TEST_ALL_STUDENT=1`` also runs every student version as students get it.
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
    FALLBACK_NOTE,
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

# `make test` runs pytest-xdist with --dist loadfile: every test of this file runs in one worker, so the
# session's one quick run of the notebooks (the ``quick_run`` fixture) happens once, beside the other files.

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


@pytest.mark.parametrize("name", NAMES)
def test_readme_minutes_are_the_notebooks_estimate(name):
    """The README's minutes column says what the notebook's introduction says (the schedule relies on both)."""
    stated = re.search(r"Estimated time: (\d+) minutes", _read(name).cells[0].source)
    assert stated, f"{name}: the introduction states no 'Estimated time: N minutes'"
    row = next(row for row in _readme_table_rows() if name in row)
    minutes = [cell.strip() for cell in row.strip().strip("|").split("|")][3]
    assert minutes == stated.group(1), f"README.md gives {name} {minutes} minutes, the notebook {stated.group(1)}"


# --------------------------------------------------------------------------- (b) papermill quick run

def _selected_notebooks(session) -> list[Path]:
    """The notebooks the selected quick-run tests ask about (all, when a test needs the whole run)."""
    wanted = set()
    for item in session.items:
        if "quick_run" not in getattr(item, "fixturenames", ()):
            continue
        params = getattr(getattr(item, "callspec", None), "params", {})
        if "name" not in params:
            return NOTEBOOKS
        wanted.add(params["name"])
    return [p for p in NOTEBOOKS if p.name in wanted]


@pytest.fixture(scope="session")
def quick_run(request, data_cache) -> tuple[dict, Path]:
    """The both-paths version of every notebook in one run, in numeric order, so 03's model reaches 04–06.

    The executed notebooks, their HTML and summary.json stay in build/quick/ (the
    browser test opens the HTML; CI keeps them as artifacts). When only some notebooks'
    tests are selected (``-k 01_``), only those run, into a temporary folder.
    """
    notebooks = _selected_notebooks(request.session)
    if not notebooks:
        pytest.skip("no notebooks yet")
    if notebooks == NOTEBOOKS:
        out = ROOT / "build" / "quick"
        shutil.rmtree(out, ignore_errors=True)
    else:
        out = request.config._tmp_path_factory.mktemp("quick")
    with _data_cache(data_cache):
        summary = run_notebooks(notebooks, profile="quick", out_dir=out, timeout=QUICK_TIMEOUT, version="both")
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
    assert record["sections"] and all(section["seconds"] >= 0 for section in record["sections"])


def _printed(cell) -> str:
    return "".join(o.get("text", "") + "".join(o.get("data", {}).get("text/plain", "")) for o in cell.get("outputs", []))


@pytest.mark.notebook
@pytest.mark.parametrize("name", NAMES)
def test_quick_run_solutions_pass_and_stubs_fall_back(quick_run, name):
    """Each exercise ran twice: its solution passed the check, then its stub fell back with a visible note."""
    summary, out = quick_run
    record = {r["notebook"]: r for r in summary["notebooks"]}[name]
    executed = nbformat.read(out / record["executed"], as_version=4).cells
    n_exercises = sum("exercise" in _tags(c) for c in _read(name).cells)
    student_checks = [c for c in executed if "both-paths" in _tags(c)]
    assert len(student_checks) == n_exercises, f"{name}: {len(student_checks)} of {n_exercises} exercises ran as a student"
    for cell in student_checks:
        assert FALLBACK_NOTE in _printed(cell), (
            f"{name}: this check did not fall back to the package's answer while the stub raises "
            f"NotImplementedError (wrap it in `with exercises.fallback(globals(), name=package_function):`):\n{cell.source}"
        )
    solution_checks = [executed[i + 1] for i, c in enumerate(executed) if "solution" in _tags(c)]
    for cell in solution_checks:
        assert FALLBACK_NOTE not in _printed(cell), f"{name}: the solution itself raised NotImplementedError:\n{cell.source}"


@pytest.mark.notebook
def test_quick_run_summary(quick_run):
    summary, out = quick_run
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert [r["notebook"] for r in on_disk["notebooks"]] == NAMES
    assert on_disk["profile"] == "quick" and on_disk["version"] == "both" and on_disk["parameters"]["OUTPUT_DIR"] == str(out.resolve() / "outputs")
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


_FALLBACK = re.compile(r"\bexercises\.fallback\(\s*globals\(\)\s*,\s*\w+\s*=|\bfallback\(\s*globals\(\)\s*,\s*\w+\s*=")


@pytest.mark.parametrize("name", NAMES)
def test_every_check_after_an_exercise_has_a_fallback(name):
    """A student's Run-All goes on past an unsolved exercise only if its check runs inside exercises.fallback."""
    code = [c for c in _read(name).cells if c.cell_type == "code"]
    missing = [i for i, c in enumerate(code) if "exercise" in _tags(c) and i + 2 < len(code) and not _FALLBACK.search(code[i + 2].source)]
    assert not missing, (
        f"{name}: the check after exercise code cell(s) {missing} has no `with exercises.fallback(globals(), "
        "name=package_function):`, so a student version stops there"
    )


def test_student_versions_generated_for_all(tmp_path):
    written = write_student_versions(NOTEBOOKS, tmp_path) if NOTEBOOKS else []
    assert [p.name for p in written] == NAMES
    for path in written:
        student = nbformat.read(path, as_version=4)
        original = _read(path.name)
        assert not [c for c in student.cells if {"solution", "instructor"} & set(_tags(c))], f"{path.name}: solution or note left"
        n_exercises = sum("exercise" in _tags(c) for c in original.cells)
        n_dropped = sum(bool({"solution", "instructor"} & set(_tags(c))) for c in original.cells)
        assert sum("exercise" in _tags(c) for c in student.cells) == n_exercises
        assert sum("exercise-check" in _tags(c) for c in student.cells) == n_exercises
        assert len(student.cells) == len(original.cells) - n_dropped
        assert student == make_student_version(original)


def _top_level_names(source: str) -> set[str]:
    """Names a cell defines at top level: functions, classes, assignments, imports."""
    import ast

    try:
        body = ast.parse(source).body
    except SyntaxError:
        return set()
    names = set()
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


@pytest.mark.parametrize("name", NAMES)
def test_solutions_define_only_what_their_stub_defines(name):
    """A student version has the stub, not the solution: a name only the solution defines is missing there,
    and the fallback rebinds only the stub's names, so a later cell using it would fail for students."""
    code = [c for c in _read(name).cells if c.cell_type == "code"]
    for i, cell in enumerate(code[:-1]):
        if "exercise" in _tags(cell) and "solution" in _tags(code[i + 1]):
            extra = _top_level_names(code[i + 1].source) - _top_level_names(cell.source)
            assert not extra, f"{name}: the solution after exercise code cell {i} defines {sorted(extra)}, its stub does not"


def _student_cases() -> list[str]:
    # The both-paths quick run covers every notebook's student path (see the module docstring);
    # the student versions themselves run on request.
    return NAMES if os.environ.get("MSTOOLKIT_TEST_ALL_STUDENT") else []


@pytest.mark.notebook
@pytest.mark.parametrize("name", _student_cases())
def test_student_version_runs_to_the_end(name, tmp_path, data_cache):
    with _data_cache(data_cache):
        summary = run_notebooks([ROOT / "notebooks" / name], profile="quick", out_dir=tmp_path / "build",
                                timeout=QUICK_TIMEOUT, html=False, version="student")
    record = summary["notebooks"][0]
    error = record["error"] or {}
    assert record["status"] == "ok", (
        f"{name}: the student version stopped in cell {error.get('cell_index')} {error.get('cell_tags')}:\n"
        f"{error.get('cell_source')}\n{error.get('traceback')}"
    )
    executed = nbformat.read(tmp_path / "build" / "notebooks" / name, as_version=4).cells
    assert not [c for c in executed if "instructor" in _tags(c)]
    checks = [c for c in executed if "exercise-check" in _tags(c)]
    assert checks and all(FALLBACK_NOTE in _printed(c) for c in checks), f"{name}: a check did not say it fell back"


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
