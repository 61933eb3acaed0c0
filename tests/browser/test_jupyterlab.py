"""Real-browser checks: JupyterLab in Debian's chromium, driven by Playwright.

Run with ``make browser-test`` (it installs chromium with apt-get when missing).
What a student does is replayed: open notebook 01, run all cells, move the slice
slider with the keyboard, and see the picture change; the 3D viewer must have a
canvas; no JavaScript errors. Screenshots go to ``build/browser/``. A second test
opens every executed notebook's HTML export (from ``mstoolkit notebooks run``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "build" / "browser"
CHROMIUM = os.environ.get("MSTOOLKIT_CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
# Flags for a sandboxed, offline machine: no background network, software WebGL.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--use-gl=angle", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
    "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update",
    "--disable-sync",
]
# Console messages that come from the offline sandbox, not from the notebook.
BENIGN = ("favicon", "net::ERR_", "Failed to load resource", "WebGL", "GPU stall", "GroupMarkerNotSet")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"chromium not found at {CHROMIUM}: run `make browser-test` (installs it with apt-get)")
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        instance = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield instance
        instance.close()


@pytest.fixture(scope="module")
def lab_server(tmp_path_factory):
    """JupyterLab on 127.0.0.1 serving a quick-profile copy of notebook 01."""
    import nbformat
    import papermill

    workdir = tmp_path_factory.mktemp("lab")
    source = Path(os.environ.get("MSTOOLKIT_BROWSER_NOTEBOOK", ROOT / "notebooks" / "01_data_loading.ipynb"))
    # Inject the quick profile without executing: the browser runs the cells.
    papermill.execute_notebook(
        str(source), str(workdir / source.name), parameters={"PROFILE": "quick"}, prepare_only=True, kernel_name="python3", language="python"
    )
    # A notebook without a kernelspec would make JupyterLab ask for a kernel in a dialog.
    copy = nbformat.read(workdir / source.name, as_version=4)
    copy.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(copy, workdir / source.name)
    port = _free_port()
    env = dict(os.environ, MSTOOLKIT_DATA=os.environ.get("MSTOOLKIT_DATA", str(workdir / "cache")))
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         "--ServerApp.token=", "--ServerApp.password=", "--ServerApp.disable_check_xsrf=True",
         "--LabApp.expose_app_in_browser=True", f"--ServerApp.root_dir={workdir}", "--allow-root"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            urllib.request.urlopen(f"{url}/api/status", timeout=1)
            break
        except OSError:
            if server.poll() is not None:
                pytest.fail(f"JupyterLab did not start: {server.stderr.read().decode()[-2000:]}")
            time.sleep(0.5)
    yield url, source.name
    server.terminate()
    server.wait(timeout=30)


def _collect_errors(page) -> list[str]:
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    return errors


def _real(errors: list[str]) -> list[str]:
    return [e for e in errors if not any(b in e for b in BENIGN)]


# JavaScript run in the page (JupyterLab exposes its app as window.jupyterapp).
_CELL_STATE = """() => {
  const panel = window.jupyterapp.shell.currentWidget;
  const cells = Array.from(panel.content.model.cells);
  const code = cells.filter(c => c.type === 'code');
  const errors = code.flatMap(c => c.outputs.toJSON()).filter(o => o.output_type === 'error')
                     .map(o => o.ename + ': ' + o.evalue);
  const done = code.filter(c => c.executionCount !== null).length;
  const busy = document.querySelectorAll('.jp-InputPrompt').length > 0 &&
               Array.from(document.querySelectorAll('.jp-InputPrompt')).some(p => p.textContent.includes('[*]'));
  return {n: code.length, done, busy, errors};
}"""


def test_notebook01_runs_and_slider_changes_image(browser, lab_server):
    url, name = lab_server
    SHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors = _collect_errors(page)
    page.goto(f"{url}/lab/tree/{name}")
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget "
                           "&& window.jupyterapp.shell.currentWidget.sessionContext "
                           "&& window.jupyterapp.shell.currentWidget.sessionContext.session", timeout=120_000)
    page.wait_for_function("() => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.status === 'idle'",
                           timeout=120_000)
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    deadline = time.time() + 600
    while time.time() < deadline:
        state = page.evaluate(_CELL_STATE)
        if state["errors"]:
            page.screenshot(path=str(SHOTS / "notebook01_error.png"), full_page=True)
            pytest.fail(f"a cell failed in the browser: {state['errors']}")
        if state["done"] == state["n"] and not state["busy"]:
            break
        time.sleep(2)
    else:
        pytest.fail(f"notebook 01 did not finish in the browser: {state}")
    page.screenshot(path=str(SHOTS / "notebook01_after_run.png"))

    # The slice slider of the first 2D viewer; its picture is the first widget image after it.
    viewer = page.locator(".mstoolkit-viewer").first
    viewer.scroll_into_view_if_needed()
    handle = viewer.locator(".widget-slider .noUi-handle").first
    image = viewer.locator(".widget-image").first
    before = image.screenshot(path=str(SHOTS / "viewer_before.png"))
    handle.focus()
    for _ in range(5):
        page.keyboard.press("ArrowRight")
    page.wait_for_timeout(1500)
    after = image.screenshot(path=str(SHOTS / "viewer_after.png"))
    assert before != after, "moving the slice slider with the keyboard did not change the rendered image"

    canvas = page.locator(".jp-OutputArea canvas")
    assert canvas.count() >= 1, "the 3D viewer (ipyniivue) drew no canvas"
    canvas.first.scroll_into_view_if_needed()
    page.screenshot(path=str(SHOTS / "viewer_3d.png"))
    assert not _real(errors), f"JavaScript console errors: {_real(errors)}"
    page.close()


def test_executed_notebook_html_opens_cleanly(browser):
    html_dir = ROOT / "build" / "quick" / "html"  # written by `make test` (tests/test_notebooks.py)
    pages = sorted(html_dir.glob("*.html"))
    if not pages:
        pytest.skip("no HTML exports: run `mstoolkit notebooks run --out build/quick` first (make browser-test does)")
    SHOTS.mkdir(parents=True, exist_ok=True)
    for html in pages:
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        errors = _collect_errors(page)
        page.goto(html.as_uri())
        page.wait_for_load_state("load")
        assert page.locator(".jp-Cell, .cell").count() > 3, f"{html.name} shows no cells"
        assert page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr'] .ansi-red-fg, "
                            "pre:has-text('Traceback (most recent call last)')").count() == 0, f"{html.name} shows a traceback"
        page.screenshot(path=str(SHOTS / f"{html.stem}.png"))
        assert not _real(errors), f"{html.name}: JavaScript console errors: {_real(errors)}"
        page.close()
