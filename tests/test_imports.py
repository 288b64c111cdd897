"""The package's import graph: no cycle (counting imports inside functions too), no private name
imported across modules, and every module importable alone in a fresh interpreter."""

import ast
import json
import subprocess
import sys
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


# Run in one fresh interpreter: import the third-party packages cdrlib's modules import (torch and
# the rest: most of each import's time), then fork one child per cdrlib module, which imports that
# module alone and reports. Every child starts with no cdrlib module loaded, as a fresh interpreter.
IMPORT_EACH_ALONE = r"""
import importlib, json, os, sys, traceback
names, third_party = json.loads(sys.argv[1]), json.loads(sys.argv[2])
for package in third_party:
    try:
        importlib.import_module(package)
    except ImportError:
        pass  # an optional dependency: the child's import reports it if a module needs it
assert not [m for m in sys.modules if m.split(".")[0] == "cdrlib"]
failed = {}
for name in names:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            importlib.import_module(name)
            os._exit(0)
        except BaseException:
            os.write(write, traceback.format_exc()[-1500:].encode())
            os._exit(1)
    os.close(write)
    with os.fdopen(read) as pipe:
        error = pipe.read()
    if os.waitpid(pid, 0)[1] != 0:
        failed[name] = error or "the child died without a traceback"
print(json.dumps(failed))
"""


def third_party_imports() -> list[str]:
    """The top-level packages outside cdrlib that cdrlib's modules import at their top level."""
    found = set()
    for path in module_names().values():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                found.add(node.module.split(".")[0])
    return sorted(found - {"cdrlib", "__future__"})


@pytest.mark.slow
def test_every_module_imports_alone_in_a_fresh_interpreter():
    names = sorted(module_names())
    third_party = third_party_imports()
    assert {"torch", "numpy"} <= set(third_party)  # the list is read right
    p = subprocess.run([sys.executable, "-c", IMPORT_EACH_ALONE, json.dumps(names), json.dumps(third_party)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    failed = json.loads(p.stdout.strip().splitlines()[-1])
    assert not failed, "\n\n".join(f"import {n} failed:\n{err}" for n, err in failed.items())


@pytest.mark.slow
def test_a_module_that_fails_alone_is_reported(tmp_path):
    """The forking check catches what a fresh interpreter would: a module that raises on import."""
    (tmp_path / "broken.py").write_text("import json\nraise RuntimeError('broken on import')\n")
    p = subprocess.run([sys.executable, "-c", IMPORT_EACH_ALONE, json.dumps(["json", "broken"]), "[]"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    failed = json.loads(p.stdout.strip().splitlines()[-1])
    assert list(failed) == ["broken"] and "broken on import" in failed["broken"]
