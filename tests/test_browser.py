"""The explorer notebook as a person uses it: JupyterLab + headless Chromium, run all, move a slider.

Starts ``jupyter lab`` on 127.0.0.1 (a free port, a token) over a temporary
copy of ``notebooks/07_results_explorer.ipynb`` whose parameters are
overridden for speed (2 seeds, 3 methods; papermill-style: one
injected cell after the cell tagged ``parameters``), opens it in Debian's
Chromium through Playwright, runs every cell from the Run menu, checks that
the explorer's widgets rendered, moves the *many* threshold from 100 to 50
*while a grid trains in the background* (a cell appended to the copy) and
checks that the classes moved group and the chart was redrawn before that
grid finished, waits for the grid's live view to report it finished, saves a
screenshot (its path is printed; ``pytest -s`` shows it) and shuts
JupyterLab down.

Skipped, with the reason, when Playwright or Chromium is missing
(``.ci/browser-setup.sh`` installs Chromium with apt-get).  Never runs
``playwright install``: the browser is the system's.  All traffic stays on
127.0.0.1.
"""

import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

CHROMIUM = os.environ.get("LTKIT_CHROMIUM", "/usr/bin/chromium")
NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "07_results_explorer.ipynb"
QUICK_PARAMETERS = 'SEEDS = [0, 1]\nONLY = ["CE", "BS", "LA (post hoc)"]'
# Appended after the explorer: a grid that keeps training (two worker processes) while the test uses the explorer.
BACKGROUND_GRID = ('background = launch.run_grid({"CE (long)": dict(loss="ce", epochs=500)}, [7, 8], base=DATASET,\n'
                   '                             out_dir=OUT + "-background", workers=2, background=True, interval=1)\n'
                   'background')
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
                  "--no-first-run", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
if not os.access(CHROMIUM, os.X_OK):
    pytest.skip(f"no Chromium at {CHROMIUM}: run .ci/browser-setup.sh (apt-get install chromium) "
                "or set LTKIT_CHROMIUM", allow_module_level=True)


# --------------------------------------------------------------------------- JavaScript conditions (JupyterLab 4 DOM)
KERNEL_IDLE = r"""() => {
    const status = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook-ExecutionIndicator');
    const bar = [...document.querySelectorAll('#jp-main-statusbar, .jp-StatusBar-TextItem')]
        .some(t => /\|\s*Idle/.test(t.textContent));
    const busy = [...document.querySelectorAll('.jp-InputPrompt')].some(p => p.textContent.includes('*'));
    return status !== null && status.getAttribute('data-status') === 'idle' && bar && !busy;
}"""
CELLS_STARTED = r"""() => [...document.querySelectorAll('.jp-InputPrompt')]
    .some(p => /\[(\*|\d+)\]/.test(p.textContent))"""
CHART_LOADED = """() => {
    const img = document.querySelector('.ltkit-explorer img');
    return img !== null && img.complete && img.naturalWidth > 500;
}"""
LIVE_VIEW_SAYS = """(word) => {
    const views = document.querySelectorAll('.ltkit-live');  // the last one: the appended background grid's
    return views.length > 0 && views[views.length - 1].innerText.includes(word);
}"""
TABLE_AND_CHART_UPDATED = """([text, oldSrc]) => {
    const table = document.querySelector('.ltkit-explorer .ltkit-explorer-table');
    const img = document.querySelector('.ltkit-explorer img');
    return table !== null && table.innerText.includes(text) && img !== null && img.getAttribute('src') !== oldSrc;
}"""


