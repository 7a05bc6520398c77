"""The package's layout: its import graph has no cycle, the package's own modules are imported at the
top of a file (never inside a function), and each folder imports only from the layers below it."""
import ast
from pathlib import Path

import pytest

from .conftest import ROOT

PACKAGE = ROOT / "rethink"

# Layers, bottom first: a module may import from its own layer and those listed before it.
LAYERS = [
    {"utils", "config", "structures"},
    {"data", "modeling", "evaluation", "weights", "visualization"},
    {"engine"},
    {"pretrain", "results"},
    {"cluster"},
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> list:
    if node.level == 0:
        bases = [node.module or ""]
    else:
        parts = module.split(".")
        anchor = parts if is_package else parts[:-1]
        anchor = anchor[:len(anchor) - (node.level - 1)]
        bases = [".".join(anchor + ([node.module] if node.module else []))]
    names = []
    for base in bases:
        if node.module or node.level == 0:  # `from . import module` imports the module, not the package
            names.append(base)
        names += [f"{base}.{a.name}" for a in node.names]  # `from pkg import module`
    return names


def imports_of(path: Path):
    """(imported rethink module, line, at top level?) for every import in `path`."""
    module, is_package = module_name(path), path.name == "__init__.py"
    tree = ast.parse(path.read_text(), str(path))
    top = {id(n) for n in tree.body}
    for sub in (n for n in tree.body if isinstance(n, (ast.If, ast.Try))):  # guarded top-level imports
        top |= {id(n) for n in ast.walk(sub)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = _resolve(module, is_package, node)
        else:
            continue
        for name in names:
            if name == "rethink" or name.startswith("rethink."):
                yield name, node.lineno, id(node) in top


@pytest.fixture(scope="module")
def graph():
    files = sorted(PACKAGE.rglob("*.py"))
    known = {module_name(f) for f in files}
    edges = {}
    for f in files:
        targets = set()
        for name, _, _ in imports_of(f):
            while name not in known and "." in name:
                name = name.rsplit(".", 1)[0]
            if name in known and name != module_name(f):
                targets.add(name)
        edges[module_name(f)] = targets
    return edges


def find_cycle(edges):
    state, stack = {}, []

    def visit(n):
        state[n] = "open"
        stack.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == "open":
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = "done"
        return None

    for n in sorted(edges):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_import_graph_has_no_cycle(graph):
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_package_modules_are_imported_at_the_top():
    inside = [f"{f.relative_to(ROOT)}:{line} imports {name}"
              for f in sorted(PACKAGE.rglob("*.py")) for name, line, at_top in imports_of(f) if not at_top]
    assert not inside, "function-level imports of the package's own modules:\n" + "\n".join(inside)


def _layer(module: str):
    parts = module.split(".")
    folder = parts[1] if len(parts) > 1 else None
    for k, layer in enumerate(LAYERS):
        if folder in layer:
            return k
    return None


def test_imports_point_down(graph):
    up = []
    for src, targets in graph.items():
        a = _layer(src)
        for dst in targets:
            b = _layer(dst)
            if a is not None and b is not None and b > a:
                up.append(f"{src} -> {dst}")
    assert not up, "imports from a lower layer to a higher one:\n" + "\n".join(sorted(up))


def test_every_module_is_in_a_layer():
    stray = [module_name(f) for f in sorted(PACKAGE.rglob("*.py"))
             if module_name(f) != "rethink" and _layer(module_name(f)) is None]
    assert not stray, f"modules outside the declared layers: {stray}"
