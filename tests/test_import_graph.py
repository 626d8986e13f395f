"""The import graph of effscale's packages, read from the source (``ast``), not by importing:
no cycles; nothing outside ``effscale.search.commands`` imports a command module; imports sit at
the top of modules, except the heavy optional ones; and ``import search`` finds nothing that
effscale installed."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import effscale.detector
import effscale.search

#: what a function body may import: heavy or optional third-party modules, and the project
#: modules that import one of them at their top (the Ray backend)
LAZY_ALLOWED = ("ray", "matplotlib", "optuna_dashboard", "effdet", "torch._dynamo")
LAZY_PROJECT = ("effscale.search.runners.ray_driver",)


def _modules() -> dict[str, Path]:
    found = {}
    for package in (effscale.search, effscale.detector):
        root = Path(package.__path__[0])
        for path in root.rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package.__name__, *parts])] = path
    return found


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _resolve(module: str, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The effscale modules ``node`` in ``module`` imports (submodules named in a ``from``
    import included)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in MODULES]
    if node.level:
        base = module.split(".") if _is_package(module) else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    targets = [target] if target in MODULES else []
    targets += [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES]
    return targets


def _type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(module: str) -> tuple[list[str], list[tuple[int, str]]]:
    """(effscale modules imported at run time, (line, module) of imports inside functions)."""
    tree = ast.parse(MODULES[module].read_text())
    runtime: list[str] = []
    lazy: list[tuple[int, str]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        if _type_checking_block(node):
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            runtime.extend(_resolve(module, node))
            if in_function:
                resolved = _resolve(module, node)
                names = (
                    resolved[1:]
                    or resolved
                    or [  # a "from pkg import sub": the submodule
                        node.module
                        if isinstance(node, ast.ImportFrom) and node.module
                        else node.names[0].name
                    ]
                )
                lazy.extend((node.lineno, name) for name in names)
        for child in ast.iter_child_nodes(node):
            visit(child, in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)))

    visit(tree, False)
    return runtime, lazy


def test_the_packages_have_modules():
    assert "effscale.search.trials" in MODULES and "effscale.detector.scaling" in MODULES
    assert len(MODULES) > 40


def import_cycles() -> list[list[str]]:
    """Every cycle of run-time imports between effscale modules (a module importing its own
    package's ``__init__``, the package's face, is not one)."""
    graph = {m: sorted(set(_imports(m)[0]) - {m}) for m in MODULES}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def walk(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in graph[node]:
            if _is_package(nxt) and node.startswith(nxt + "."):
                continue
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                walk(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            walk(module)
    return cycles


def test_no_import_cycle():
    cycles = import_cycles()
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_only_the_command_line_imports_the_commands():
    commands = "effscale.search.commands"
    offenders = [
        (m, target)
        for m in MODULES
        if not (m.startswith(commands) or m == "effscale.search.cli")
        for target in _imports(m)[0]
        if target == commands or target.startswith(commands + ".")
    ]
    assert offenders == []


def test_imports_sit_at_the_top_except_heavy_optional_ones():
    offenders = []
    for module in sorted(MODULES):
        for line, name in _imports(module)[1]:
            if name.split(".")[0] in LAZY_ALLOWED or name.startswith(LAZY_ALLOWED):
                continue
            if name in LAZY_PROJECT:
                continue
            offenders.append(f"{module}:{line} imports {name} inside a function")
    assert offenders == []


def test_the_walker_sees_a_cycle_and_a_lazy_import(tmp_path, monkeypatch):
    """The checks above can fail: two made-up modules that import each other, one of them
    inside a function, are caught by both."""
    a, b = tmp_path / "fake_a.py", tmp_path / "fake_b.py"
    a.write_text("from .fake_b import y\n")
    b.write_text("def f():\n    from .fake_a import x\n")
    monkeypatch.setitem(MODULES, "effscale.search.fake_a", a)
    monkeypatch.setitem(MODULES, "effscale.search.fake_b", b)
    assert _imports("effscale.search.fake_b") == (
        ["effscale.search.fake_a"],
        [(2, "effscale.search.fake_a")],
    )
    assert [
        "effscale.search.fake_a",
        "effscale.search.fake_b",
        "effscale.search.fake_a",
    ] in import_cycles()
    with pytest.raises(AssertionError, match="fake_b:2 imports effscale.search.fake_a inside"):
        test_imports_sit_at_the_top_except_heavy_optional_ones()


@pytest.mark.parametrize("name", ["search", "detector"])
def test_the_bare_names_are_not_installed(name, tmp_path):
    """``import search`` (or ``detector``) outside the repository finds nothing effscale
    installed; ``effscale.search`` and ``effscale.detector`` import."""
    code = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({name!r}) is not None)"
    assert subprocess.run([sys.executable, "-c", code], cwd=tmp_path).returncode == 0
    ok = subprocess.run(
        [sys.executable, "-c", "import effscale.search, effscale.detector"], cwd=tmp_path
    )
    assert ok.returncode == 0


def test_the_folders_refuse_their_bare_names(tmp_path):
    """From the repository root (where the folders are on ``sys.path``), ``import search``
    fails with the fix instead of shadowing the installed package."""
    repo = Path(effscale.search.__path__[0]).parent
    result = subprocess.run(
        [sys.executable, "-c", "import search"], cwd=repo, capture_output=True, text=True
    )
    assert result.returncode != 0 and "import effscale.search" in result.stderr


def test_help_imports_no_command_module_and_no_torch():
    """``effscale --help`` builds the parser without any command's module, so without torch
    (the figure for its wall time is in the session notes, not asserted here)."""
    code = (
        "import sys\n"
        "from effscale.search.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "loaded = [m for m in sys.modules if m.startswith(('torch', 'optuna', 'effscale.search.commands.'))]\n"
        "print(loaded, file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and "COMMAND" in result.stdout
    assert result.stderr.strip() == "[]"
