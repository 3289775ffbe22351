"""The modules of `lamina.tokenizers` import each other in one direction only: no cycle, and no
import hidden inside a function to dodge one."""

from __future__ import annotations

import ast
from pathlib import Path

import lamina.tokenizers

PACKAGE = Path(lamina.tokenizers.__file__).parent


def _imports() -> tuple[dict[str, set[str]], dict[str, list[int]]]:
    """(module → the package modules it imports at its top, module → lines of imports inside functions)."""
    graph, hidden = {}, {}
    for path in sorted(PACKAGE.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        graph[path.stem] = {node.module.split(".")[0] for node in tree.body
                            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module}
        top = {id(node) for node in tree.body}
        hidden[path.stem] = [node.lineno for node in ast.walk(tree)
                             if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in top]
    return graph, hidden


def test_no_import_cycle_inside_the_package() -> None:
    graph, _ = _imports()
    assert {"base", "files", "classes", "mluke"} <= set(graph)

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, f"import cycle: {' -> '.join((*path, module))}"
        for dependency in sorted(graph.get(module, ())):
            visit(dependency, (*path, module))

    for module in graph:
        visit(module, ())


def test_no_function_local_imports() -> None:
    _, hidden = _imports()
    assert {module: lines for module, lines in hidden.items() if lines} == {}
