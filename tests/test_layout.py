"""The package's shape (issue 18): imports point down (no circle), no module over 400 lines, no function body over
60 lines without a reason in its docstring ("Long because ..."). A body is counted from its first statement after
the docstring: a typer command's option declarations are its signature, not its logic."""

import ast
from pathlib import Path

import diffedit

ROOT = Path(diffedit.__file__).parent
MODULES = {p: ".".join(("diffedit",) + p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
           for p in ROOT.rglob("*.py")}


def _imports(path: Path, name: str) -> set[str]:
    """diffedit modules that `name` imports at module level (lazy imports inside functions are not edges)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                out.add(full if full in MODULES.values() else base)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m.startswith("diffedit")}


def test_no_import_circle():
    graph = {name: _imports(path, name) for path, name in MODULES.items()}
    state: dict[str, int] = {}

    def visit(node, trail):
        state[node] = 1
        for nxt in graph.get(node, ()):
            if nxt == node or nxt not in graph:
                continue
            assert state.get(nxt) != 1, "import circle: " + " -> ".join(trail + [nxt])
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [name])


def test_modules_and_functions_stay_small():
    long_modules = {str(p.relative_to(ROOT)): n for p in MODULES if (n := len(p.read_text().splitlines())) > 400}
    assert not long_modules, f"modules over 400 lines: {long_modules}"
    long_functions = []
    for path in MODULES:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            body = node.body[1:] if ast.get_docstring(node) is not None and len(node.body) > 1 else node.body
            length = node.end_lineno - body[0].lineno + 1
            if length > 60 and "Long because" not in (ast.get_docstring(node) or ""):
                long_functions.append(f"{path.relative_to(ROOT)}:{node.name} ({length})")
    assert not long_functions, f"functions over 60 lines without a reason: {long_functions}"
