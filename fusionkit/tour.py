"""Run the notebooks headlessly with papermill, by profile, and collect the numbers each one records.

``run_tour(profile="smoke")`` executes every ``notebooks/NN_*.ipynb`` in order (working directory = the
notebook's folder, kernel ``python3``, a per-notebook timeout) and writes, under ``runs/<timestamp>/``,
the executed copy, an HTML rendering and the JSON of what the notebook passed to :func:`record`.

papermill only *warns* about a parameter the notebook does not declare, so injected names are checked
against ``papermill.inspect_notebook`` first and a typo fails the run.

Executed copies must show their figures without a live kernel and stay small: plotly renders with
``plotly_mimetype+notebook`` (JupyterLab draws the JSON; the HTML carries plotly.js once, inline, so it opens
offline), and widget state is not stored (a saved ``FigureWidget`` costs megabytes; the static twin beside
each explorer is what an executed copy shows). The HTML also carries MathJax, inline, so its equations typeset
offline too, and it loads no script from a CDN (nbconvert's mermaid.js only for a mermaid diagram). The tour
also says which of the planned notebooks (:data:`EXPECTED`) are not in the folder yet.
"""
from __future__ import annotations

import base64
import functools
import gzip
import importlib.resources
import json
import os
import re
import sys
import time
from pathlib import Path

from .core.cache import read_json, write_json
from .core.errors import FusionkitError

RECORD_ENV = "FUSIONKIT_RECORD"
REPO = Path(__file__).resolve().parent.parent
# The planned notebooks, in reading order; a tour names those not written yet rather than silently skipping them.
EXPECTED = ("00_start_here", "01_interpolation", "02_landscape", "03_task_vectors", "04_regmean", "05_dfwe",
            "06_evolver", "07_knowledge_distillation", "08_modern_merges", "09_causal_fusion",
            "10_fusion_by_distillation")
# Figures as JSON for JupyterLab plus self-contained HTML (plotly.js inlined once) for HTML and nbviewer.
HEADLESS_RENDERER = "plotly_mimetype+notebook"


def record(**numbers) -> dict:
    """Record a notebook's key numbers; under the tour they land in a JSON file beside the executed copy."""
    path = os.environ.get(RECORD_ENV)
    if path:
        current = read_json(path) if Path(path).exists() else {}
        current.update(numbers)
        write_json(path, current)
    return numbers


def notebooks(folder: str | Path | None = None) -> list[Path]:
    folder = Path(folder or REPO / "notebooks")
    return sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb"))


def missing_notebooks(folder: str | Path | None = None) -> list[str]:
    """The planned notebooks (:data:`EXPECTED`) that have no ``.ipynb`` in ``folder`` yet."""
    present = {p.stem for p in notebooks(folder)}
    return [name for name in EXPECTED if name not in present]


def check_parameters(path: str | Path, parameters: dict) -> None:
    import papermill

    declared = papermill.inspect_notebook(str(path))
    unknown = sorted(set(parameters) - set(declared))
    if unknown:
        raise FusionkitError(f"{Path(path).name} has no parameter(s) {unknown}; declared: {sorted(declared)}")


def _local_kernel_manager():
    """A kernel manager whose kernel talks over Unix sockets: nothing listens on a TCP port while a notebook
    runs, and ipykernel has no plain-text-over-TCP warning to print for each notebook."""
    from jupyter_client.manager import KernelManager
    from traitlets import Unicode

    if os.name != "posix":  # Unix sockets only; elsewhere keep jupyter's default (TCP on localhost)
        return KernelManager

    class LocalKernelManager(KernelManager):
        transport = Unicode("ipc")

    return LocalKernelManager


