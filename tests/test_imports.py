"""The package's import graph: no cycle (counting imports inside functions too), no private name
imported across modules, and every module importable alone in a fresh interpreter."""

import ast
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "cdrlib"


def module_names() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imported(name: str, path: Path, modules: dict) -> list[tuple[str, list[str]]]:
    """(module, names) of every cdrlib import in the file, wherever it sits (top level or not)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "cdrlib":
                found.append((target, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names if a.name.split(".")[0] == "cdrlib"]
    return found


def graph() -> dict[str, set[str]]:
    modules = module_names()
    edges = {m: set() for m in modules}
    for name, path in modules.items():
        for target, names in imported(name, path, modules):
            # `from .pkg import sub` imports the submodule; `from .mod import f` the module
            subs = {f"{target}.{n}" for n in names} & modules.keys()
            edges[name] |= subs or ({target} & modules.keys())
            if subs and len(subs) < len(names) and target in modules:
                edges[name].add(target)  # some names are attributes of the package itself
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph (its nodes, the first repeated at the end), or None."""
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(edges.get(m, ())):
            if state.get(n) == "open":
                return stack[stack.index(n):] + [n]
            if n not in state and (cycle := visit(n)):
                return cycle
        stack.pop()
        state[m] = "done"
        return None

    for m in sorted(edges):
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"a"}}) == ["a", "a"]


def test_the_import_graph_has_no_cycle():
    edges = graph()
    # the graph is read right: a few edges every version has
    assert "cdrlib.ibnm_train" in edges["cdrlib.experiment"]
    assert "cdrlib.ucdir_train" in edges["cdrlib.ibnm_train"]
    assert "cdrlib.data.errors" in edges["cdrlib.data.folders"]
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle: " + " → ".join(cycle)


def test_no_private_name_is_imported_across_modules():
    modules = module_names()
    found = [f"{name}: from {target} import {n}"
             for name, path in modules.items()
             for target, names in imported(name, path, modules)
             for n in names if n.startswith("_") and not n.startswith("__")]
    for chapter in sorted((ROOT / "book").glob("*.ipynb")):
        text = chapter.read_text()
        found += [f"{chapter.name}: {line.strip()}" for line in text.splitlines()
                  if "from cdrlib" in line and " import _" in line]
    assert not found, "private names used outside their module:\n" + "\n".join(found)


@pytest.mark.slow
def test_every_module_imports_alone_in_a_fresh_interpreter():
    def try_import(name):
        p = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
        return name, p.returncode, p.stderr[-1500:]

    with ThreadPoolExecutor(2) as pool:  # the machine's two cores
        failed = [r for r in pool.map(try_import, sorted(module_names())) if r[1] != 0]
    assert not failed, "\n\n".join(f"import {n} failed:\n{err}" for n, _, err in failed)
