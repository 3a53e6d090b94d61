"""The package's layering, checked on the source: settings become objects only at the top, and no imports go
round in a circle.

Imports are read with ``ast`` (nothing is imported to check them): every ``import``/``from … import`` of a
``unimodel`` module, at module level or inside a function, with ``if TYPE_CHECKING:`` blocks told apart.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "unimodel"

#: the packages below the server and the CLI: each takes its own small settings types
BELOW_THE_SERVER = ("engines", "service", "shapes", "gateway", "telemetry", "images", "formats", "protocol", "plan")
#: what config.py may import of the project: the error tree and the small settings types it is typed with
CONFIG_MAY_IMPORT = {"unimodel.errors", "unimodel.formats.reasoning", "unimodel.gateway.policy",
                     "unimodel.images.decode", "unimodel.protocol.effort", "unimodel.telemetry.alert_rules",
                     "unimodel.secret_files",  # the reader of the --*-file secrets, used when settings load
                     "unimodel.config_values"}  # the config file reader and the URL, host and origin checks


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[str, bool, bool]]:
    """(module, at module level, only for type checking) for every import of a unimodel module in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found: list[tuple[str, bool, bool]] = []

    def visit(node: ast.AST, top: bool, typing_only: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for stmt in child.body:
                    visit_stmt(stmt, top, True)
                for stmt in child.orelse:
                    visit_stmt(stmt, top, typing_only)
                continue
            visit_stmt(child, top, typing_only)

    def visit_stmt(stmt: ast.AST, top: bool, typing_only: bool) -> None:
        if isinstance(stmt, ast.Import):
            found.extend((a.name, top, typing_only) for a in stmt.names if a.name.startswith("unimodel"))
        elif isinstance(stmt, ast.ImportFrom):
            base = stmt.module or ""
            if stmt.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - stmt.level + 1] + ([base] if base else []))
            if base.startswith("unimodel"):
                found.append((base, top, typing_only))
                found.extend((f"{base}.{a.name}", top, typing_only) for a in stmt.names
                             if (ROOT.parent / f"{base}.{a.name}".replace(".", "/")).with_suffix(".py").exists()
                             or (ROOT.parent / f"{base}.{a.name}".replace(".", "/")).is_dir())
        else:
            inner = top and not isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda))
            visit(stmt, inner, typing_only)

    visit(tree, True, False)
    return found


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


@pytest.mark.parametrize("package", BELOW_THE_SERVER)
def test_no_package_below_the_server_imports_the_settings(package: str) -> None:
    offenders = [(name, target) for name, path in MODULES.items() if name.startswith(f"unimodel.{package}")
                 for target, _, _ in imports(path)
                 if target in ("unimodel.config", "unimodel.compose", "unimodel.cli")
                 or target.startswith(("unimodel.server", "unimodel.config."))]
    assert offenders == []


def test_config_imports_only_the_small_settings_types() -> None:
    targets = {target for target, _, _ in imports(MODULES["unimodel.config"])}
    assert targets <= CONFIG_MAY_IMPORT, targets - CONFIG_MAY_IMPORT


def test_the_engine_kind_is_decided_only_in_the_composition_root() -> None:
    offenders = [name for name, path in MODULES.items() if name != "unimodel.compose"
                 and "settings.engine" in path.read_text(encoding="utf-8")]
    assert offenders == []


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle of ``graph`` (as a path that returns to its start), or [] when there is none."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := dfs(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state and (found := dfs(node)):
            return found
    return []


def test_no_module_import_cycle() -> None:
    """Module-level imports (the ones that run at import time) never go round in a circle."""
    graph = {name: {t for t, top, typing_only in imports(path) if top and not typing_only and t in MODULES
                    and t != name and not name.startswith(t + ".")}
             for name, path in MODULES.items()}
    assert _cycle(graph) == []


def test_no_package_import_cycle() -> None:
    """Between the top-level packages, every import counts (a lazy one inside a function too; type-checking
    ones aside): the dependencies point one way."""
    def top(name: str) -> str:
        return ".".join(name.split(".")[:2])

    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        for target, _, typing_only in imports(path):
            if not typing_only and top(target) != top(name):
                graph.setdefault(top(name), set()).add(top(target))
    assert _cycle(graph) == []


def test_the_cycle_finder_finds_one() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}}) == []