def run_notebook(path: str | Path, out_dir: str | Path, parameters: dict | None = None,
                 timeout: int = 1800, html: bool = True) -> dict:
    """Execute one notebook; returns ``{notebook, seconds, status, error, record}``."""
    import papermill

    path, out_dir = Path(path), Path(out_dir)
    parameters = dict(parameters or {})
    check_parameters(path, parameters)
    out_dir.mkdir(parents=True, exist_ok=True)
    executed = out_dir / path.name
    record_path = out_dir / f"{path.stem}.json"
    env_before = {k: os.environ.get(k) for k in (RECORD_ENV, "PLOTLY_RENDERER", "PATH")}
    os.environ[RECORD_ENV] = str(record_path)
    os.environ.setdefault("PLOTLY_RENDERER", HEADLESS_RENDERER)
    # The python3 kernel must be this interpreter (a venv's python), whatever PATH the caller had.
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    t0 = time.perf_counter()
    status, error = "ok", ""
    try:
        papermill.execute_notebook(str(path), str(executed), parameters=parameters, kernel_name="python3",
                                   cwd=str(path.parent), execution_timeout=timeout, progress_bar=False,
                                   store_widget_state=False, kernel_manager_class=_local_kernel_manager())
    except Exception as e:  # a failing notebook is a row in the table, not the end of the tour
        status, error = "failed", f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
    finally:
        for k, v in env_before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    seconds = time.perf_counter() - t0
    if html and executed.exists():
        _to_html(executed)
    return {"notebook": path.name, "seconds": round(seconds, 1), "status": status, "error": error,
            "record": read_json(record_path) if record_path.exists() else {}}


# MathJax 3's single-file TeX-to-SVG build: glyphs are SVG paths inside the script (no font files to fetch) and
# every TeX extension is in it (nothing autoloads from a CDN); it comes with the django-static-mathjax package.
MATHJAX_PACKAGE, MATHJAX_FILE = "mathjax", "static/mathjax/es5/tex-svg-full.js"
# nbconvert's lab page with its two CDN scripts replaced. MathJax's config is window.MathJax, set before the script
# runs; the script itself is inlined gzip-compressed (2.3 MB of JavaScript, 0.96 MB as base64), unpacked by the
# browser (DecompressionStream) and run from a blob: URL. Typesetting is asynchronous anyway, so nothing else on
# the page waits for it. Plotly's figures are left alone (their text is plotly.js's, drawn before MathJax is up).
MATHJAX_TEMPLATE = r"""{%- extends 'index.html.j2' -%}
{#- require.js came from a CDN, blocking the page where the network hangs, and nothing on a tour page uses it
    (plotly.js is inlined without AMD, widget state is not stored) -#}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mathjax -%}
<script>
window.MathJax = {
  tex: {inlineMath: [['$', '$'], ['\\(', '\\)']], displayMath: [['$$', '$$'], ['\\[', '\\]']],
        processEscapes: true, processEnvironments: true, tags: 'ams'},
  svg: {fontCache: 'global'},
  options: {ignoreHtmlClass: 'tex2jax_ignore|js-plotly-plot'}
};
</script>
<script type="application/gzip;base64" id="fusionkit-mathjax">{{ resources.mathjax_gzip_base64 }}</script>
<script>
(async () => {
  const packed = Uint8Array.from(atob(document.getElementById('fusionkit-mathjax').textContent), c => c.charCodeAt(0));
  const code = await new Response(new Blob([packed]).stream().pipeThrough(new DecompressionStream('gzip'))).text();
  const script = document.createElement('script');
  script.src = URL.createObjectURL(new Blob([code], {type: 'text/javascript'}));
  document.head.appendChild(script);
})().catch(e => console.error('fusionkit: the inlined MathJax did not start; equations stay as TeX', e));
</script>
{%- endblock html_head_js_mathjax -%}
"""


# plotly puts a CDN MathJax <script> before each figure's HTML; the page has its own MathJax, and two on a page fight
CDN_MATHJAX = re.compile(r"""<script[^>]*\bsrc=["']https?://[^"']*mathjax[^"']*["'][^>]*>\s*</script>""", re.I)


