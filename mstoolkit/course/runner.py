"""Run the notebooks end to end with papermill, check their structure, make student versions.

``mstoolkit notebooks run`` is the course's reproducibility check: it executes
every notebook in numeric order (01, 02, …) with the parameters of a run
profile and writes, under the output folder, ``notebooks/`` (executed copies),
``html/``, ``outputs/`` (the ``OUTPUT_DIR`` all notebooks share, so notebook
03's model reaches 04–06) and ``summary.json`` (status, seconds, peak memory
and error of each notebook). A failing notebook does not stop the run.
``mstoolkit notebooks student`` writes student versions (solutions removed).
Each record of the summary also holds ``sections``: seconds per section (a Markdown
cell starting with ``## ``), from papermill's per-cell timings;
``mstoolkit notebooks timings build/summary.json`` prints them.
``run_notebooks(..., version="student")`` runs the student versions;
``version="both"`` runs each exercise twice in one pass: the solution with its check,
then the stub with its check, so the fallback note appears and the rest of the
notebook runs on the package's answer, as a student's Run-All does.
Introduced in notebook 01; the instructor guide explains the summary.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import datetime as _dt
import json
import logging
import os
import re
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Iterator
from unittest import mock

from tqdm.auto import tqdm

from mstoolkit.course.exercises import PROFILES
from mstoolkit.data.io import MSToolkitInputError, write_atomic

__all__ = [
    "SETUP_CELL", "REQUIRED_PARAMETERS", "notebook_paths", "repository_url", "setup_cell_source", "run_notebooks",
    "cli_run", "make_student_version", "write_student_versions", "cli_student", "check_notebook_structure",
    "REAL_DATA_TAG", "real_data_sections", "section_timings", "print_section_timings", "cli_timings",
    "make_both_paths_version", "NOTEBOOK_VERSIONS", "FALLBACK_NOTE",
]

#: What ``run_notebooks(version=...)`` executes: the notebook as written, its student version, or both paths.
NOTEBOOK_VERSIONS = ("original", "student", "both")

#: Printed by :func:`mstoolkit.course.exercises.fallback` when a stub is not written yet.
FALLBACK_NOTE = "not written yet"

#: Names every notebook's ``parameters`` cell must assign.
REQUIRED_PARAMETERS = ("PROFILE", "DATA_DIR", "OUTPUT_DIR", "DEVICE", "SEED")

#: The first code cell of every notebook; ``{repository}`` is pyproject's [project.urls] Repository.
SETUP_CELL = '''\
# Setup: on Colab, install mstoolkit when it is missing; elsewhere `make run` installed it.
import importlib.util
import subprocess
import sys

if importlib.util.find_spec("mstoolkit") is None:
    if "google.colab" in sys.modules:
        REPOSITORY = "{repository}"  # = [project.urls] Repository in pyproject.toml
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", f"git+{{REPOSITORY}}"], check=True)
    else:
        raise ModuleNotFoundError("mstoolkit is not installed: run `make run` in the repository, or `pip install -e .`")

from mstoolkit.doctor import describe_runtime

describe_runtime()  # one line: versions, GPU or CPU, Colab/Binder/local'''

_NUMBERED = re.compile(r"^(\d+)_.*\.ipynb$")
_CHECK_CALL = re.compile(r"\bcheck_\w*\s*\(")  # a call of a check_* feedback function
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_REPO_ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- finding notebooks

def _order_key(path: Path) -> tuple[int, str]:
    match = _NUMBERED.match(path.name)
    return (int(match.group(1)) if match else sys.maxsize, path.name)


def notebook_paths(folder: str | os.PathLike | None = None) -> list[Path]:
    """The course notebooks ``NN_*.ipynb`` of ``folder`` (default: the repository's ``notebooks/``), in order."""
    if folder is None:  # the repository's notebooks, else (installed package) those of the current folder
        folder = _REPO_ROOT / "notebooks" if (_REPO_ROOT / "notebooks").is_dir() else Path("notebooks")
    return sorted((p for p in Path(folder).glob("*.ipynb") if _NUMBERED.match(p.name)), key=_order_key)


def _existing_notebooks(paths: list[str | os.PathLike] | None) -> list[Path]:
    notebooks = [Path(p).resolve() for p in paths] if paths else notebook_paths()
    if not notebooks:
        raise MSToolkitInputError("No notebooks NN_*.ipynb found in notebooks/; pass their paths.")
    missing = [str(p) for p in notebooks if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"Notebook '{missing[0]}' does not exist.")
    return notebooks


def _find_pyproject(start: Path | None = None) -> Path | None:
    for parent in ([start, *start.parents] if start is not None else []) + [_REPO_ROOT]:
        if (parent / "pyproject.toml").is_file():
            return parent / "pyproject.toml"
    return None


def repository_url(pyproject: str | os.PathLike | None = None) -> str:
    """The ``[project.urls] Repository`` of pyproject.toml: the one place the repository URL is defined.

    >>> repository_url().startswith("https://")
    True
    """
    path = Path(pyproject) if pyproject is not None else _find_pyproject()
    if path is None or not path.is_file():
        raise FileNotFoundError(f"pyproject.toml not found (looked for {path or _REPO_ROOT / 'pyproject.toml'}).")
    text = path.read_text(encoding="utf-8")
    try:
        import tomllib  # Python ≥ 3.11

        url = tomllib.loads(text).get("project", {}).get("urls", {}).get("Repository")
    except ModuleNotFoundError:  # Python 3.10: the one line we need is simple enough
        found = re.search(r'^\s*Repository\s*=\s*"([^"]+)"', text, flags=re.MULTILINE)
        url = found.group(1) if found else None
    if not url:
        raise MSToolkitInputError(f"{path} has no [project.urls] Repository entry; add one.")
    return url


def setup_cell_source(repository: str | None = None) -> str:
    """The standard setup cell with the repository URL filled in (default: from pyproject.toml)."""
    return SETUP_CELL.format(repository=repository or repository_url())


# --------------------------------------------------------------------------- running

def _resident_peak(process) -> int:
    """The process's own peak resident memory (Linux ``VmHWM``), else its current resident memory.

    Polling the current value misses spikes shorter than the polling interval; the
    high-water mark does not, and a spike is what gets a Binder kernel killed.
    """
    try:
        with open(f"/proc/{process.pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return process.memory_info().rss


def _kernel_rss() -> int:
    """Summed peak resident memory of the kernel (this process's child running ``ipykernel_launcher``) and all it starts."""
    import psutil

    total = 0
    for child in psutil.Process(os.getpid()).children():
        try:  # other children (a Jupyter server started by a test, say) are not counted
            if "ipykernel_launcher" in " ".join(child.cmdline()):
                total += sum(_resident_peak(p) for p in [child, *child.children(recursive=True)])
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue  # a process that just ended
    return total


@contextlib.contextmanager
def _peak_memory(interval: float = 0.2) -> Iterator[dict[str, int]]:
    """Poll :func:`_kernel_rss` in a thread while the block runs; the peak lands in ``result["bytes"]``."""
    result, stop = {"bytes": 0}, threading.Event()

    def poll() -> None:
        while not stop.is_set():
            result["bytes"] = max(result["bytes"], _kernel_rss())
            stop.wait(interval)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        stop.set()
        thread.join()


def _write_file(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, text)


def _kernel_dir(out: Path) -> Path:
    """A kernelspec named ``python3`` that starts the interpreter running this code."""
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"], "language": "python",
            "display_name": "Python 3"}
    _write_file(out / ".jupyter" / "kernels" / "python3" / "kernel.json", json.dumps(spec, indent=1))
    return out / ".jupyter"


def _versions() -> dict[str, str]:
    from importlib import metadata

    from mstoolkit import __version__

    found = {"mstoolkit": __version__, "python": sys.version.split()[0]}
    for name in ("papermill", "nbclient", "numpy", "torch", "monai"):
        with contextlib.suppress(metadata.PackageNotFoundError):  # an optional one missing is no error
            found[name] = metadata.version(name)
    return found


def _error_details(executed: Path, exc: BaseException) -> dict[str, Any]:
    """ename, evalue, failing cell (index, tags, source) and traceback text of a failed run."""
    # Without a cell traceback (timeout, dead kernel) the exception's message says it; nbclient's frames would not.
    lines = getattr(exc, "traceback", None) or ["".join(traceback.format_exception_only(exc)).rstrip()]
    details: dict[str, Any] = {
        "ename": getattr(exc, "ename", type(exc).__name__),
        "evalue": str(getattr(exc, "evalue", exc)).strip(),
        "cell_index": getattr(exc, "cell_index", None),
        "cell_tags": [],
        "cell_source": getattr(exc, "source", None),
        "traceback": _ANSI.sub("", "\n".join(lines)),
    }
    if executed.exists():  # papermill records the failing cell in its metadata
        import nbformat

        nb = nbformat.read(executed, as_version=4)
        started = [(i, c) for i, c in enumerate(nb.cells) if c.get("metadata", {}).get("papermill", {}).get("start_time")]
        failed = [(i, c) for i, c in started if c.metadata.papermill.get("exception")]
        if failed or started:  # the cell that raised, else (timeout, dead kernel) the last one started
            index, cell = (failed or started)[0 if failed else -1]
            details.update(cell_index=index, cell_tags=_tags(cell), cell_source=cell.source)
    return details


def _export_html(executed: Path, html: Path) -> str | None:
    """Write the HTML version; return an error message instead of failing the run."""
    import nbformat
    from nbconvert import HTMLExporter

    try:
        _write_file(html, HTMLExporter().from_notebook_node(nbformat.read(executed, as_version=4))[0])
    except Exception as err:  # an export problem must not hide the notebook's own status
        logging.getLogger(__name__).warning("HTML export of %s failed: %s", executed.name, err)
        return f"{type(err).__name__}: {err}"
    return None


#: Cell tag of the code cells that work on real images (the shipped open_ms_data sample).
REAL_DATA_TAG = "real-data"


def real_data_sections(executed: str | os.PathLike) -> list[str]:
    """The sections of an executed notebook whose ``real-data`` cells all ran without an error.

    A section is named by the last Markdown heading above its cells. The run summary lists
    them, so a reader sees which results came from real scans rather than the phantom.
    """
    import nbformat

    nb = nbformat.read(str(executed), as_version=4)
    heading, ran, failed = "(before the first heading)", [], set()
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            titles = [line.lstrip("#").strip() for line in cell.source.splitlines() if line.startswith("#")]
            heading = titles[-1] if titles else heading
        elif REAL_DATA_TAG in _tags(cell):
            errored = any(output.get("output_type") == "error" for output in cell.get("outputs", []))
            if cell.get("execution_count") is None or errored:
                failed.add(heading)
            elif heading not in ran:
                ran.append(heading)
    return [section for section in ran if section not in failed]


_SECTION = re.compile(r"^##\s+(.*\S)")


def section_timings(executed: str | os.PathLike) -> list[dict[str, Any]]:
    """Seconds per section of an executed notebook, from papermill's per-cell ``duration``.

    A section starts at a Markdown cell with a line starting with ``## `` (the last such line
    names it, when a cell holds the end of one section and the start of the next) and runs to
    the next one; cells before the first are ``"(introduction)"``. Cells that did not run (after
    a failure) count 0 s. Returns ``[{"section", "seconds", "cells"}, ...]`` in notebook order.
    """
    import nbformat

    nb = nbformat.read(str(executed), as_version=4)
    sections = [{"section": "(introduction)", "seconds": 0.0, "cells": 0}]
    for cell in nb.cells:
        headings = [m.group(1) for m in map(_SECTION.match, cell.source.splitlines()) if m] if cell.cell_type == "markdown" else []
        if headings:
            sections.append({"section": headings[-1], "seconds": 0.0, "cells": 0})
        elif cell.cell_type == "code":
            duration = cell.get("metadata", {}).get("papermill", {}).get("duration")
            sections[-1]["seconds"] += float(duration or 0.0)
            sections[-1]["cells"] += 1
    for section in sections:
        section["seconds"] = round(section["seconds"], 2)
    return [s for s in sections if s["cells"] or s["section"] != "(introduction)"]


def print_section_timings(summary: dict[str, Any]) -> None:
    """Print each notebook's seconds per section (the ``sections`` of a run summary)."""
    print(f"profile {summary.get('profile')}: seconds per section (kernel start and HTML export not included)")
    for record in summary["notebooks"]:
        sections = record.get("sections") or []
        print(f"{record['notebook']}  ({record['status']}, {record['seconds']:.0f} s in all)")
        for section in sections:
            print(f"  {section['seconds']:>8.1f} s  {section['section']}")
        if not sections:
            print("  (no per-cell timings: the notebook did not run)")


def cli_timings(args) -> int:
    """``mstoolkit notebooks timings build/summary.json``: the per-section table of a run."""
    path = Path(args.summary)
    if not path.is_file():
        raise FileNotFoundError(f"'{path}' does not exist: run `mstoolkit notebooks run --out DIR` first, then pass DIR/summary.json.")
    print_section_timings(json.loads(path.read_text(encoding="utf-8")))
    return 0


def _prepared(path: Path, version: str) -> Any:
    """The notebook to execute: the file itself, or its student or both-paths version (a NotebookNode)."""
    if version == "original":
        return str(path)
    import nbformat

    nb = nbformat.read(path, as_version=4)
    return make_student_version(nb) if version == "student" else make_both_paths_version(nb)


def _run_one(path: Path, out: Path, parameters: dict[str, Any], timeout: float, html: bool,
             version: str = "original") -> dict[str, Any]:
    import papermill
    from nbclient.exceptions import CellTimeoutError
    from papermill.exceptions import PapermillExecutionError

    executed = out / "notebooks" / path.name
    # papermill writes this file cell by cell (kept, with the error, when a cell fails); renamed once the run ends
    partial = executed.with_name(f".{path.stem}.partial.ipynb")
    partial.parent.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {"notebook": path.name, "path": str(path), "version": version, "status": "ok", "error": None}
    start = time.monotonic()
    deadline = start + timeout  # per notebook: its cells share it
    with _peak_memory() as memory:
        try:
            papermill.execute_notebook(
                _prepared(path, version), str(partial), parameters=parameters, kernel_name="python3", language="python",
                cwd=str(path.parent), progress_bar=False, start_timeout=120,
                timeout_func=lambda cell: max(1, int(deadline - time.monotonic())),
            )
        except PapermillExecutionError as err:
            record.update(status="failed", error=_error_details(partial, err))
        except CellTimeoutError as err:
            record.update(status="timeout", error=_error_details(partial, err))
            record["error"]["evalue"] = f"notebook exceeded its timeout of {timeout:g} s"
        except (RuntimeError, TimeoutError) as err:  # DeadKernelError (out of memory?), or a kernel that did not start
            record.update(status="failed", error=_error_details(partial, err))
    record["seconds"] = round(time.monotonic() - start, 2)
    record["peak_memory_mb"] = round(memory["bytes"] / 2**20, 1)
    if partial.exists():
        os.replace(partial, executed)
        record["executed"] = str(executed.relative_to(out))
        record["real_data_sections"] = real_data_sections(executed)
        record["sections"] = section_timings(executed)
        if html:
            target = out / "html" / f"{path.stem}.html"
            record["html_error"] = _export_html(executed, target)
            record["html"] = None if record["html_error"] else str(target.relative_to(out))
    return record


def run_notebooks(
    paths: list[str | os.PathLike] | None = None,
    *,
    profile: str = "quick",
    out_dir: str | os.PathLike = "build",
    timeout: float = 1800,
    parameters: dict[str, Any] | None = None,
    html: bool = True,
    version: str = "original",
) -> dict[str, Any]:
    """Execute notebooks in numeric order with papermill and write executed copies, HTML and summary.json.

    Parameters
    ----------
    paths
        Notebook files; default: every ``notebooks/NN_*.ipynb`` of the repository.
    profile
        ``"quick"`` (CI smoke run), ``"workshop"`` (2-core CPU) or ``"full"`` (GPU).
    out_dir
        Output folder: ``notebooks/``, ``html/``, ``outputs/`` (the shared OUTPUT_DIR) and ``summary.json``.
    timeout
        Seconds allowed per notebook.
    parameters
        Extra or overriding notebook parameters, e.g. ``{"DATA_DIR": "...", "DATASET": "open_ms_data"}``.
    html
        Also export each executed notebook as HTML.
    version
        ``"original"`` (the notebooks as written), ``"student"`` (solutions and instructor
        notes removed: every exercise runs on its fallback) or ``"both"`` (each exercise's
        solution and check, then its stub and check: :func:`make_both_paths_version`).

    Returns
    -------
    dict
        The summary also written to ``out_dir/summary.json``. A failing notebook is
        recorded (status, ename, evalue, traceback) and the run goes on.
    """
    if profile not in PROFILES:
        raise MSToolkitInputError(f"'profile' must be one of {', '.join(PROFILES)}, got {profile!r}.")
    if not timeout or timeout <= 0:
        raise MSToolkitInputError(f"'timeout' must be a positive number of seconds, got {timeout!r}.")
    if version not in NOTEBOOK_VERSIONS:
        raise MSToolkitInputError(f"'version' must be one of {', '.join(NOTEBOOK_VERSIONS)}, got {version!r}.")
    notebooks = sorted(_existing_notebooks(paths), key=_order_key)

    out = Path(out_dir).resolve()
    run_parameters = {"PROFILE": profile, "OUTPUT_DIR": str(out / "outputs"), "DEVICE": "auto", "SEED": 0}
    run_parameters.update(parameters or {})
    Path(run_parameters["OUTPUT_DIR"]).mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"profile": profile, "version": version, "parameters": run_parameters, "versions": _versions(),
                               "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                               "kernel_python": sys.executable, "notebooks": []}
    # Kernel "python3" = this interpreter, whatever kernelspecs exist; figures inline even under MPLBACKEND=Agg.
    kernels = os.pathsep.join(filter(None, [str(_kernel_dir(out)), os.environ.get("JUPYTER_PATH")]))
    with mock.patch.dict(os.environ, {"JUPYTER_PATH": kernels, "MPLBACKEND": "module://matplotlib_inline.backend_inline"}):
        bar = tqdm(notebooks, desc=f"notebooks ({profile})", unit="notebook")
        for nb_path in bar:
            bar.set_postfix_str(nb_path.name)
            summary["notebooks"].append(_run_one(nb_path, out, run_parameters, timeout, html, version))
            summary["totals"] = _totals(summary["notebooks"])
            _write_file(out / "summary.json", json.dumps(summary, indent=2))  # progress is visible
    return summary


def _totals(records: list[dict[str, Any]]) -> dict[str, Any]:
    ok = sum(r["status"] == "ok" for r in records)
    return {"notebooks": len(records), "ok": ok, "failed": len(records) - ok,
            "seconds": round(sum(r["seconds"] for r in records), 2),
            "peak_memory_mb": max((r["peak_memory_mb"] for r in records), default=0.0)}


def _print_table(summary: dict[str, Any]) -> None:
    print(f"{'notebook':<40} {'status':<8} {'minutes':>8} {'peak MB':>8}")
    for r in summary["notebooks"]:
        print(f"{r['notebook']:<40} {r['status']:<8} {r['seconds'] / 60:>8.2f} {r['peak_memory_mb']:>8.0f}")
        if r["error"]:
            print(f"    {r['error']['ename']}: {r['error']['evalue'][:200]}")
        for section in r.get("real_data_sections", []):
            print(f"    on real data: {section}")
    t = summary["totals"]
    print(f"{t['ok']}/{t['notebooks']} ok in {t['seconds'] / 60:.1f} min, peak {t['peak_memory_mb']:.0f} MB, "
          f"profile {summary['profile']}")


def cli_run(args) -> int:
    """``mstoolkit notebooks run``: run, print a table, exit 1 if any notebook failed."""
    parameters: dict[str, Any] = {"DATASET": args.dataset} if getattr(args, "dataset", None) else {}
    if getattr(args, "data_dir", None):
        parameters["DATA_DIR"] = str(Path(args.data_dir).resolve())
    summary = run_notebooks(args.notebooks or None, profile=args.profile, out_dir=args.out, parameters=parameters,
                            timeout=getattr(args, "timeout", 1800), html=not getattr(args, "no_html", False),
                            version=getattr(args, "version", "original"))
    _print_table(summary)
    print(f"summary: {Path(args.out).resolve() / 'summary.json'}")
    return 1 if summary["totals"]["failed"] else 0


# --------------------------------------------------------------------------- student versions

def _tags(cell: Any) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def make_student_version(nb: Any) -> Any:
    """A copy of a notebook without its ``solution`` and ``instructor`` cells, and without outputs.

    ``instructor`` cells hold notes for whoever teaches the session (timing, pitfalls,
    answers to the thinking questions). ``exercise`` stubs stay; the cell that calls the ``check_*`` function after
    each exercise is tagged ``exercise-check``: it runs inside ``exercises.fallback``, so while a
    stub raises ``NotImplementedError`` the run goes on with the package's answer and says so.
    """
    student = copy.deepcopy(nb)
    cells = [c for c in student.cells if not {"solution", "instructor"} & set(_tags(c))]
    after_exercise = False
    for cell in cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
            if after_exercise and _CHECK_CALL.search(cell.source):
                cell.metadata["tags"] = _tags(cell) + ["exercise-check"]
            after_exercise = "exercise" in _tags(cell)
    student.cells = cells
    student.metadata.setdefault("mstoolkit", {})["version"] = "student"
    return student


def make_both_paths_version(nb: Any) -> Any:
    """A copy in which each exercise runs twice: as the solution, then as the student's stub.

    Each ``exercise`` / ``solution`` / check triple becomes solution → check → stub → check
    (Markdown cells between the solution and its check, e.g. a sentence on what the check does,
    stay before the first check):
    the first check proves the solution passes; the second sees the stub's
    ``NotImplementedError``, so its :func:`~mstoolkit.course.exercises.fallback` prints its
    note and rebinds the names to the package's answer, and every later cell runs on that
    answer, as in a student's Run-All. Instructor notes are dropped, as in the student version.
    One papermill run thus checks what a run of the notebook and one of its student version
    would check separately (the CI's quick run uses it). The stub and its second check are
    tagged ``exercise`` and ``exercise-check``; the repeated check is also tagged ``both-paths``.
    """
    both = copy.deepcopy(nb)
    cells = [c for c in both.cells if "instructor" not in _tags(c)]
    result, k = [], 0
    while k < len(cells):
        cell = cells[k]
        # The check is the first code cell after the solution (the structure test's rule too).
        check_at = next((j for j in range(k + 2, len(cells)) if cells[j].cell_type == "code"), None)
        if ("exercise" in _tags(cell) and k + 1 < len(cells) and "solution" in _tags(cells[k + 1])
                and check_at is not None and _CHECK_CALL.search(cells[check_at].source)):
            solution, between, check = cells[k + 1], cells[k + 2 : check_at], cells[check_at]
            again = copy.deepcopy(check)
            again.metadata["tags"] = _tags(check) + ["exercise-check", "both-paths"]
            if "id" in again:  # cell ids must stay unique (nbformat ≥ 4.5)
                again["id"] = f"{check['id'][:20]}-again"
            result += [solution, *between, check, cell, again]
            k = check_at + 1
        else:
            result.append(cell)
            k += 1
    for cell in result:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    both.cells = result
    both.metadata.setdefault("mstoolkit", {})["version"] = "both"
    return both


def write_student_versions(paths: list[str | os.PathLike] | None, out_dir: str | os.PathLike) -> list[Path]:
    """Write the student version of each notebook (default: all) into ``out_dir``; return the paths."""
    import nbformat

    notebooks = _existing_notebooks(paths)
    for path in notebooks:
        _write_file(Path(out_dir) / path.name, nbformat.writes(make_student_version(nbformat.read(path, as_version=4))))
    return [Path(out_dir) / p.name for p in notebooks]


def cli_student(args) -> int:
    """``mstoolkit notebooks student --out DIR``."""
    written = write_student_versions(args.notebooks or None, args.out)
    print(f"wrote {len(written)} student notebooks (solutions removed) to {Path(args.out).resolve()}")
    return 0


# --------------------------------------------------------------------------- structure checks

def _assigned_names(source: str) -> set[str]:
    try:
        nodes = list(ast.walk(ast.parse(source)))
    except SyntaxError:
        return set()
    targets = [t for n in nodes if isinstance(n, ast.Assign) for t in n.targets]
    return {t.id for t in targets + [n.target for n in nodes if isinstance(n, ast.AnnAssign)] if isinstance(t, ast.Name)}


def _sibling_imports(source: str, folder: Path) -> list[str]:
    """Modules imported by a cell that exist only as files beside the notebook (Colab would not have them)."""
    code = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!")))
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return []
    modules = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    modules += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module and n.level == 0]
    tops = {m.split(".")[0] for m in modules}
    return sorted(m for m in tops if (folder / f"{m}.py").exists() or (folder / m / "__init__.py").exists())


