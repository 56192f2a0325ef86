"""The package's layering, checked on the source (ast): a lower layer never imports a
higher one, and no two subpackages import each other, directly or round a longer circle.

Layers, lowest first (DESIGN.md): paths, triton, jit, dispatch -> ops -> distributed ->
models -> runtime -> llm -> server -> bench -> info, cli. Imports inside a function count
too: a deferred import is still an edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "python" / "fuseinfer"

LAYER = {
    "paths": 0, "triton": 0, "jit": 0, "dispatch": 0,
    "ops": 1,
    "distributed": 2,
    "models": 3,
    "runtime": 4,
    "llm": 5,
    "server": 6,
    "bench": 7,
    "info": 8, "cli": 8,
}


def _unit(module: str) -> str | None:
    """The layer unit of a dotted module inside fuseinfer ('fuseinfer.ops.norm' -> 'ops');
    None for the package root."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _module_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[str, int]]:
    """(imported fuseinfer module, line) for every import in the file, relative ones
    resolved against the file's package."""
    module = _module_of(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.startswith("fuseinfer")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("fuseinfer"):
                continue
            if node.module is None or target == "fuseinfer":  # `from . import x`: submodules
                out += [(f"{target}.{a.name}", node.lineno) for a in node.names]
            else:
                out.append((target, node.lineno))
    return out


def _edges() -> list[tuple[str, str, str]]:
    """(from unit, to unit, 'file:line') for imports that cross units."""
    edges = []
    for path in sorted(PACKAGE.rglob("*.py")):
        src = _unit(_module_of(path))
        if src is None:  # the package root re-exports the public API
            continue
        for target, line in _imports(path):
            dst = _unit(target)
            if dst is not None and dst != src:
                edges.append((src, dst, f"{path.relative_to(PACKAGE)}:{line}"))
    return edges


def test_every_unit_has_a_layer():
    units = {_unit(_module_of(p)) for p in PACKAGE.rglob("*.py")} - {None}
    assert units <= set(LAYER), f"place these in LAYER: {sorted(units - set(LAYER))}"


def test_no_import_goes_up_a_layer():
    bad = [f"{where}: {src} imports {dst}" for src, dst, where in _edges()
           if LAYER[dst] > LAYER[src]]
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_no_import_cycles_between_units():
    graph: dict[str, set[str]] = {}
    for src, dst, _ in _edges():
        graph.setdefault(src, set()).add(dst)
    cycles = []

    def visit(node: str, trail: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt in trail:
                cycles.append(" -> ".join(trail[trail.index(nxt):] + [nxt]))
            elif len(trail) < len(LAYER):
                visit(nxt, trail + [nxt])

    for start in sorted(graph):
        visit(start, [start])
    assert not cycles, "import cycles:\n" + "\n".join(sorted(set(cycles)))


@pytest.mark.parametrize("source, expected", [
    ("from ...runtime.engine import Engine\n", "fuseinfer.runtime.engine"),
    ("from . import plan\n", "fuseinfer.ops.attention.plan"),
    ("import fuseinfer.server.app\n", "fuseinfer.server.app"),
])
def test_import_resolution(tmp_path, monkeypatch, source, expected):
    """The checker itself resolves relative and absolute imports (a checker that saw no
    edges would pass everything)."""
    fake = PACKAGE / "ops" / "attention" / "paged_attention.py"
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: source)
    assert [t for t, _ in _imports(fake)] == [expected]


def test_checker_sees_a_planted_upward_edge(monkeypatch):
    real = _imports

    def planted(path: Path) -> list[tuple[str, int]]:
        extra = [("fuseinfer.server.app", 1)] if path.name == "paged_attention.py" else []
        return real(path) + extra

    monkeypatch.setattr(__import__(__name__), "_imports", planted)
    with pytest.raises(AssertionError, match="ops imports server"):
        test_no_import_goes_up_a_layer()
