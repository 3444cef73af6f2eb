"""The real proof that the widgets work: JupyterLab on localhost, driven by Debian's chromium through Playwright.

Each test starts its own JupyterLab (a free port, a token, a temporary runtime/config/settings dir) and a
headless chromium with an empty profile, restarts the kernel and runs all cells from the Run menu, moves the
slider labelled ``t`` with the keyboard and asserts the data of the rendered plotly figure changed. No browser
is downloaded: chromium comes from Debian (``make browser``). Autosave is off, so the served notebook is never
written. A failing test leaves ``failure.png`` and the server log in its tmp dir. A second test opens an
executed copy's HTML with all network blocked and finds the drawn figures and typeset equations.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PLOT_DATA = "el => JSON.stringify(el.data || null)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def jupyterlab(root: Path, scratch: Path, **extra_env: str):
    """A JupyterLab serving ``root`` (its kernels inherit ``extra_env``); yields its base URL and token; always
    stops it and its kernels."""
    port, token = free_port(), secrets.token_hex(16)
    env = dict(os.environ, **extra_env, JUPYTER_RUNTIME_DIR=str(scratch / "runtime"), JUPYTER_CONFIG_DIR=str(scratch / "config"),
               JUPYTERLAB_SETTINGS_DIR=str(scratch / "settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(scratch / "workspaces"),
               # the python3 kernel must be this interpreter, as under the tour
               PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1",
           f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
           f"--ServerApp.root_dir={root}", "--LabApp.news_url=None", "--LabApp.check_for_updates_class="
           "jupyterlab.NeverCheckForUpdate"]
    # never write the served notebook (no autosave: the repository's copy stays output-free), every cell in the
    # DOM (no virtual scrolling, so every prompt can be read), and no news pop-up
    settings = {"docmanager-extension/plugin": {"autosave": False},
                "notebook-extension/tracker": {"windowingMode": "none"},
                "apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False}}
    for name, values in settings.items():
        folder, plugin = name.split("/")
        path = scratch / "settings" / f"@jupyterlab/{folder}" / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    log = open(scratch / "jupyterlab.log", "w")
    # its own process group, so that stopping it also stops the kernels it started
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"JupyterLab exited with {proc.returncode}:\n{(scratch / 'jupyterlab.log').read_text()}")
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail(f"JupyterLab did not answer in 120 s:\n{(scratch / 'jupyterlab.log').read_text()}")
            time.sleep(0.5)
        yield url, token
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        except ProcessLookupError:
            pass
        log.close()


@contextmanager
def chromium(scratch: Path):
    """Debian's headless chromium with an empty profile, through Playwright's bundled driver; always closed."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing; fix: `make browser` (apt-get install chromium, as root)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed; fix: pip install -e '.[test]'")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(str(scratch / "profile"), executable_path=str(CHROMIUM),
                                                       headless=True, args=FLAGS, viewport={"width": 1400,
                                                                                            "height": 1000})
        try:
            yield context.new_page()
        finally:
            context.close()


@contextmanager
def screenshot_on_failure(page, path: Path):
    try:
        yield
    except BaseException:
        page.screenshot(path=str(path), full_page=True)
        raise


def show_all_code(page) -> None:
    """View ▸ Expand All Code. A collapsed input (the notebooks' solution cells) shows a placeholder whose prompt
    never gets an execution count, so every cell is expanded before the run is waited on."""
    if page.locator(".jp-InputPlaceholder").count() == 0:
        return
    page.locator(".lm-MenuBar-itemLabel", has_text="View").first.click(timeout=10_000)
    page.locator(".lm-Menu-itemLabel", has_text="Expand All Code").first.click(timeout=10_000)
    page.wait_for_function("() => document.querySelectorAll('.jp-InputPlaceholder').length === 0",
                           timeout=10_000, polling=250)


