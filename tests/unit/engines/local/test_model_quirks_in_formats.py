"""Model quirks live in ``formats/``: no engine module names a model family's marker.

Under ``engines/local/`` (where the in-process engine used to hard-code them) not even a comment or a
docstring may; elsewhere under ``engines/`` no code may (a string literal that is not a docstring).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import unimodel.engines

MARKERS = ("[THINK]", "[/THINK]", "[TOOL_CALLS]", "[ARGS]", "[CALL_ID]", "<think>", "</think>", "<tool_call>",
           "</tool_call>")
ENGINES = Path(unimodel.engines.__file__).parent
MODULES = sorted(ENGINES.rglob("*.py"))


def _code_strings(tree: ast.AST) -> list[str]:
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    return [node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


@pytest.mark.parametrize("path", MODULES, ids=[str(p.relative_to(ENGINES)) for p in MODULES])
def test_no_engine_module_names_a_marker(path: Path) -> None:
    source = path.read_text(encoding="utf-8")
    if path.parent.name == "local":
        assert [m for m in MARKERS if m in source] == []
    named = [s for s in _code_strings(ast.parse(source)) if any(m in s for m in MARKERS)]
    assert named == []


def test_there_are_engine_modules() -> None:
    assert any(p.name == "engine.py" for p in MODULES) and len(MODULES) > 5
