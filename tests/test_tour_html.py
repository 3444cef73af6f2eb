"""The tour's HTML export without a browser: the page carries the installed MathJax and points at no server.

The browser test (tests/test_browser.py) proves the equations typeset offline; these checks are fast and say
which part of the page is wrong when that test fails.
"""
from __future__ import annotations

import base64
import gzip
import importlib.resources
import re

import nbformat
import pytest

from fusionkit import tour
from fusionkit.core.errors import FusionkitError

# What plotly writes before each figure's HTML (renderer "notebook"): a MathJax from a CDN.
PLOTLY_CDN_MATHJAX = '<script src="https://cdnjs.cloudflare.com/ajax/libs/mathjax/3.2.2/es5/tex-svg.min.js"></script>'
INLINE_MATH = r"\theta = \theta_0 + \lambda\sum_i \tau_i"


def export(tmp_path, html_output: str = "<b>table</b>") -> str:
    """The HTML ``_to_html`` writes for a notebook with a math cell and a code cell whose output is ``html_output``."""
    nb = nbformat.v4.new_notebook()
    code = nbformat.v4.new_code_cell("show()")
    code.outputs = [nbformat.v4.new_output("display_data", data={"text/html": html_output})]
    nb.cells = [nbformat.v4.new_markdown_cell(f"Task arithmetic: ${INLINE_MATH}$"), code]
    path = tmp_path / "00_math.ipynb"
    nbformat.write(nb, path)
    tour._to_html(path)
    return path.with_suffix(".html").read_text(encoding="utf-8")


def test_html_inlines_the_installed_mathjax(tmp_path):
    html = export(tmp_path)
    packed = re.search(r'<script[^>]*\bid="fusionkit-mathjax"[^>]*>([^<]+)</script>', html)
    assert packed, "the page has no inlined MathJax"
    installed = importlib.resources.files(tour.MATHJAX_PACKAGE).joinpath(tour.MATHJAX_FILE).read_bytes()
    assert gzip.decompress(base64.b64decode(packed.group(1))) == installed
    assert "window.MathJax = {" in html  # its configuration, set before it runs
    assert f"${INLINE_MATH}$" in html  # the TeX reaches the page intact, for MathJax to find


def test_html_asks_no_server_for_scripts_or_styles(tmp_path):
    """No CDN: nbconvert's MathJax 2 and require.js links and plotly's per-figure MathJax are all gone, so an
    air-gapped browser neither waits on them nor loads a second MathJax over the inlined one."""
    html = export(tmp_path, html_output=f'<div>{PLOTLY_CDN_MATHJAX}<div id="fig"></div></div>')
    remote = re.findall(r"""<(?:script|link)\b[^>]*\b(?:src|href)=["']?(https?:[^"'\s>]+)""", html, re.I)
    assert remote == []
    assert '<div id="fig"></div>' in html  # the rest of the output stays


def test_executed_copy_keeps_its_outputs(tmp_path):
    """Only the HTML drops plotly's CDN script; the executed notebook beside it is not rewritten."""
    export(tmp_path, html_output=PLOTLY_CDN_MATHJAX)
    nb = nbformat.read(tmp_path / "00_math.ipynb", as_version=4)
    assert nb.cells[1].outputs[0]["data"]["text/html"] == PLOTLY_CDN_MATHJAX


def test_missing_mathjax_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(tour, "MATHJAX_PACKAGE", "fusionkit_no_such_mathjax")
    tour._mathjax_gzip_base64.cache_clear()
    try:
        with pytest.raises(FusionkitError, match="fix: pip install"):
            export(tmp_path)
    finally:
        tour._mathjax_gzip_base64.cache_clear()