def run_all_and_wait(page, timeout_s: float) -> None:
    """Run ▸ Restart Kernel and Run All Cells, then wait until every code cell has an execution count and the
    kernel is idle.

    While the page loads, JupyterLab may start a kernel, drop it and start another; cells sent to the first
    never run. Restarting once the page is idle binds the run to the kernel that stays.
    """
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=120_000)
    page.wait_for_timeout(3000)
    show_all_code(page)
    started = "() => Array.from(document.querySelectorAll('.jp-CodeCell .jp-InputPrompt'))" \
              ".some(p => /\\[(\\*|\\d+)\\]/.test(p.textContent))"
    accept = page.locator(".jp-Dialog .jp-mod-accept")  # "Select Kernel" or "Restart Kernel?"
    for attempt in range(4):
        try:
            if accept.count() and accept.first.is_visible():
                accept.first.click()
            page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click(timeout=10_000)
            page.locator(".lm-Menu-itemLabel", has_text="Restart Kernel and Run All Cells").first.click(timeout=10_000)
            accept.first.click(timeout=20_000)
            page.wait_for_function(started, timeout=30_000, polling=250)
            break
        except Exception:
            if attempt == 3:
                raise
            page.keyboard.press("Escape")  # close a menu or dialog left open
    stderr = ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']"
    errors = page.locator(stderr, has_text="Traceback")
    try:
        page.wait_for_function(
            """() => {
                const prompts = Array.from(document.querySelectorAll('.jp-CodeCell .jp-InputPrompt'));
                const ind = document.querySelector('.jp-Notebook-ExecutionIndicator');
                return prompts.length > 0 && prompts.every(p => /\\[\\d+\\]/.test(p.textContent))
                       && ind && ind.getAttribute('data-status') === 'idle';
            }""", timeout=timeout_s * 1000, polling=500)
    except Exception:
        prompts = page.evaluate("() => Array.from(document.querySelectorAll('.jp-CodeCell .jp-InputPrompt'))"
                                ".map(p => p.textContent)")
        error = errors.first.inner_text()[:2000] if errors.count() else "no traceback shown"
        pytest.fail(f"not every cell ran in {timeout_s:.0f} s; the prompts read {prompts}; {error}")
    assert errors.count() == 0, errors.first.inner_text()[:2000]


def settled_plot_data(page, plot) -> str:
    """The data of one drawn plotly figure, once two reads a second apart agree (rendering has finished)."""
    last = None
    for _ in range(30):
        now = plot.evaluate(PLOT_DATA)
        if now != "null" and now == last:
            return now
        last = now
        page.wait_for_timeout(1000)
    pytest.fail(f"the plotly figure never settled: {str(last)[:200]}")


def find_slider(page, label: str):
    """The ipywidgets slider whose description is exactly ``label``."""
    slider = page.locator(".widget-slider").filter(has=page.locator(".widget-label", has_text=re.compile(
        f"^{re.escape(label)}$")))
    assert slider.count() >= 1, f"no slider labelled {label!r}"
    return slider.first


def move_slider(page, slider, presses: int = 5) -> None:
    """Focus the slider's handle and press → ``presses`` times (one step each)."""
    handle = slider.locator(".noUi-handle").first
    handle.scroll_into_view_if_needed()
    handle.focus()
    for _ in range(presses):
        handle.press("ArrowRight")
        page.wait_for_timeout(100)


def drive_slider_notebook(root: Path, name: str, scratch: Path, run_timeout_s: float,
                          **extra_env: str) -> tuple[str, str]:
    """Open ``root/name`` in JupyterLab, run it, move slider ``t``; returns the data of the plotly figure in the
    slider's cell (the explorer's ``FigureWidget``) before and after."""
    with jupyterlab(root, scratch, **extra_env) as (url, token), chromium(scratch) as page:
        with screenshot_on_failure(page, scratch / "failure.png"):
            page.goto(f"{url}/lab/tree/{name}?token={token}&reset", timeout=120_000)
            run_all_and_wait(page, run_timeout_s)
            slider = find_slider(page, "t")
            slider.scroll_into_view_if_needed()
            plot = page.locator(".jp-Cell").filter(has=slider).locator(".js-plotly-plot").first
            plot.wait_for(timeout=60_000)
            before = settled_plot_data(page, plot)
            move_slider(page, slider)
            page.wait_for_function(f"([el, before]) => ({PLOT_DATA})(el) !== before",
                                   arg=[plot.element_handle(), before], timeout=120_000, polling=250)
            after = settled_plot_data(page, plot)
            page.screenshot(path=str(scratch / "after.png"))
    return before, after


SLIDER_NOTEBOOK = [
    'profile = "smoke"\nseed = 0',
    "import ipywidgets as w\nimport plotly.graph_objects as go\n"
    "fig = go.FigureWidget(go.Scatter(x=[0.0], y=[0.0], mode='markers', name='t'))\n"
    "t = w.FloatSlider(value=0.0, min=-0.5, max=1.5, step=0.1, description='t', continuous_update=False)\n"
    "def move(change):\n    with fig.batch_update():\n"
    "        fig.data[0].x = [change['new']]\n        fig.data[0].y = [change['new'] ** 2]\n"
    "t.observe(move, names='value')\nw.VBox([t, fig])",
]


