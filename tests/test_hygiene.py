"""Committed notebooks are clean and well-formed; the three dependency lists agree."""
import ast
import json
import re
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_there_are_notebooks():
    assert any(p.name == "00_start_here.ipynb" for p in NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stripped(path):
    nb = json.loads(path.read_text())
    assert "widgets" not in nb.get("metadata", {}), "saved widget state"
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, cell["source"][:60]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_exactly_one_literal_only_parameters_cell(path):
    nb = json.loads(path.read_text())
    tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1
    tree = ast.parse("".join(tagged[0]["source"]))
    names = []
    for node in tree.body:
        assert isinstance(node, ast.Assign) and len(node.targets) == 1, ast.dump(node)[:80]
        ast.literal_eval(node.value)  # raises if not a literal
        names.append(node.targets[0].id)
    assert "profile" in names and "seed" in names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_shape(path):
    text = "".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "markdown")
    for heading in ("What you will learn", "Parameters", "Checks", "Summary", "Exercises", "References"):
        assert heading in text, f"{path.name} lacks a '{heading}' section"
    assert f"urlpath=lab/tree/notebooks/{path.name}" in text  # Binder badge


def _names(specs):
    return sorted(re.split(r"[\s<>=!~\[;]", s.strip(), maxsplit=1)[0].lower().replace("_", "-") for s in specs)


CONDA_NAMES = {"pytorch": "torch"}  # conda-forge's name for the same package


def _yml_pip_list(path):
    """The environment's packages as pip names: the conda ones (but python and pip) and the pip section."""
    lines = path.read_text().splitlines()
    start = next(i for i, l in enumerate(lines) if l.strip() == "- pip:")
    conda = [l.strip()[2:] for l in lines[:start] if l.startswith("  - ") and not l.strip()[2:].startswith(("python", "pip"))]
    conda = [re.sub(r"^[\w.-]+", lambda m: CONDA_NAMES.get(m.group(0), m.group(0)), c) for c in conda
             if not c.startswith("conda-forge")]
    return conda + [l.strip()[2:] for l in lines[start + 1:] if l.strip().startswith("- ")]


def test_environment_files_agree_with_pyproject():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    root = _yml_pip_list(REPO / "environment.yml")
    binder = _yml_pip_list(REPO / "binder" / "environment.yml")
    assert sorted(root) == sorted(deps)
    assert sorted(binder) == sorted(deps)
    assert _names(deps) == _names(root)


def test_binder_environment_is_the_root_one():
    def body(path):  # comments may differ (they say which file is which); the environment may not
        return [l for l in path.read_text().splitlines() if not l.lstrip().startswith("#")]

    assert body(REPO / "binder" / "environment.yml") == body(REPO / "environment.yml")


def test_binder_postbuild_installs_without_deps_and_prefetches():
    path = REPO / "binder" / "postBuild"
    text = path.read_text()
    assert text.startswith("#!") and path.stat().st_mode & 0o111, "postBuild must be an executable script"
    assert "set -e" in text and "pip install --no-deps -e ." in text and "fusionkit assets" in text


def test_browser_test_gets_its_browser_from_debian():
    make = (REPO / "Makefile").read_text()
    assert "test: assets browser" in make and "apt-get install -y -qq chromium" in make
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
    assert any(_names([e]) == ["playwright"] for e in extras)


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in readme and "make test" in ci