def _check_intro(path: Path, markdown: str) -> list[str]:
    problems = []
    if not re.search(rf"^#\s+{re.escape(path.name[:2])}\b.*\S", markdown, flags=re.MULTILINE):
        problems.append(f"the first cell must be a markdown title '# {path.name[:2]} · Title'")
    for what, pattern in [
        ("an Open in Colab badge", rf"colab\.research\.google\.com/github/\S+/notebooks/{re.escape(path.name)}"),
        ("a Binder badge", rf"mybinder\.org/\S+{re.escape(path.name)}"),
        ("'Learning objectives'", r"learning objectives"),
        ("'Prerequisites'", r"prerequisites"),
        ("'Estimated time: N minutes'", r"estimated time\W*\d+\s*min"),
    ]:
        if not re.search(pattern, markdown, flags=re.IGNORECASE):
            problems.append(f"the introduction (markdown before the setup cell) lacks {what}")
    return problems


def _check_setup_cell(path: Path, source: str) -> list[str]:
    pyproject = _find_pyproject(path.resolve().parent)
    if pyproject is None:  # a notebook outside any project: nothing to compare the URL with
        return []
    url = re.search(r'REPOSITORY\s*=\s*"([^"]*)"', source)
    if url and url.group(1) != repository_url(pyproject):
        return [f"setup cell REPOSITORY is {url.group(1)!r} but {pyproject} says {repository_url(pyproject)!r}"]
    if source.strip() != setup_cell_source(repository_url(pyproject)).strip():
        return ["the first code cell is not the standard setup cell (mstoolkit.course.runner.SETUP_CELL)"]
    return []


