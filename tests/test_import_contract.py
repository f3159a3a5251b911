"""The import contract: attnconv's packages form layers and imports only go downwards.

    errors -> atomic, suggest, textable -> layers, data -> models, theorem -> train, flops
           -> analysis, bench, prune -> commands -> cli -> __main__

A module may import its own top-level package and any package of a lower layer; packages of
one layer are independent of each other. Nothing but the CLI imports ``attnconv.commands``:
what a command needs lives in the library. Every import is checked, function-local ones and
``importlib.import_module("attnconv....")`` calls included, by walking the source's AST (no
import is executed). The root package ``attnconv`` (``__version__`` and its lazy facade) may be
imported from anywhere.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = "attnconv"
SRC = Path(__file__).resolve().parents[1] / "src" / PACKAGE

# Lowest first. The root package itself ("") is the facade, importable from every layer; above
# the exceptions come small utilities every layer may use (atomic writes, suggestions, text tables).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("", "errors"),
    ("atomic", "suggest", "textable"),
    ("layers", "data"),
    ("models", "theorem"),
    ("train", "flops"),
    ("analysis", "bench", "prune"),
    ("commands",),
    ("cli",),
    ("__main__",),
)
RANK = {component: rank for rank, group in enumerate(LAYERS) for component in group}


@dataclass(frozen=True)
class Edge:
    """One import of an attnconv module by a module of the tree."""

    path: Path
    line: int
    source: str  # importing module, dotted
    target: str  # imported module (or module.name), dotted


def module_name(path: Path, root: Path) -> str:
    """``root/a/b.py`` -> ``attnconv.a.b``; a package's ``__init__.py`` -> the package."""
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve_relative(source: str, is_package: bool, module: str | None, level: int) -> str:
    package = source.split(".") if is_package else source.split(".")[:-1]
    base = package[: len(package) - (level - 1)]
    return ".".join([*base, module] if module else base)


def _dynamic_target(node: ast.Call) -> str | None:
    """The module named by ``importlib.import_module(...)``/``__import__(...)``, if literal.

    An f-string counts by its literal prefix (``f"attnconv.commands.{name}"``).
    """
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if name not in ("import_module", "__import__") or not node.args:
        return None
    arg = node.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    if (isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant)
            and isinstance(arg.values[0].value, str)):
        return arg.values[0].value.rstrip(".")
    return None


def imports_of(path: Path, root: Path) -> list[Edge]:
    """Every import of a module under ``root``'s package in one file, anywhere in the file."""
    source = module_name(path, root)
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = (_resolve_relative(source, is_package, node.module, node.level)
                      if node.level else node.module or "")
            # ``from pkg import sub`` imports the module pkg.sub when sub is one.
            for alias in node.names:
                sub = root.parent.joinpath(*module.split("."), alias.name)
                is_module = sub.with_suffix(".py").is_file() or (sub / "__init__.py").is_file()
                found.append((node.lineno, f"{module}.{alias.name}" if is_module else module))
        elif isinstance(node, ast.Call) and (target := _dynamic_target(node)):
            found.append((node.lineno, target))
    return [Edge(path, line, source, target) for line, target in dict.fromkeys(found)
            if target == root.name or target.startswith(root.name + ".")]


def component(module: str) -> str:
    """``attnconv.analysis.report`` -> ``analysis``; the root package -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def violations(root: Path) -> list[str]:
    """One line per import that breaks the contract (or module outside every layer)."""
    problems: list[str] = []
    for path in sorted(root.rglob("*.py")):
        where = path.relative_to(root.parent)
        own = component(module_name(path, root))
        if own not in RANK:
            problems.append(f"{where}: {root.name}.{own} is in no layer; add it to LAYERS in "
                            "tests/test_import_contract.py")
            continue
        for edge in imports_of(path, root):
            other = component(edge.target)
            if other == own:
                continue
            if other not in RANK:
                problems.append(f"{where}:{edge.line} imports {edge.target}, which is in no "
                                "layer")
            elif RANK[other] >= RANK[own]:
                kind = "a sibling of the same layer" if RANK[other] == RANK[own] else "a higher"
                problems.append(f"{where}:{edge.line} imports {edge.target}: {own or PACKAGE} "
                                f"(layer {RANK[own]}) may not import {other} ({kind}"
                                f"{' layer' if kind == 'a higher' else ''}, layer {RANK[other]})")
    return problems


def test_imports_only_go_down_the_layers() -> None:
    problems = violations(SRC)
    assert not problems, "import contract broken:\n" + "\n".join(problems)


def test_only_the_cli_imports_commands() -> None:
    importers = sorted({str(edge.path.relative_to(SRC.parent))
                        for path in SRC.rglob("*.py") for edge in imports_of(path, SRC)
                        if component(edge.target) == "commands"
                        and component(edge.source) != "commands"})
    assert importers == ["attnconv/cli.py"]


def _write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


@pytest.fixture
def fake_tree(tmp_path: Path) -> Path:
    root = tmp_path / PACKAGE
    for package in ("", "layers", "models", "analysis", "commands", "bench"):
        _write(root, f"{package}/__init__.py" if package else "__init__.py", "")
    _write(root, "commands/table1.py", "X = 1\n")
    _write(root, "models/net.py", "from attnconv.layers import A\n")  # downwards: fine
    _write(root, "cli.py", "import importlib\nimportlib.import_module(f'attnconv.commands.{n}')\n")
    return root


def test_the_walk_finds_local_relative_and_dynamic_imports(fake_tree: Path) -> None:
    assert violations(fake_tree) == []
    _write(fake_tree, "analysis/report.py",
           "def f():\n    from ..commands import table1\n")
    _write(fake_tree, "layers/attn.py",
           "import importlib\nimportlib.import_module('attnconv.models')\n")
    _write(fake_tree, "analysis/x.py", "from attnconv import bench\n")
    _write(fake_tree, "widgets.py", "")
    problems = violations(fake_tree)
    assert problems[0].startswith("attnconv/analysis/report.py:2 imports attnconv.commands.table1")
    assert "layer 5) may not import commands" in problems[0]
    assert problems[1].startswith("attnconv/analysis/x.py:1 imports attnconv.bench")
    assert "sibling" in problems[1]
    assert problems[2].startswith("attnconv/layers/attn.py:2 imports attnconv.models")
    assert problems[3].startswith("attnconv/widgets.py: attnconv.widgets is in no layer")
    assert len(problems) == 4
