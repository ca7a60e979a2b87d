"""Find import cycles, and imports that point up the layers, between the modules of a package (default: src/veilml).

Parses every ``.py`` file with :mod:`ast` (nothing is imported), resolves absolute and relative
imports (``from . import x``, ``from ..a import b``) to modules of the package, and builds the graph
of the imports that run when a module is imported: module level, including ``if``/``try``/``with``
blocks and class bodies, but not function bodies and not ``if TYPE_CHECKING:`` blocks. With
``--include-deferred`` the imports inside functions count too (a cycle closed by such an import
is still a cycle in the design, only one that fails later).

``from pkg import name`` points at ``pkg.name`` when that is a module of the package, else at ``pkg``.
The packages above an imported module are not counted (Python runs them first, but a package's
``__init__`` importing its own modules is not a cycle).

Layers (:data:`LAYERS`, veilml's architecture, top first): a module may import its own layer and the
layers below, never one above, and the two model families never import each other. Each arrow that
points up is printed as ``upward import: a (layer) -> b (layer)``; modules outside the table are not
judged.

Prints each cycle as ``a -> b -> a`` and each upward arrow, and exits 1 if there is one, else prints
a one-line summary and exits 0::

    python scripts/import_cycles.py [PACKAGE_DIR] [--include-deferred]
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PACKAGE = ROOT / "src" / "veilml"

#: veilml's layers, top first: (rank, module prefixes). The two model families share a rank and may
#: not import each other; ``_isolation`` and, below it, ``data`` and ``errors`` are leaves any layer may use.
LAYERS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (9, ("veilml.__main__",)),
    (8, ("veilml.cli",)),
    (7, ("veilml.models.lora", "veilml.models.trees")),
    (6, ("veilml.linear",)),
    (5, ("veilml.serving",)),
    (4, ("veilml.runtime",)),
    (3, ("veilml.compiler",)),
    (2, ("veilml.quantization",)),
    (1, ("veilml._isolation",)),
    (0, ("veilml.data", "veilml.errors", "veilml._lazy")),
)


def module_names(package_dir: Path) -> dict[str, Path]:
    """``{dotted module name: file}`` for every ``.py`` file below ``package_dir``."""
    base = package_dir.parent
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(base).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def import_nodes(tree: ast.AST, deferred: bool) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements that run at import time (all of them if ``deferred``)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
            continue
        if not deferred and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)  # only the else branch runs
            continue
        stack.extend(ast.iter_child_nodes(node))


def _package_of(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def imported_modules(module: str, path: Path, modules: dict[str, Path], deferred: bool) -> set[str]:
    """The package's modules that ``module`` imports."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in import_nodes(tree, deferred):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules:
                    found.add(alias.name)
            continue
        if node.level:
            package = _package_of(module, path).split(".")
            if node.level - 1 > len(package) - 1:
                continue  # beyond the top of the package
            anchor = ".".join(package[: len(package) - (node.level - 1)])
            target = f"{anchor}.{node.module}" if node.module else anchor
        else:
            target = node.module or ""
        for alias in node.names:
            submodule = f"{target}.{alias.name}"
            if submodule in modules:
                found.add(submodule)
            elif target in modules:
                found.add(target)
    found.discard(module)
    return found


def import_graph(package_dir: Path, deferred: bool = False) -> dict[str, set[str]]:
    modules = module_names(package_dir)
    return {name: imported_modules(name, path, modules, deferred) for name, path in modules.items()}


def _components(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components (Tarjan), iteratively."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def _cycle_in(component: list[str], graph: dict[str, set[str]]) -> list[str]:
    """One cycle through the first module of a strongly connected component (shortest, by BFS)."""
    members = set(component)
    start = component[0]
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node] & members):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    return component  # unreachable for a component of two or more modules


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per group of modules that import each other, each as ``[a, b, ..., a]``."""
    return [_cycle_in(c, graph) for c in _components(graph) if len(c) > 1]


def layer_of(module: str) -> tuple[int, str] | None:
    """(rank, prefix) of the layer ``module`` belongs to (the longest matching prefix), or None."""
    found = None
    for rank, prefixes in LAYERS:
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (found is None or len(prefix) > len(found[1])):
                found = (rank, prefix)
    return found


def upward_imports(graph: dict[str, set[str]]) -> list[tuple[str, str, str, str]]:
    """Every import from a lower layer to a higher one (or between model families): (a, a's layer, b, b's layer)."""
    found = []
    for module, targets in sorted(graph.items()):
        own = layer_of(module)
        for target in sorted(targets):
            theirs = layer_of(target)
            if own is None or theirs is None:
                continue
            if theirs[0] > own[0] or (theirs[0] == own[0] and theirs[1] != own[1]):
                found.append((module, own[1], target, theirs[1]))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("package", nargs="?", type=Path, default=DEFAULT_PACKAGE, help="the package directory")
    parser.add_argument("--include-deferred", action="store_true", help="count imports inside functions too")
    args = parser.parse_args(argv)
    if not (args.package / "__init__.py").is_file():
        parser.error(f"{args.package} is not a package directory (no __init__.py)")
    graph = import_graph(args.package, deferred=args.include_deferred)
    cycles = find_cycles(graph)
    kind = "imports, inside functions included" if args.include_deferred else "module-level imports"
    for cycle in cycles:
        print("import cycle: " + " -> ".join(cycle))
    upward = upward_imports(graph)
    for module, own, target, theirs in upward:
        print(f"upward import: {module} ({own}) -> {target} ({theirs})")
    edges = sum(len(targets) for targets in graph.values())
    if cycles or upward:
        print(f"{len(cycles)} import cycle(s) and {len(upward)} upward import(s) among {len(graph)} modules ({edges} {kind})")
        return 1
    print(f"no import cycle and no upward import among {len(graph)} modules ({edges} {kind})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
