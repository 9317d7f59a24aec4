"""The package layout: subpackages in one import order, no cycles, no private names across modules.

Every import counts, also one inside a function: keras_mtl.<a> may import keras_mtl.<b> only when
b comes no later than a in ORDER. The parse uses the standard ``ast`` module; nothing is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "keras_mtl"
ORDER = ("core", "features", "data", "tasks", "models", "runs", "training", "deploy", "compression", "studies", "cli")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str, path: Path, known: dict) -> list[tuple[str, str | None, int]]:
    """(target module, imported name or None, line) for every keras_mtl import of a module."""
    found = []
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(a.name, None, node.lineno) for a in node.names if a.name.startswith("keras_mtl")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                base = ".".join(anchor[: len(anchor) - node.level + 1] + ([base] if base else []))
            if not base.startswith("keras_mtl"):
                continue
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.append((full, None, node.lineno) if full in known else (base, alias.name, node.lineno))
    return found


def subpackage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def graph():
    known = modules()
    edges, problems = {m: set() for m in known}, []
    for name, path in known.items():
        for target, imported, line in imports(name, path, known):
            where = f"{path.relative_to(PACKAGE.parent)}:{line}"
            if target not in known:
                problems.append(f"{where}: imports {target}, which does not exist")
                continue
            edges[name].add(target)
            if imported and imported.startswith("_") and not imported.startswith("__") and target != name:
                problems.append(f"{where}: imports the private name {imported} from {target}")
            source_pkg, target_pkg = subpackage(name), subpackage(target)
            if source_pkg in ORDER and target_pkg in ORDER and ORDER.index(target_pkg) > ORDER.index(source_pkg):
                problems.append(f"{where}: {source_pkg} imports {target} (from {target_pkg}, later in the order)")
    return edges, problems


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in list(edges):
        if v not in index:
            visit(v)
    return found


def test_every_subpackage_is_in_the_order_and_says_what_it_is_for():
    packages = sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py"))
    assert sorted(packages) == sorted(ORDER)
    assert not [p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"], "modules belong in a subpackage"
    for name in ORDER:
        doc = ast.get_docstring(ast.parse((PACKAGE / name / "__init__.py").read_text()))
        assert doc and len(doc.splitlines()) == 1, f"keras_mtl/{name}/__init__.py: one line on what it is for"


def test_imports_follow_the_order_without_private_names():
    _, problems = graph()
    assert not problems, "\n".join(problems)


def test_no_import_cycles():
    edges, _ = graph()
    assert not cycles(edges), cycles(edges)


def test_the_checker_finds_each_kind_of_problem(tmp_path):
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(edges) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
