"""The tree is the architecture: the README's list of packages matches the folders, no module imports
another in a circle, long modules say why, and test-only or storage internals stay out of the pipeline."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.support.paths import REPO

PACKAGE = REPO / "rag_service"
MAX_LINES = 400
LONG_REASON = "Longer than 400 lines"


def _architecture_block() -> str:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Architecture\n") :]
    section = section[: section.index("\n## ", 1)]
    return section[section.index("```\n") + 4 : section.index("\n```", section.index("```\n") + 4)]


def _packages() -> set[str]:
    return {
        str(init.parent.relative_to(REPO)).replace("\\", "/") + "/" for init in PACKAGE.rglob("__init__.py")
    }


def test_the_readme_architecture_is_the_tree_of_packages_and_modules() -> None:
    lines = _architecture_block().splitlines()
    named = [line.split()[0] for line in lines]
    assert all(re.fullmatch(r"rag_service/([a-z_]+/)*", n) for n in named), named
    assert len(named) == len(set(named)), "a package is listed twice"
    assert set(named) == _packages(), (
        f"missing from the README: {sorted(_packages() - set(named))}; "
        f"named but not there: {sorted(set(named) - _packages())}"
    )
    for line in lines:  # a package's line names exactly its modules
        package = REPO / line.split()[0]
        named_modules = set(re.findall(r"\b([a-z_]+\.py)\b", line))
        modules = {p.name for p in package.glob("*.py") if p.name != "__init__.py"}
        assert named_modules == modules, (
            f"{line.split()[0]}: not named {sorted(modules - named_modules)}, "
            f"not there {sorted(named_modules - modules)}"
        )


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The rag_service modules ``path`` imports, at the top or inside a function (a deferred import
    hides a circle, it does not remove it)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rag_service"):
            found.add(node.module)
            for alias in node.names:  # `from rag_service.api import documents` imports a module
                candidate = f"{node.module}.{alias.name}"
                if (REPO / (candidate.replace(".", "/") + ".py")).is_file():
                    found.add(candidate)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("rag_service")}
    return found


def test_no_module_imports_another_in_a_circle() -> None:
    graph = {_module_name(p): _imports(p) for p in PACKAGE.rglob("*.py")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for dep in sorted(graph.get(module, ())):
            if dep not in graph:
                continue
            if state.get(dep) == 1:
                cycle = [*stack[stack.index(dep) :], dep]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_long_modules_say_why_at_the_top() -> None:
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        if text.count("\n") > MAX_LINES:
            docstring = ast.get_docstring(ast.parse(text)) or ""
            assert LONG_REASON in docstring, f"{path.relative_to(REPO)} is over {MAX_LINES} lines; say why"


def test_the_pipeline_knows_neither_sqlite_nor_the_fault_delays() -> None:
    for path in (PACKAGE / "pipeline").glob("*.py"):
        imports = {
            alias.name
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Import)
            for alias in node.names
        } | {
            node.module or ""
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.ImportFrom)
        }
        assert "sqlite3" not in imports, path
        assert not any("testing" in name for name in imports), path
        assert '"interrupt"' not in path.read_text(), path