def _without_cdn_mathjax(nb):
    """``nb`` with the CDN MathJax scripts dropped from its HTML outputs (in memory: the executed copy keeps them)."""
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            html = output.get("data", {}).get("text/html")
            if html:
                output["data"]["text/html"] = CDN_MATHJAX.sub("", html if isinstance(html, str) else "".join(html))
    return nb


@functools.lru_cache(maxsize=1)
def _mathjax_gzip_base64() -> str:
    """The installed MathJax build, gzip-compressed and base64-encoded, once per process (a tour exports many
    pages). A missing package is an error, not a page whose equations silently stay raw TeX."""
    try:
        source = importlib.resources.files(MATHJAX_PACKAGE).joinpath(MATHJAX_FILE).read_bytes()
    except (ModuleNotFoundError, FileNotFoundError) as e:
        raise FusionkitError(f"MathJax for the offline HTML is not installed ({e}); fix: pip install -e . "
                             "(it brings django-static-mathjax, MathJax 3 as a Python package)") from e
    # mtime=0: the same MathJax gives byte-identical pages
    return base64.b64encode(gzip.compress(source, compresslevel=9, mtime=0)).decode("ascii")


def _to_html(executed: Path) -> None:
    """Write ``executed``'s HTML beside it: nbconvert's lab page, with MathJax inlined in place of its CDN link,
    so that the page draws its figures (plotly.js is in the outputs) and typesets its equations with no network."""
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(raw_template=MATHJAX_TEMPLATE)
    body, _ = exporter.from_notebook_node(_without_cdn_mathjax(nbformat.read(executed, as_version=4)),
                                          resources={"mathjax_gzip_base64": _mathjax_gzip_base64()})
    executed.with_suffix(".html").write_text(body, encoding="utf-8")


def run_tour(profile: str = "smoke", only: list[str] | None = None, out: str | Path | None = None,
             timeout: int = 1800, folder: str | Path | None = None) -> tuple[Path, list[dict]]:
    """Execute the notebooks (all, or those whose names contain one of ``only``) with ``profile``.

    A tour takes minutes per notebook, so each finished notebook is reported on stderr at once and
    ``tour.json`` is rewritten after it: a tour stopped half-way still leaves its rows.
    """
    out = Path(out or REPO / "runs" / time.strftime("%Y%m%d-%H%M%S"))
    chosen = [nb for nb in notebooks(folder) if not only or any(o in nb.name for o in only)]
    rows = []
    for i, nb in enumerate(chosen, 1):
        rows.append(run_notebook(nb, out, {"profile": profile}, timeout=timeout))
        r = rows[-1]
        print(f"[{i}/{len(chosen)}] {r['notebook']}: {r['status']} in {r['seconds']:.1f} s", file=sys.stderr,
              flush=True)
        write_json(out / "tour.json", {"profile": profile, "notebooks": rows, "missing": missing_notebooks(folder)})
    if not rows:
        write_json(out / "tour.json", {"profile": profile, "notebooks": [], "missing": missing_notebooks(folder)})
    return out, rows


def format_table(rows: list[dict], missing: list[str] | None = None) -> str:
    """The tour's table; ``missing`` (default: planned notebooks absent from ``notebooks/``) ends it."""
    lines = [f"{'notebook':<36} {'seconds':>8}  {'status':<7} key numbers"]
    for r in rows:
        # Only plain numbers make the table (labels like profile and nested results stay in tour.json).
        scalars = [(k, v) for k, v in r["record"].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        numbers = ", ".join(f"{k}={v:.4g}" for k, v in scalars[:4])
        lines.append(f"{r['notebook']:<36} {r['seconds']:>8.1f}  {r['status']:<7} {numbers or r['error']}")
    lines.append(f"{'total':<36} {sum(r['seconds'] for r in rows):>8.1f}")
    missing = missing_notebooks() if missing is None else missing
    if missing:
        lines.append(f"missing (not written yet): {', '.join(n + '.ipynb' for n in missing)}")
    return "\n".join(lines)


def summary(rows: list[dict]) -> str:
    return json.dumps(rows, indent=2)
