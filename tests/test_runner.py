"""The papermill runner, student versions and structure checks, on tiny throwaway notebooks."""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import sys
from pathlib import Path

import nbformat
import pytest

from mstoolkit.cli import main
from mstoolkit.course.runner import (
    FALLBACK_NOTE,
    REQUIRED_PARAMETERS,
    SETUP_CELL,
    check_notebook_structure,
    cli_run,
    make_both_paths_version,
    make_student_version,
    notebook_paths,
    repository_url,
    run_notebooks,
    setup_cell_source,
    write_student_versions,
)
from mstoolkit.data.io import MSToolkitInputError

PARAMETERS = 'PROFILE = "workshop"\nDATA_DIR = None\nOUTPUT_DIR = "outputs"\nDEVICE = "auto"\nSEED = 0\nDATASET = "phantom"'


def _code(source: str, *tags: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_code_cell(source, metadata={"tags": list(tags)} if tags else {})


def _write(path: Path, cells: list) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = cells
    nbformat.write(nb, path)
    return path


def _recorder(name: str) -> str:
    """A cell writing what the notebook saw (parameters, cwd) and appending its name to a run log."""
    return (
        "import json, os, pathlib\n"
        "out = pathlib.Path(OUTPUT_DIR)\n"
        f"(out / 'order.log').open('a').write('{name}\\n')\n"
        f"(out / '{name}.json').write_text(json.dumps(dict(PROFILE=PROFILE, OUTPUT_DIR=OUTPUT_DIR, DATA_DIR=DATA_DIR,\n"
        "    DATASET=DATASET, DEVICE=DEVICE, SEED=SEED, cwd=os.getcwd())))\n"
        "print('hello from the notebook')"
    )


@pytest.fixture(scope="module")
def failing_run(tmp_path_factory):
    """One CLI run over three notebooks given out of order; the middle one raises."""
    folder = tmp_path_factory.mktemp("nbs")
    _write(folder / "1_ok.ipynb", [_code(PARAMETERS, "parameters"), _code(_recorder("1_ok"))])
    _write(folder / "2_fail.ipynb", [
        _code(PARAMETERS, "parameters"), _code(_recorder("2_fail")),
        _code('raise ValueError("broken on purpose")', "exercise-check"), _code("never = 'reached'"),
    ])
    _write(folder / "10_after.ipynb", [_code(PARAMETERS, "parameters"), _code(_recorder("10_after"))])
    out = tmp_path_factory.mktemp("build")
    data = tmp_path_factory.mktemp("data")
    args = argparse.Namespace(
        notebooks=[str(folder / n) for n in ("10_after.ipynb", "2_fail.ipynb", "1_ok.ipynb")],
        profile="quick", out=str(out), timeout=120, data_dir=str(data), dataset="open_ms_data", no_html=False,
    )
    code = cli_run(args)
    return {"code": code, "out": out, "folder": folder, "data": data}


def _summary(run) -> dict:
    return json.loads((run["out"] / "summary.json").read_text())


def test_failing_notebook_makes_cli_exit_non_zero(failing_run):
    assert failing_run["code"] == 1


def test_traceback_of_failure_in_summary(failing_run):
    records = {r["notebook"]: r for r in _summary(failing_run)["notebooks"]}
    failed = records["2_fail.ipynb"]
    assert failed["status"] == "failed"
    assert failed["error"]["ename"] == "ValueError"
    assert failed["error"]["evalue"] == "broken on purpose"
    assert "ValueError" in failed["error"]["traceback"] and "\x1b[" not in failed["error"]["traceback"]
    assert failed["error"]["cell_source"] == 'raise ValueError("broken on purpose")'
    assert failed["error"]["cell_tags"] == ["exercise-check"]
    assert records["1_ok.ipynb"]["error"] is None


def test_run_continues_after_failure_in_numeric_order(failing_run):
    summary = _summary(failing_run)
    assert [r["notebook"] for r in summary["notebooks"]] == ["1_ok.ipynb", "2_fail.ipynb", "10_after.ipynb"]
    assert [r["status"] for r in summary["notebooks"]] == ["ok", "failed", "ok"]
    log = (failing_run["out"] / "outputs" / "order.log").read_text().split()
    assert log == ["1_ok", "2_fail", "10_after"]


def test_summary_totals_and_measurements(failing_run):
    summary = _summary(failing_run)
    assert summary["profile"] == "quick"
    assert summary["totals"] == {
        "notebooks": 3, "ok": 2, "failed": 1,
        "seconds": pytest.approx(sum(r["seconds"] for r in summary["notebooks"]), abs=0.05),
        "peak_memory_mb": max(r["peak_memory_mb"] for r in summary["notebooks"]),
    }
    for record in summary["notebooks"]:
        assert record["seconds"] > 0
        assert record["peak_memory_mb"] > 10  # a Python kernel holds tens of MB at least
    assert summary["versions"]["mstoolkit"] and summary["versions"]["papermill"]


def test_parameters_injected_and_cwd_is_notebook_folder(failing_run):
    seen = json.loads((failing_run["out"] / "outputs" / "1_ok.json").read_text())
    assert seen["PROFILE"] == "quick"
    assert seen["OUTPUT_DIR"] == str(failing_run["out"].resolve() / "outputs")
    assert seen["DATA_DIR"] == str(failing_run["data"].resolve())
    assert seen["DATASET"] == "open_ms_data"
    assert (seen["DEVICE"], seen["SEED"]) == ("auto", 0)
    assert Path(seen["cwd"]).resolve() == failing_run["folder"].resolve()


def test_executed_notebooks_and_html_written(failing_run):
    out = failing_run["out"]
    for name in ("1_ok", "2_fail", "10_after"):
        executed = nbformat.read(out / "notebooks" / f"{name}.ipynb", as_version=4)
        assert any(c.get("outputs") for c in executed.cells if c.cell_type == "code")
        assert "hello from the notebook" in (out / "html" / f"{name}.html").read_text()
    assert not list((out / "notebooks").glob(".*partial*")), "temporary files left behind"
    failed = nbformat.read(out / "notebooks" / "2_fail.ipynb", as_version=4)
    assert "broken on purpose" in json.dumps(failed.cells[-2].outputs)
    assert not failed.cells[-1].get("outputs")  # nothing after the failure ran


def test_cli_prints_table(tmp_path, capsys):
    nb = _write(tmp_path / "01_bad.ipynb", [_code(PARAMETERS, "parameters"), _code("1 / 0")])
    assert main(["notebooks", "run", str(nb), "--out", str(tmp_path / "b"), "--no-html"]) == 1
    printed = capsys.readouterr().out
    assert "01_bad.ipynb" in printed and "failed" in printed and "ZeroDivisionError" in printed
    assert not (tmp_path / "b" / "html").exists()


def test_summary_lists_sections_that_ran_on_real_data(tmp_path, capsys):
    """Sections are named by their heading; one whose real-data cell failed or never ran is not listed."""
    def markdown(text):
        return nbformat.v4.new_markdown_cell(text)

    nb = _write(tmp_path / "01_real.ipynb", [
        _code(PARAMETERS, "parameters"),
        markdown("## 1. Phantom only"), _code("x = 1"),
        markdown("## 2. A real scan\nsome prose"), _code("y = 2", "real-data"), _code("z = 3", "real-data"),
        markdown("### 2.1 Real, half broken"), _code("v = 5", "real-data"), _code("1 / 0", "real-data"),
        markdown("## 3. Real, never reached"), _code("w = 4", "real-data"),
    ])
    assert main(["notebooks", "run", str(nb), "--out", str(tmp_path / "b"), "--no-html"]) == 1
    record = json.loads((tmp_path / "b" / "summary.json").read_text())["notebooks"][0]
    assert record["real_data_sections"] == ["2. A real scan"]
    assert "on real data: 2. A real scan" in capsys.readouterr().out


def test_timeout_is_per_notebook_and_run_goes_on(tmp_path):
    # Each cell is short, together they exceed the notebook's timeout.
    slow = _write(tmp_path / "01_slow.ipynb", [_code(PARAMETERS, "parameters")] + [_code("import time; time.sleep(1.5)") for _ in range(12)])
    fine = _write(tmp_path / "02_fine.ipynb", [_code(PARAMETERS, "parameters"), _code("x = 1")])
    summary = run_notebooks([slow, fine], out_dir=tmp_path / "b", timeout=4, html=False)
    first, second = summary["notebooks"]
    assert first["status"] == "timeout" and "timeout of 4 s" in first["error"]["evalue"]
    assert first["error"]["cell_source"] == "import time; time.sleep(1.5)"
    assert first["seconds"] < 14  # all cells would take 18 s
    assert second["status"] == "ok"
    assert summary["totals"]["failed"] == 1


def test_unknown_profile_rejected(tmp_path):
    nb = _write(tmp_path / "01_x.ipynb", [_code(PARAMETERS, "parameters")])
    with pytest.raises(MSToolkitInputError, match=r"'profile' must be one of quick, workshop, full, got 'fast'"):
        run_notebooks([nb], profile="fast", out_dir=tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_unknown_profile_rejected_by_cli(capsys):
    with pytest.raises(SystemExit):
        main(["notebooks", "run", "--profile", "fast"])
    assert "invalid choice: 'fast'" in capsys.readouterr().err


def test_bad_timeout_and_missing_notebook(tmp_path):
    nb = _write(tmp_path / "01_x.ipynb", [_code(PARAMETERS, "parameters")])
    with pytest.raises(MSToolkitInputError, match=r"'timeout' must be a positive number of seconds, got 0"):
        run_notebooks([nb], timeout=0, out_dir=tmp_path / "b")
    with pytest.raises(FileNotFoundError, match=r"Notebook '.*99_missing.ipynb' does not exist"):
        run_notebooks([tmp_path / "99_missing.ipynb"], out_dir=tmp_path / "b")


def test_notebook_paths_numeric_order(tmp_path):
    for name in ("10_b.ipynb", "02_a.ipynb", "notes.ipynb", "01_c.ipynb"):
        _write(tmp_path / name, [])
    assert [p.name for p in notebook_paths(tmp_path)] == ["01_c.ipynb", "02_a.ipynb", "10_b.ipynb"]
    assert all(p.parent.name == "notebooks" for p in notebook_paths())


# --------------------------------------------------------------------------- student versions

FALLBACK_CHECK = (
    "from mstoolkit.course import exercises\n"
    "with exercises.fallback(globals(), double=lambda x: 2 * x):\n"
    '    exercises.check_function("double", double, lambda x: 2 * x, [(1,), (3,)])'
)


def _exercise_notebook(path: Path, check: str = FALLBACK_CHECK) -> Path:
    return _write(path, [
        _code(PARAMETERS, "parameters"),
        nbformat.v4.new_markdown_cell("Allow 5 minutes; the answer is 2 * x.", metadata={"tags": ["instructor"]}),
        _code('def double(x):\n    raise NotImplementedError("Exercise: return 2 * x")', "exercise"),
        _code("def double(x):\n    return 2 * x", "solution"),
        _code(check),
        _code("print('after the exercise:', double(21))"),
    ])


def _outputs(executed: Path) -> list[str]:
    """The printed text of each cell of an executed notebook (papermill's injected parameters left out)."""
    cells = [c for c in nbformat.read(executed, as_version=4).cells if "injected-parameters" not in c.metadata.get("tags", [])]
    return ["".join(o.get("text", "") for o in c.get("outputs", [])) for c in cells]


def test_student_version_removes_solutions_and_tags_checks(tmp_path):
    nb = nbformat.read(_exercise_notebook(tmp_path / "01_ex.ipynb"), as_version=4)
    nb.cells[2].outputs = [nbformat.v4.new_output("stream", text="stale")]
    student = make_student_version(nb)
    tags = [c.metadata.get("tags", []) for c in student.cells]
    assert tags == [["parameters"], ["exercise"], ["exercise-check"], []]  # solution and instructor note gone
    assert all(not c.outputs for c in student.cells)
    assert len(nb.cells) == 6 and nb.cells[2].outputs  # the original is untouched
    assert student.metadata["mstoolkit"]["version"] == "student"


def test_student_version_runs_on_with_the_fallback(tmp_path):
    source = _exercise_notebook(tmp_path / "01_ex.ipynb")
    assert main(["notebooks", "student", str(source), "--out", str(tmp_path / "student")]) == 0
    summary = run_notebooks([tmp_path / "student" / "01_ex.ipynb"], out_dir=tmp_path / "b", html=False)
    assert summary["notebooks"][0]["status"] == "ok"
    printed = _outputs(tmp_path / "b" / "notebooks" / "01_ex.ipynb")
    assert FALLBACK_NOTE in printed[2] and "double is not written yet" in printed[2]
    assert printed[3].strip() == "after the exercise: 42"  # the cells after it run on the package's answer


def test_student_version_without_fallback_stops_at_the_check(tmp_path):
    bare = 'from mstoolkit.course.exercises import check_function\ncheck_function("double", double, lambda x: 2 * x, [(1,)])'
    source = _exercise_notebook(tmp_path / "01_ex.ipynb", check=bare)
    record = run_notebooks([source], out_dir=tmp_path / "b", html=False, version="student")["notebooks"][0]
    assert record["status"] == "failed" and record["version"] == "student"
    assert record["error"]["ename"] == "NotImplementedError"
    assert record["error"]["cell_tags"] == ["exercise-check"]


def test_both_paths_version_runs_solution_then_stub(tmp_path):
    source = _exercise_notebook(tmp_path / "01_ex.ipynb")
    both = make_both_paths_version(nbformat.read(source, as_version=4))
    assert [c.metadata.get("tags", []) for c in both.cells] == [
        ["parameters"], ["solution"], [], ["exercise"], ["exercise-check", "both-paths"], []]
    summary = run_notebooks([source], out_dir=tmp_path / "b", html=False, version="both")
    assert summary["version"] == "both" and summary["notebooks"][0]["status"] == "ok"
    printed = _outputs(tmp_path / "b" / "notebooks" / "01_ex.ipynb")
    assert "all 2 tests pass" in printed[2] and FALLBACK_NOTE not in printed[2]  # the solution passes its check
    assert FALLBACK_NOTE in printed[4]  # the stub falls back
    assert printed[5].strip() == "after the exercise: 42"


def test_both_paths_version_finds_a_check_after_a_markdown_cell(tmp_path):
    nb = nbformat.read(_exercise_notebook(tmp_path / "01_ex.ipynb"), as_version=4)
    nb.cells.insert(4, nbformat.v4.new_markdown_cell("The check compares yours with the package's."))
    both = make_both_paths_version(nb)
    assert [c.metadata.get("tags", []) for c in both.cells] == [
        ["parameters"], ["solution"], [], [], ["exercise"], ["exercise-check", "both-paths"], []]
    assert both.cells[2].cell_type == "markdown"


def test_both_paths_version_catches_a_wrong_solution(tmp_path):
    source = _exercise_notebook(tmp_path / "01_ex.ipynb")
    nb = nbformat.read(source, as_version=4)
    nb.cells[3].source = "def double(x):\n    return x + 2"  # right for x = 2 only
    nbformat.write(nb, source)
    record = run_notebooks([source], out_dir=tmp_path / "b", html=False, version="both")["notebooks"][0]
    assert record["status"] == "failed" and record["error"]["ename"] == "ExerciseError"


def test_unknown_version_rejected(tmp_path):
    nb = _write(tmp_path / "01_x.ipynb", [_code(PARAMETERS, "parameters")])
    with pytest.raises(MSToolkitInputError, match=r"'version' must be one of original, student, both, got 'teacher'"):
        run_notebooks([nb], out_dir=tmp_path / "b", version="teacher")


# --------------------------------------------------------------------------- seconds per section

def test_section_timings_in_summary_and_printed(tmp_path, capsys):
    def markdown(text):
        return nbformat.v4.new_markdown_cell(text)

    nb = _write(tmp_path / "01_timed.ipynb", [
        markdown("# 01 · Title"), _code(PARAMETERS, "parameters"),
        markdown("## 1. Quick\nprose"), _code("x = 1"),
        markdown("### 1.1 A subsection stays in its section"), _code("import time; time.sleep(0.8)"),
        markdown("Prose mentioning ## not at the start"), _code("time.sleep(0.4)"),
        markdown("*Figure: the end of section 1.*\n\n## 2. Slow\nstarts inside a cell"), _code("time.sleep(1.6)"), _code("y = 2"),
        markdown("## Key points"),
    ])
    assert main(["notebooks", "run", str(nb), "--out", str(tmp_path / "b"), "--no-html"]) == 0
    record = json.loads((tmp_path / "b" / "summary.json").read_text())["notebooks"][0]
    sections = {s["section"]: s for s in record["sections"]}
    assert list(sections) == ["(introduction)", "1. Quick", "2. Slow", "Key points"]
    assert [s["cells"] for s in sections.values()] == [2, 3, 2, 0]  # introduction: parameters + papermill's injected cell
    assert 1.2 <= sections["1. Quick"]["seconds"] < sections["2. Slow"]["seconds"] < 4
    assert sections["Key points"]["seconds"] == 0
    assert sum(s["seconds"] for s in sections.values()) <= record["seconds"]
    capsys.readouterr()
    assert main(["notebooks", "timings", str(tmp_path / "b" / "summary.json")]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"1\.\d s  2\. Slow", printed) and "01_timed.ipynb  (ok" in printed


def test_section_timings_of_a_failed_run_count_cells_not_run_as_zero(tmp_path):
    nb = _write(tmp_path / "01_f.ipynb", [
        _code(PARAMETERS, "parameters"), nbformat.v4.new_markdown_cell("## 1. Breaks"), _code("1 / 0"),
        nbformat.v4.new_markdown_cell("## 2. Never reached"), _code("import time; time.sleep(5)"),
    ])
    record = run_notebooks([nb], out_dir=tmp_path / "b", html=False)["notebooks"][0]
    assert record["status"] == "failed"
    assert [s["section"] for s in record["sections"]] == ["(introduction)", "1. Breaks", "2. Never reached"]
    assert record["sections"][-1]["seconds"] == 0


def test_timings_cli_explains_a_missing_summary(tmp_path, capsys):
    assert main(["notebooks", "timings", str(tmp_path / "summary.json")]) != 0
    assert "run `mstoolkit notebooks run --out DIR` first" in capsys.readouterr().err


def test_write_student_versions_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_student_versions([tmp_path / "01_none.ipynb"], tmp_path / "out")


# --------------------------------------------------------------------------- structure checks

INTRO = (
    "# 07 · A toy lesson\n\n"
    "[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
    "(https://colab.research.google.com/github/mstoolkit/mstoolkit/blob/main/notebooks/07_toy.ipynb) "
    "[![Binder](https://mybinder.org/badge_logo.svg)](https://mybinder.org/v2/gh/mstoolkit/mstoolkit/main?urlpath=lab/tree/notebooks/07_toy.ipynb)\n\n"
    "**Learning objectives**\n- one\n\n**Prerequisites**: none\n\n**Estimated time: 15 minutes**"
)


def _good_cells() -> list:
    return [
        nbformat.v4.new_markdown_cell(INTRO),
        _code(setup_cell_source()),
        _code(PARAMETERS, "parameters"),
        _code('def double(x):\n    raise NotImplementedError("Exercise: return 2 * x")', "exercise"),
        _code("def double(x):\n    return 2 * x", "solution"),
        _code('check_function("double", double, lambda x: 2 * x, [(1,)])'),
    ]


def test_structure_of_a_good_notebook(tmp_path):
    assert check_notebook_structure(_write(tmp_path / "07_toy.ipynb", _good_cells())) == []


@pytest.mark.parametrize("change, problem", [
    (lambda c: c.__setitem__(2, _code(PARAMETERS.replace('DEVICE = "auto"\n', ""), "parameters")), "does not set DEVICE"),
    (lambda c: c.append(_code("SEED = 1", "parameters")), "exactly one cell must be tagged 'parameters', found 2"),
    (lambda c: c[2].metadata.__setitem__("tags", []), "exactly one cell must be tagged 'parameters', found 0"),
    (lambda c: c[5].__setitem__("execution_count", 3), "cell 5 has committed outputs"),
    (lambda c: c[5].outputs.append(nbformat.v4.new_output("stream", text="hi")), "cell 5 has committed outputs"),
    (lambda c: c.__setitem__(1, _code(setup_cell_source("https://example.org/fork"))), "REPOSITORY is 'https://example.org/fork'"),
    (lambda c: c.__setitem__(1, _code("import mstoolkit")), "not the standard setup cell"),
    (lambda c: c.pop(4), "not followed by a cell tagged 'solution'"),
    (lambda c: c.pop(5), "calls no check_\\* function"),
    (lambda c: c.__setitem__(3, _code("def double(x):\n    pass", "exercise")), "no stub raising NotImplementedError"),
    (lambda c: c[3].metadata.__setitem__("tags", []), "solution cell 4 does not follow"),
    (lambda c: c.__setitem__(0, nbformat.v4.new_markdown_cell(INTRO.replace("# 07 · ", "## "))), "markdown title '# 07"),
    (lambda c: c.__setitem__(0, nbformat.v4.new_markdown_cell(INTRO.replace("colab.research", "example"))), "Open in Colab badge"),
    (lambda c: c.__setitem__(0, nbformat.v4.new_markdown_cell(INTRO.replace("mybinder", "example"))), "Binder badge"),
    (lambda c: c.__setitem__(0, nbformat.v4.new_markdown_cell(INTRO.replace("Learning", "Some"))), "Learning objectives"),
    (lambda c: c.__setitem__(0, nbformat.v4.new_markdown_cell(INTRO.replace("15 minutes", "a while"))), "Estimated time"),
    (lambda c: c.append(_code("import lesson_helpers\nfrom lesson_helpers import f")), "imports 'lesson_helpers' from a file beside"),
])
def test_structure_problems_found(tmp_path, change, problem):
    (tmp_path / "lesson_helpers.py").write_text("f = 1\n")
    cells = _good_cells()
    change(cells)
    problems = check_notebook_structure(_write(tmp_path / "07_toy.ipynb", cells))
    assert any(re.search(problem, p) for p in problems), problems


def test_structure_of_unreadable_notebook(tmp_path):
    bad = tmp_path / "07_toy.ipynb"
    bad.write_text("{not json")
    assert check_notebook_structure(bad)[0].startswith("cannot read the notebook")


# --------------------------------------------------------------------------- repository URL and setup cell

def test_repository_url_from_pyproject(tmp_path):
    assert repository_url() == "https://github.com/mstoolkit/mstoolkit"
    toml = tmp_path / "pyproject.toml"
    toml.write_text('[project]\nname = "x"\n[project.urls]\nRepository = "https://example.org/x"\n')
    assert repository_url(toml) == "https://example.org/x"
    toml.write_text('[project]\nname = "x"\n')
    with pytest.raises(MSToolkitInputError, match=r"has no \[project.urls\] Repository entry"):
        repository_url(toml)
    with pytest.raises(FileNotFoundError, match="pyproject.toml not found"):
        repository_url(tmp_path / "missing" / "pyproject.toml")


def test_setup_cell_source_is_valid_python_with_url():
    source = setup_cell_source("https://example.org/x")
    ast.parse(source)
    assert 'REPOSITORY = "https://example.org/x"' in source and 'f"git+{REPOSITORY}"' in source
    assert "{repository}" in SETUP_CELL
    assert set(REQUIRED_PARAMETERS) == {"PROFILE", "DATA_DIR", "OUTPUT_DIR", "DEVICE", "SEED"}


def test_kernel_is_this_interpreter_and_draws_inline(tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTER_PATH", "/somewhere")
    monkeypatch.setenv("MPLBACKEND", "Agg")  # as a test suite might set it: figures must still be kept
    nb = _write(tmp_path / "01_x.ipynb", [
        _code(PARAMETERS, "parameters"),
        _code("import sys; print(sys.executable)"),
        _code("import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.title('t')\nplt.show()"),
    ])
    summary = run_notebooks([nb], out_dir=tmp_path / "b", html=False)
    assert summary["notebooks"][0]["status"] == "ok"
    assert (os.environ["JUPYTER_PATH"], os.environ["MPLBACKEND"]) == ("/somewhere", "Agg")  # restored
    executed = nbformat.read(tmp_path / "b" / "notebooks" / "01_x.ipynb", as_version=4)
    assert executed.cells[-2].outputs[0]["text"].strip() == sys.executable
    assert any("image/png" in o.get("data", {}) for o in executed.cells[-1].outputs)


def test_peak_memory_counts_kernel_children(tmp_path):
    # The kernel starts a child holding ~300 MB; the kernel itself stays small.
    child = "import numpy, time; a = numpy.ones(300 * 2**20 // 8); time.sleep(1)"
    nb = _write(tmp_path / "01_mem.ipynb", [
        _code(PARAMETERS, "parameters"),
        _code(f"import subprocess, sys\nsubprocess.run([sys.executable, '-c', {child!r}], check=True)"),
    ])
    record = run_notebooks([nb], out_dir=tmp_path / "b", html=False)["notebooks"][0]
    assert record["status"] == "ok"
    assert 300 < record["peak_memory_mb"] < 1000


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="the high-water mark is read from /proc")
def test_peak_memory_remembers_freed_spikes():
    # A spike freed before the next poll is what kills a Binder kernel: the peak must still show it.
    import numpy as np
    import psutil

    from mstoolkit.course.runner import _resident_peak

    process = psutil.Process()
    spike = np.ones(400 * 2**20 // 8)
    del spike
    assert _resident_peak(process) - process.memory_info().rss > 300 * 2**20


def test_no_notebooks_found(tmp_path, monkeypatch):
    monkeypatch.setattr("mstoolkit.course.runner.notebook_paths", lambda folder=None: [])
    with pytest.raises(MSToolkitInputError, match=r"No notebooks NN_\*.ipynb found in notebooks/"):
        run_notebooks(out_dir=tmp_path)
    with pytest.raises(MSToolkitInputError, match=r"No notebooks NN_\*.ipynb found"):
        write_student_versions(None, tmp_path)
