"""The package's layers, kept honest: imports only go downward, no module imports another that imports it back,
modules stay small, and docs/architecture.md names every module.

Layers, lowest first: core < data < models < merging < (search | distill) < viz < the top (cli, tour, the package
itself). ``search`` and ``distill`` are siblings and must not import each other; ``_version`` is a leaf.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RANK = {"_version": -1, "core": 0, "data": 1, "models": 2, "merging": 3, "search": 4, "distill": 4, "viz": 5,
        "reproduce": 5, "teaching": 5}
TOP = 6  # cli, tour, __init__, __main__
MAX_LINES = 450


def modules(root: Path) -> dict[str, Path]:
    out = {}
    for p in root.rglob("*.py"):
        name = ".".join(p.relative_to(root.parent).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = p
    return out


def imports(name: str, path: Path, known: dict) -> set[str]:
    """Every module of the package that ``name`` imports (anywhere in its body, function-local ones included)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            candidates = [f"{base}.{a.name}" for a in node.names] + [base]
        elif isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            continue
        for c in candidates:
            if c in known and c != name:
                found.add(c)
                break
            while c and c not in known:
                c = c.rpartition(".")[0]
            if c and c != name:
                found.add(c)
                break
    return found


def layer(name: str) -> tuple[str, int]:
    parts = name.split(".")
    if len(parts) == 1:
        return "", TOP
    return parts[1], RANK.get(parts[1], TOP)


def violations(root: Path) -> list[str]:
    """Upward or sideways imports between layers, and import cycles, named by their modules."""
    known = modules(root)
    graph = {n: imports(n, p, known) for n, p in known.items()}
    bad = []
    for a, deps in sorted(graph.items()):
        la, ra = layer(a)
        for b in sorted(deps):
            lb, rb = layer(b)
            if not (la == lb or rb < ra or ra == rb == TOP):  # the top's modules may use each other
                bad.append(f"{a} imports {b}: {lb or 'the top'} is not below {la or 'the top'}")
    # cycles (depth-first search; each reported once, as the path that closes it)
    state, stack = {}, []

    def visit(n):
        state[n] = "open"
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == "open":
                bad.append("cycle: " + " -> ".join(stack[stack.index(m):] + [m]))
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = "done"

    for n in sorted(graph):
        if n not in state:
            visit(n)
    return bad


def test_imports_only_go_downward_and_there_is_no_cycle():
    assert violations(REPO / "fusionkit") == []


def test_the_checker_catches_a_cycle_and_an_upward_import(tmp_path):
    pkg = tmp_path / "fusionkit"
    for folder in ("core", "models"):
        (pkg / folder).mkdir(parents=True)
        (pkg / folder / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "core" / "a.py").write_text("from ..models.b import thing\n")  # core must not import models
    (pkg / "models" / "b.py").write_text("def thing():\n    from ..core import a\n")
    (pkg / "models" / "c.py").write_text("from .d import x\n")
    (pkg / "models" / "d.py").write_text("from .c import y\n")
    found = violations(pkg)
    assert any(v.startswith("fusionkit.core.a imports fusionkit.models.b") for v in found), found
    assert any("cycle: fusionkit.models.c -> fusionkit.models.d -> fusionkit.models.c" in v for v in found), found


def test_modules_are_small_and_grouped_in_layers():
    flat = [p.name for p in (REPO / "fusionkit").glob("*.py")]
    assert sorted(flat) == ["__init__.py", "__main__.py", "_version.py", "tour.py"]
    assert (REPO / "fusionkit" / "cli" / "__init__.py").exists()
    for name, path in modules(REPO / "fusionkit").items():
        n = len(path.read_text().splitlines())
        assert n <= MAX_LINES, f"{name} has {n} lines; split it by idea (one idea per module)"


def test_the_architecture_document_names_every_module():
    doc = (REPO / "docs" / "architecture.md").read_text()
    missing = [name for name, path in modules(REPO / "fusionkit").items()
               if path.name != "__init__.py" and f"{path.relative_to(REPO / 'fusionkit').as_posix()}" not in doc]
    assert missing == [], f"docs/architecture.md does not mention {missing}"


@pytest.mark.parametrize("name", ["core", "data", "models", "merging", "search", "distill", "viz"])
def test_every_layer_has_a_docstring(name):
    tree = ast.parse((REPO / "fusionkit" / name / "__init__.py").read_text())
    assert ast.get_docstring(tree), f"fusionkit/{name}/__init__.py should say what the layer holds"