# --------------------------------------------------------------------------- helpers
def quick_copy(folder: Path) -> Path:
    """The notebook without outputs, its parameters overridden by one injected cell (as papermill does)."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert tagged, f"{NOTEBOOK.name}: no cell tagged 'parameters' (papermill's convention): tag the parameters cell"
    at = tagged[0]
    injected = nbformat.v4.new_code_cell("# injected by tests/test_browser.py: a quick run\n" + QUICK_PARAMETERS)
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(at + 1, injected)
    nb.cells.append(nbformat.v4.new_code_cell("# injected by tests/test_browser.py: a grid training in the background\n"
                                              + BACKGROUND_GRID))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / NOTEBOOK.name
    nbformat.write(nb, path)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_server(url: str, process: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"jupyter lab did not answer {url} within {timeout} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def jupyter_lab(tmp_path):
    """A JupyterLab server on 127.0.0.1 over a quick copy of the notebook; yields (base url, token, notebook name)."""
    notebook = quick_copy(tmp_path / "notebooks")
    port, token = free_port(), secrets.token_hex(16)
    home = tmp_path / "jupyter"
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
           "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"), "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", "MPLBACKEND": "Agg"}
    news = home / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True)
    news.write_text('{"fetchNews": "false"}')  # no "get Jupyter news?" toast over the screenshot
    tracker = home / "settings" / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True)
    tracker.write_text('{"windowingMode": "none"}')  # every cell stays in the page, also when scrolled out of view
    log = tmp_path / "jupyter-lab.log"
    command = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
               f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={notebook.parent}", "--ServerApp.port_retries=0",
               # nothing leaves 127.0.0.1: no news feed, no update check, no extension catalogue
               "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
               "--LabApp.extension_manager=readonly"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # CI containers run as root
        command.append("--allow-root")
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=notebook.parent,
                                   start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_server(f"{base}/api/status?token={token}", process, log)
        yield base, token, notebook.name
    finally:
        _shutdown(base, token, process)


def _shutdown(base: str, token: str, process: subprocess.Popen) -> None:
    """Ask the server to stop (it shuts its kernels down), then terminate this process group if it lingers."""
    try:
        request = urllib.request.Request(f"{base}/api/shutdown", method="POST", headers={"Authorization": f"token {token}"})
        urllib.request.urlopen(request, timeout=10).close()
        process.wait(timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        pass
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


# --------------------------------------------------------------------------- the test
def test_explorer_notebook_runs_in_jupyterlab_and_reacts_to_a_slider(jupyter_lab, tmp_path):
    base, token, name = jupyter_lab
    started = time.monotonic()
    screenshot, failure = tmp_path / "explorer.png", tmp_path / "failure.png"
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            page.set_default_timeout(60_000)
            try:
                use_the_explorer(page, f"{base}/lab/tree/{name}?token={token}", screenshot)
            except Exception:
                page.screenshot(path=str(failure))
                print(f"\nscreenshot of the failure: {failure}")
                raise
        finally:
            browser.close()
    assert screenshot.stat().st_size > 20_000
    print(f"\nexplorer screenshot: {screenshot}  ({time.monotonic() - started:.0f} s in the browser)")


def use_the_explorer(page, url: str, screenshot: Path) -> None:
    """Open the notebook, run all cells, check the widgets, move a threshold, check the redraw, screenshot."""
    page.goto(url, wait_until="domcontentloaded")
    wait_for_idle_kernel(page, timeout_s=120)
    run_all_cells(page)
    explorer = page.locator(".ltkit-explorer")
    explorer.wait_for(state="attached", timeout=240_000)
    wait_for_idle_kernel(page, timeout_s=240)
    assert_no_error_output(page)
    explorer.scroll_into_view_if_needed()
    explorer.wait_for(state="visible", timeout=30_000)

    # the widgets rendered: the methods list, two threshold sliders, the table and the chart
    assert explorer.locator(".widget-select-multiple select option").count() == 3
    assert explorer.locator(".widget-slider").count() == 2
    # (the table's HTML is replaced on every update: query it afresh, never hold on to its element)
    table, chart = explorer.locator(".ltkit-explorer-table"), explorer.locator("img").first
    wait_until(page, CHART_LOADED, None, "the explorer's chart to load", 60)
    assert "many n > 100 (2 classes)" in table.inner_text()
    before = chart.get_attribute("src")

    # the last cell's grid trains in the background: the kernel is idle, the live view says "training"
    wait_until(page, LIVE_VIEW_SAYS, "training", "the background grid's live view", 60)

    # a person moves the "many" threshold from 100 to 50 (type into the slider's readout) while it trains
    set_slider_by_readout(explorer.locator(".widget-slider").first, 50)
    wait_until(page, TABLE_AND_CHART_UPDATED, ["many n > 50 (4 classes)", before],
               "the table to show the new groups and the chart to be redrawn", 180)
    wait_until(page, CHART_LOADED, None, "the new chart to load", 60)
    assert "many n > 50 (4 classes), medium (3), few n < 20 (3)" in table.inner_text()
    assert chart.get_attribute("src") != before
    assert "training" in page.locator(".ltkit-live").last.inner_text(), \
        "the background grid finished before the explorer redrew: lengthen BACKGROUND_GRID's runs"
    explorer.scroll_into_view_if_needed()
    explorer.screenshot(path=str(screenshot))
    # no worker left behind: the live view reports the grid finished (its picture redrawn at the end)
    wait_until(page, LIVE_VIEW_SAYS, "finished", "the background grid to finish", 600)
    page.locator(".ltkit-live").last.screenshot(path=str(screenshot.with_name("live-view.png")))


def wait_until(page, condition: str, arg, what: str, timeout_s: float) -> None:
    """Poll a JavaScript condition; a clear failure message when it does not hold in time."""
    try:
        page.wait_for_function(condition, arg=arg, timeout=timeout_s * 1000, polling=250)
    except sync_api.TimeoutError:
        raise AssertionError(f"waited {timeout_s:.0f} s for {what}") from None


def wait_for_idle_kernel(page, timeout_s: float) -> None:
    """The notebook's kernel is connected and idle (toolbar and status bar) and no cell is queued or running."""
    wait_until(page, KERNEL_IDLE, None, "an idle kernel and no running cell", timeout_s)


def run_all_cells(page, attempts: int = 3) -> None:
    """Focus the first cell (so the notebook is the current widget), then Run > Run All Cells.

    Retried when no cell starts (a kernel that reports idle before its
    connection is complete can drop the first requests).
    """
    for _ in range(attempts):
        page.locator(".jp-Notebook .jp-Cell").first.click()
        page.locator(".lm-MenuBar-item", has_text="Run").first.click()
        label = page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$"))
        page.locator(".lm-Menu-item").filter(has=label).click()
        try:
            page.wait_for_function(CELLS_STARTED, timeout=30_000, polling=500)
            return
        except sync_api.TimeoutError:
            continue
    raise AssertionError(f"Run > Run All Cells started no cell in {attempts} attempts")


def set_slider_by_readout(slider, value: int) -> None:
    """Type a value into an ipywidgets slider's editable readout and press Enter (as a person can)."""
    readout = slider.locator(".widget-readout")
    readout.click()
    readout.press("Control+a")
    readout.type(str(value))
    readout.press("Enter")


def assert_no_error_output(page) -> None:
    """No cell shows a traceback (JupyterLab renders errors as stderr output)."""
    stderr = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
    texts = [stderr.nth(i).inner_text() for i in range(stderr.count())]
    errors = [text[-2000:] for text in texts if "Traceback" in text]
    assert not errors, "a cell raised:\n" + "\n---\n".join(errors)