def test_widgets_and_plotly_work_in_jupyterlab(tmp_path):
    """A minimal FloatSlider + FigureWidget: the JupyterLab extensions (ipywidgets, anywidget, plotly) load offline."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(s) for s in SLIDER_NOTEBOOK]
    root = tmp_path / "nb"
    root.mkdir()
    nbformat.write(nb, root / "slider.ipynb")
    before, after = drive_slider_notebook(root, "slider.ipynb", tmp_path, run_timeout_s=120)
    assert before != after
    x = json.loads(after)[0]["x"]
    assert x[0] == pytest.approx(0.5)  # five presses of → at step 0.1


@pytest.mark.notebook
def test_01_interpolation_slider_moves_the_marker(tmp_path):
    """Open notebooks/01_interpolation.ipynb, run it, move the t slider, and see the figure's data change.

    This is the suite's one execution of notebook 01: its recorded claims are asserted here, as
    tests/test_notebooks.py asserts the other notebooks' after their papermill runs."""
    from fusionkit import build_zoo
    from fusionkit.tour import RECORD_ENV
    from test_notebooks import check_interpolation_record

    path = REPO / "notebooks" / "01_interpolation.ipynb"
    assert path.exists(), "notebooks/01_interpolation.ipynb is missing (issue 6, part A)"
    build_zoo("multitask", "smoke")  # in this process, so that the notebook only loads cached experts
    committed, record = path.read_bytes(), tmp_path / "record.json"
    try:
        before, after = drive_slider_notebook(path.parent, path.name, tmp_path, run_timeout_s=600,
                                              **{RECORD_ENV: str(record)})
    finally:
        now = path.read_bytes()
        written = now != committed and any(c.get("execution_count") for c in json.loads(now)["cells"])
        if written:  # JupyterLab saved an executed copy over the repository's notebook: put the clean one back
            path.write_bytes(committed)
    assert not written, "JupyterLab wrote the served notebook; autosave must stay off"
    before, after = json.loads(before), json.loads(after)
    assert [t.get("name") for t in before] == [t.get("name") for t in after]  # the same figure, its data moved
    assert before != after
    assert record.exists(), "notebook 01 ran in JupyterLab but recorded nothing (its last cell calls fk.record)"
    check_interpolation_record(json.loads(record.read_text()))


# Inline and display math as the notebooks write it; the offline page must typeset exactly these.
INLINE_MATH = r"\theta = \theta_0 + \lambda\sum_i \tau_i"
DISPLAY_MATH = r"\mathcal{L} = \frac{\tau^2}{|P|}\sum_i \mathrm{KL}(p_t \| p_s)"
TYPESET = "async () => { await MathJax.startup.promise; " \
          "return Array.from(MathJax.startup.document.math).map(m => [m.math, m.display]); }"


def test_executed_html_draws_its_figures_offline(tmp_path):
    """An executed copy's HTML draws its plotly figures and typesets its equations with every network request
    blocked (plotly.js and MathJax are inline), and asks no server for anything."""
    from fusionkit.tour import run_notebook

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(s) for s in [
        'profile = "smoke"\nseed = 0',
        "import plotly.graph_objects as go\nfrom fusionkit import setup\nsetup(seed)",
        "go.Figure(go.Bar(x=['a', 'b'], y=[1, 2])).show()\ngo.Figure(go.Scatter(y=[3, 1, 2])).show()"]]
    nb.cells[0].metadata["tags"] = ["parameters"]
    nb.cells.insert(1, nbformat.v4.new_markdown_cell(
        f"Merging adds scaled task vectors, ${INLINE_MATH}$, and distillation minimises\n\n$${DISPLAY_MATH}$$"))
    nbformat.write(nb, tmp_path / "00_figures.ipynb")
    row = run_notebook(tmp_path / "00_figures.ipynb", tmp_path / "out", {"profile": "smoke"}, timeout=120)
    assert row["status"] == "ok", row["error"]
    with chromium(tmp_path) as page, screenshot_on_failure(page, tmp_path / "failure.png"):
        requested = []
        page.on("request", lambda r: requested.append(r.url))
        page.route("http*://**", lambda route: route.abort())  # the CDN is not there to help
        page.goto((tmp_path / "out" / "00_figures.html").as_uri())
        page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot .main-svg').length >= 2",
                               timeout=30_000)
        traces = page.evaluate("() => Array.from(document.querySelectorAll('.js-plotly-plot'))"
                               ".map(d => d.data[0].type)")
        assert traces == ["bar", "scatter"]
        try:
            page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise",
                                   timeout=30_000)
        except Exception as e:
            pytest.fail(f"MathJax never started offline ({type(e).__name__}); the page's math stays raw TeX: "
                        f"{page.locator('.jp-MarkdownCell').inner_text()!r}")
        assert sorted(page.evaluate(TYPESET)) == sorted([[INLINE_MATH, False], [DISPLAY_MATH, True]])
        text = page.locator(".jp-MarkdownCell").inner_text()
        assert "$" not in text and "\\" not in text, f"raw TeX left in the page: {text!r}"
        drawn = page.evaluate("() => Array.from(document.querySelectorAll('mjx-container > svg'))"
                              ".map(s => s.getBoundingClientRect().width > 0)")
        assert drawn == [True, True], "MathJax's SVG output is missing or empty"
        assert page.locator("[data-mml-node='merror'], [data-mjx-error]").count() == 0, "MathJax reported a TeX error"
        page.screenshot(path=str(tmp_path / "html.png"), full_page=True)
    online = [u for u in requested if not u.startswith(("file:", "data:", "blob:"))]
    assert not online, f"the page asked the network for {online}"
