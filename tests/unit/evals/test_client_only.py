"""``unimodel eval`` is a pure HTTP client: nothing in ``unimodel/evals`` imports the server's code."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import unimodel.evals

PACKAGE = Path(unimodel.evals.__file__).parent
SERVER_SIDE = ("unimodel.server", "unimodel.engines", "unimodel.service")


def test_no_module_of_the_package_imports_unimodel_outside_it() -> None:
    sources = sorted(PACKAGE.rglob("*.py"))
    assert len(sources) >= 10
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{path}: relative import"
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert not name.startswith("unimodel") or name.startswith("unimodel.evals"), f"{path}: {name}"


def test_running_an_evaluation_loads_nothing_of_the_server() -> None:
    code = (
        "import sys, unimodel.evals.cli, unimodel.evals.evaluate, unimodel.evals.report, unimodel.evals.plots\n"
        "import typer\n"
        "app = typer.Typer(); unimodel.evals.cli.register(app)\n"
        f"loaded = sorted(m for m in sys.modules if m.startswith({SERVER_SIDE!r}))\n"
        "print(loaded); sys.exit(1 if loaded else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
