"""The house: no import cycles between advkit's modules, and a command line that starts without torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "advkit"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_script_guard(node: ast.AST) -> bool:
    """``if __name__ == "__main__":`` -- its body runs only when the file is the script, never on import."""
    test = getattr(node, "test", None)
    return (
        isinstance(node, ast.If)
        and isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
        and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in test.comparators)
    )


def _imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement of a module except those under a script guard."""
    found, todo = [], [n for n in tree.body if not _is_script_guard(n)]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        todo.extend(c for c in ast.iter_child_nodes(node) if not _is_script_guard(c))
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the advkit modules it imports, at module level or inside functions (a lazy import is still a
    dependency: a cycle through one only hides until the day someone moves it). Imports under
    ``if __name__ == "__main__":`` are left out: ``python -m advkit.zoo.train`` runs that file as ``__main__``, and
    the module it then imports loads ``advkit.zoo.train`` afresh, so no cycle exists at run time."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([node.module] if node.module else [])])
                targets = [base, *(f"{base}.{a.name}" for a in node.names)]
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    graph = import_graph()
    assert "advkit.engine" in graph and "advkit.kernel" in graph["advkit.engine"]  # the graph is read
    assert cycles(graph) == []


def test_the_cycle_check_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_only_script_guards_are_left_out_of_the_graph():
    tree = ast.parse(
        "import a\ndef f():\n    import b\nif __name__ == '__main__':\n    import c\nif x:\n    import d\n"
    )
    assert sorted(n.names[0].name for n in _imports(tree)) == ["a", "b", "d"]


def test_the_command_line_starts_without_torch():
    code = (
        "import sys; from click.testing import CliRunner; from advkit.cli import cli; "
        "result = CliRunner().invoke(cli, ['--help']); assert result.exit_code == 0, result.output; "
        "print(sorted(m for m in ('torch', 'numpy', 'pandas', 'matplotlib') if m in sys.modules))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert run.stdout.strip() == "[]"


def _library_modules() -> list[str]:
    """Every advkit module outside the command line (advkit.cli and the ``python -m advkit`` entry)."""
    return sorted(
        m
        for m in (_module_name(p) for p in PACKAGE.rglob("*.py"))
        if not (m == "advkit.cli" or m.startswith("advkit.cli.") or m == "advkit.__main__")
    )


def test_the_library_is_click_free():
    """The CLI sits over the library: importing every library module (not only the ones that name click) leaves
    click unloaded, so a notebook or a Ray worker never pays for, or depends on, the command line."""
    modules = _library_modules()
    assert "advkit.studies.attack" in modules and "advkit.datasets" in modules and "advkit.cli.options" not in modules
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m == 'click' or m.startswith('click.')))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"
