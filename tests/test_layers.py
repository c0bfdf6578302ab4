"""Layers point one way (DESIGN.md): cli -> (pipelines, methods, analysis, extract) -> engine -> (nn, losses,
data, io). Checked on the source, lazy imports inside functions included."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "cmkdtool"
IMPORT = re.compile(r"^\s*(?:from|import) cmkdtool\.(\w+)", re.M)


def _edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for f in SRC.rglob("*.py"):
        rel = f.relative_to(SRC).parts
        folder = rel[0] if len(rel) > 1 else rel[0].removesuffix(".py")
        for dst in IMPORT.findall(f.read_text()):
            if dst != folder:
                edges[folder].add(dst)
    return edges


def test_lower_layers_import_no_engine_and_the_engine_no_analysis():
    edges = _edges()
    for low in ("nn", "data", "losses", "io", "options"):
        assert not edges[low] & {"engine", "methods", "pipelines", "analysis", "cli"}, (low, edges[low])
    assert not edges["engine"] & {"analysis", "methods", "pipelines", "cli"}, edges["engine"]
    assert not edges["methods"] & {"pipelines", "cli"} and not edges["pipelines"] & {"cli"}


def test_no_import_cycles_between_folders():
    edges = _edges()

    def reaches(a: str, b: str) -> bool:
        seen, todo = set(), [a]
        while todo:
            x = todo.pop()
            if x == b:
                return True
            if x not in seen:
                seen.add(x)
                todo.extend(edges.get(x, ()))
        return False

    cycles = [(a, b) for a in list(edges) for b in edges[a] if reaches(b, a)]
    assert cycles == []


def test_options_module_is_torch_free():
    text = (SRC / "options.py").read_text() + (SRC / "nn" / "specs.py").read_text()
    text += (SRC / "engine" / "config.py").read_text()
    assert "import torch" not in text and "import typer" not in text
