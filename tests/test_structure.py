"""The package's shape (issue 18): no import cycles, no module importing another's private names,
no module over 400 lines, no function over 80 lines without a one-line reason, and the command
line's light paths free of torch, scanpy and squidpy."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "slidecell"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80
#: a function may be longer when its ``def`` line carries this comment with a reason
LONG_REASON = "# long:"


def _modules() -> dict[str, tuple[Path, bool]]:
    mods = {}
    for p in PACKAGE.rglob("*.py"):
        parts = list(p.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        mods[".".join(parts[:-1] if is_pkg else parts)] = (p, is_pkg)
    return mods


def _imports(mod: str, is_pkg: bool, tree: ast.AST):
    """(target module, imported name, line) of every import of slidecell, at any depth (function
    bodies included: an import inside a function is still a dependency)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "slidecell":
                for alias in node.names:
                    yield target, alias.name, node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "slidecell":
                    yield alias.name, None, node.lineno


def _graph():
    mods = _modules()
    graph = {m: set() for m in mods}
    private = []
    for mod, (path, is_pkg) in mods.items():
        for target, name, line in _imports(mod, is_pkg, ast.parse(path.read_text())):
            sub = f"{target}.{name}" if name else None
            if sub in mods:  # `from . import module`
                dest = sub
            else:
                dest = target
                if name and name.startswith("_") and not name.startswith("__") and dest != mod:
                    private.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {dest}.{name}")
            if dest != mod and dest in mods:
                graph[mod].add(dest)
    return graph, private


def _cycles(graph: dict[str, set]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    graph, _ = _graph()
    assert _cycles(graph) == []


def test_a_cycle_would_be_found():
    """The walk itself: a module importing its importer is a cycle."""
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


def test_no_module_imports_another_modules_private_names():
    _, private = _graph()
    assert private == []


def test_modules_and_functions_are_small():
    big, long = [], []
    for mod, (path, _) in _modules().items():
        text = path.read_text()
        lines = text.splitlines()
        if len(lines) > MAX_MODULE_LINES:
            big.append(f"{mod}: {len(lines)} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES and LONG_REASON not in lines[node.lineno - 1]:
                    long.append(f"{mod}.{node.name}: {n} lines")
    assert big == [] and long == []


def _imported_by(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys\nprint(' '.join(sys.modules))"],
                         capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_light_paths_import_no_heavy_packages():
    """`slidecell --help`, reading a config and opening a slide (`info`) import neither torch nor
    the analysis stack."""
    heavy = {"torch", "scanpy", "squidpy"}
    assert not heavy & _imported_by("import slidecell.cli")
    assert not heavy & _imported_by("from slidecell.config import load_config\nload_config('he-brightfield')")
    assert not heavy & _imported_by("import slidecell.io\nimport slidecell.tiling")