def _check_exercises(code: list[tuple[int, Any]]) -> list[str]:
    """Each exercise stub, then its solution, then a ``check_*`` call (consecutive code cells)."""
    problems = []
    for k, (i, cell) in enumerate(code):
        after = [c for _, c in code[k + 1 : k + 3]]
        if "exercise" in _tags(cell):
            if "NotImplementedError" not in cell.source:
                problems.append(f"exercise cell {i} has no stub raising NotImplementedError")
            if not after or "solution" not in _tags(after[0]):
                problems.append(f"exercise cell {i} is not followed by a cell tagged 'solution'")
            elif len(after) < 2 or not _CHECK_CALL.search(after[1].source):
                problems.append(f"exercise cell {i}: the cell after its solution calls no check_* function")
        if "solution" in _tags(cell) and (k == 0 or "exercise" not in _tags(code[k - 1][1])):
            problems.append(f"solution cell {i} does not follow a cell tagged 'exercise'")
    return problems


def check_notebook_structure(path: str | os.PathLike) -> list[str]:
    """Problems with a notebook's structure (empty list: none). The test suite runs this on every notebook.

    Checks: the introduction (title, Colab and Binder badges, learning
    objectives, prerequisites, estimated minutes); the standard setup cell
    (:data:`SETUP_CELL`) as the first code cell with pyproject's repository URL;
    exactly one ``parameters`` cell assigning :data:`REQUIRED_PARAMETERS`; no
    committed outputs or execution counts; each ``exercise`` cell followed by a
    ``solution`` cell and a cell calling a ``check_*`` function; no imports of
    files beside the notebook (Colab would not have them). Cells are numbered from 0.
    """
    import nbformat

    path = Path(path)
    try:
        cells = nbformat.read(path, as_version=4).cells
    except Exception as err:  # unreadable JSON, wrong format …
        return [f"cannot read the notebook: {type(err).__name__}: {err}"]
    code = [(i, c) for i, c in enumerate(cells) if c.cell_type == "code"]
    first_code = code[0][0] if code else len(cells)
    problems = _check_intro(path, "\n".join(c.source for c in cells[:first_code] if c.cell_type == "markdown"))
    if not code:
        return problems + ["the notebook has no code cells"]
    problems += _check_setup_cell(path, code[0][1].source)

    parameter_cells = [c for _, c in code if "parameters" in _tags(c)]
    if len(parameter_cells) != 1:
        problems.append(f"exactly one cell must be tagged 'parameters', found {len(parameter_cells)}")
    missing = [n for n in REQUIRED_PARAMETERS if parameter_cells and n not in _assigned_names(parameter_cells[0].source)]
    if missing:
        problems.append(f"the parameters cell does not set {', '.join(missing)}")
    for i, cell in code:
        if cell.get("outputs") or cell.get("execution_count") is not None:
            problems.append(f"cell {i} has committed outputs or an execution count; clear them")
        for module in _sibling_imports(cell.source, path.parent):
            problems.append(f"cell {i} imports '{module}' from a file beside the notebook (missing on Colab)")
    return problems + _check_exercises(code)
