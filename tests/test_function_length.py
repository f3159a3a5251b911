"""No function or method in ``src/attnconv`` is longer than :data:`MAX_LINES` lines.

A function's length is ``end_lineno - lineno + 1`` of its ``def`` (decorators excluded, the
docstring and nested functions included); a nested function is also measured on its own.
"""

from __future__ import annotations

import ast
from pathlib import Path

import attnconv

MAX_LINES = 80
SRC = Path(attnconv.__file__).resolve().parent


def function_lengths(source: str) -> list[tuple[str, int, int]]:
    """``(qualified name, first line, length)`` of every function and method in ``source``."""
    found: list[tuple[str, int, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                assert child.end_lineno is not None
                found.append((name, child.lineno, child.end_lineno - child.lineno + 1))
                visit(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(source), "")
    return found


def _function_source(body_lines: int, decorators: int = 0, indent: str = "") -> str:
    """A function of ``1 + body_lines`` lines under ``decorators`` decorator lines."""
    lines = [f"{indent}@staticmethod"] * decorators + [f"{indent}def f():"]
    lines += [f"{indent}    x = {i}" for i in range(body_lines)]
    return "\n".join(lines) + "\n"


def test_length_counts_def_to_last_line_without_decorators() -> None:
    source = "class C:\n" + _function_source(MAX_LINES, decorators=3, indent="    ")
    assert function_lengths(source) == [("C.f", 5, MAX_LINES + 1)]


def test_nested_functions_are_measured_on_their_own() -> None:
    source = "def outer():\n" + _function_source(2, indent="    ") + "    return f\n"
    assert function_lengths(source) == [("outer", 1, 5), ("outer.f", 2, 3)]


def test_src_is_found() -> None:
    files = list(SRC.rglob("*.py"))
    assert SRC.name == "attnconv" and (SRC / "__init__.py") in files and len(files) > 10


def test_no_function_in_src_is_longer_than_the_limit() -> None:
    too_long = []
    for path in sorted(SRC.rglob("*.py")):
        for name, line, length in function_lengths(path.read_text(encoding="utf-8")):
            if length > MAX_LINES:
                too_long.append(f"{path.relative_to(SRC.parent)}:{line} {name}: {length} lines")
    assert not too_long, (f"functions longer than {MAX_LINES} lines (split them into steps):\n"
                          + "\n".join(too_long))
