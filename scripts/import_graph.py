"""Which heatjob module imports which, and whether the layout's rules hold.

    python scripts/import_graph.py            # the graph, one module a line, then the checks
    python scripts/import_graph.py --check    # only the checks; exit 1 if one fails

Read from the source (ast), nothing imported. Every import that runs counts, also those
inside functions, so a lazy import cannot hide a cycle; imports under `if TYPE_CHECKING:`
run never and count not. The rules
(CONTRIBUTING.md): no cycle between modules; only heatjob/job/runner.py imports ray;
only heatjob/store/ imports zarr; the pure core (LRP rules, metrics, the plan) imports
neither ray nor zarr nor any heatjob module that does.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "heatjob"
RAY_ALLOWED = {"heatjob.job.runner"}
ZARR_PREFIX = "heatjob.store"
TYPE_CHECKING = {"TYPE_CHECKING", "typing.TYPE_CHECKING"}
PURE_CORE = {"heatjob.attribution.lrp.rules", "heatjob.eval.metrics", "heatjob.job.plan"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> tuple[set[str], set[str]]:
    """(heatjob modules, top-level outside packages) that the file imports."""
    ours, outside = set(), set()
    tree = ast.parse(path.read_text(), str(path))
    typing_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test) in TYPE_CHECKING
        for inner in ast.walk(node)
    }
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from heatjob.eval import metrics` imports the module heatjob.eval.metrics
            names = [f"{node.module}.{alias.name}" for alias in node.names]
            if not any(name in modules for name in names):
                names = [node.module]
        else:
            continue
        for name in names:
            if name.split(".")[0] != "heatjob":
                outside.add(name.split(".")[0])
            elif name in modules:
                ours.add(name)
    return ours, outside


def graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    files = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
    edges, outside = {}, {}
    for name, path in files.items():
        ours, other = imports_of(path, set(files))
        # a package's own __init__ is imported by any of its modules; not an edge that counts
        edges[name] = {m for m in ours if m != name and not name.startswith(m + ".")}
        outside[name] = other
    return edges, outside


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Each cycle once, found by depth-first search."""
    found, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node)
    return found


def reachable(edges: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in edges.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def problems(edges: dict[str, set[str]], outside: dict[str, set[str]]) -> list[str]:
    out = [f"cycle: {' -> '.join(c)}" for c in cycles(edges)]
    for name, other in sorted(outside.items()):
        if "ray" in other and name not in RAY_ALLOWED:
            out.append(f"{name} imports ray (only {', '.join(sorted(RAY_ALLOWED))} may)")
        if "zarr" in other and not name.startswith(ZARR_PREFIX):
            out.append(f"{name} imports zarr (only {ZARR_PREFIX}.* may)")
    for core in sorted(PURE_CORE):
        for dep in sorted({core} | reachable(edges, core)):
            if {"ray", "zarr"} & outside.get(dep, set()):
                out.append(f"pure core {core} reaches {dep}, which imports ray or zarr")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="print only the checks")
    args = parser.parse_args()
    edges, outside = graph()
    if not args.check:
        for name in sorted(edges):
            external = sorted(outside[name] & {"ray", "zarr", "torch", "xarray"})
            extra = f"   [{', '.join(external)}]" if external else ""
            print(f"{name} -> {', '.join(sorted(edges[name])) or '-'}{extra}")
        print()
    found = problems(edges, outside)
    for line in found:
        print(f"FAIL {line}")
    if not found:
        print(f"ok: {len(edges)} modules, no cycle, ray and zarr only where the layout allows")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
