"""Every flag the README names for a ``unimodel`` command is a flag of that command.

The flags are read from the CLI itself (typer's click command objects, after the optional commands are
registered as ``main`` registers them), never from ``--help`` text. Which command a flag belongs to is decided
by ``tests/support/readme.py``: the command it is given to in a code block or an inline command, else, for a
bare flag in a sentence, any ``unimodel`` command, unless the sentence or its section is about another program
(vLLM, Claude Code …), whose flags are not checked here.
"""

from __future__ import annotations

from typing import Any

import pytest
import typer

from tests.support.readme import ANY_UNIMODEL, FOREIGN, README, FlagUse, flag_uses


def _commands() -> dict[tuple[str, ...], Any]:
    from unimodel import cli

    cli._register_optional_commands()
    found: dict[tuple[str, ...], Any] = {}

    def walk(command: Any, path: tuple[str, ...]) -> None:
        found[path] = command
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, (*path, name))

    walk(typer.main.get_command(cli.app), ("unimodel",))
    return found


@pytest.fixture(scope="module")
def commands() -> dict[tuple[str, ...], Any]:
    return _commands()


def _tree(commands: dict[tuple[str, ...], Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path in commands:
        node = tree
        for name in path[1:]:
            node = node.setdefault(name, {})
    return tree


def _flags(command: Any) -> set[str]:
    names = {"--help"}
    for param in command.params:
        names.update(o for o in (*param.opts, *param.secondary_opts) if o.startswith("--"))
    return names


def unknown_flags(text: str, commands: dict[tuple[str, ...], Any]) -> list[str]:
    """One line per flag the README names that its command lacks (or per unknown ``unimodel`` command)."""
    every = set().union(*(_flags(c) for c in commands.values()))
    problems = []
    for use in flag_uses(text, _tree(commands)):
        if use.command == FOREIGN:
            continue
        if use.command == ANY_UNIMODEL:
            known, where = every, "any unimodel command"
        elif use.command in commands:
            known, where = _flags(commands[use.command]), " ".join(use.command)  # type: ignore[arg-type]
        else:
            problems.append(f"README.md:{use.line}: unknown command {' '.join(use.command)!r}")  # type: ignore
            continue
        flag = use.flag
        ok = any(k.startswith(flag[:-1]) for k in known) if flag.endswith("*") else flag in known
        if not ok:
            problems.append(f"README.md:{_line_of(text, use)}: {flag} is not a flag of {where} ({use.text[:100]})")
    return problems


def _line_of(text: str, use: FlagUse) -> int:
    """The line that holds the flag, at or after where its sentence or command starts."""
    lines = text.splitlines()
    for n in range(use.line, len(lines) + 1):
        if use.flag in lines[n - 1]:
            return n
    return use.line


def test_every_flag_the_readme_names_exists(commands: dict[tuple[str, ...], Any]) -> None:
    text = README.read_text(encoding="utf-8")
    uses = flag_uses(text, _tree(commands))
    checked = [u for u in uses if u.command != FOREIGN]
    assert len(checked) > 200  # the README names a few hundred of its own flags: the parse found them
    assert unknown_flags(text, commands) == []


def test_the_commands_of_each_flag_are_told_apart(commands: dict[tuple[str, ...], Any]) -> None:
    uses = {(u.flag, u.command) for u in flag_uses(README.read_text(encoding="utf-8"), _tree(commands))}
    assert ("--gpu", ("unimodel", "plan")) in uses           # `unimodel plan --gpu h200 …`, a code block
    assert ("--limit", ("unimodel", "logs")) in uses         # a comment on a `unimodel logs` line
    assert ("--since", ("unimodel", "logs", "stats")) in uses
    assert ("--tensor-parallel-size", FOREIGN) in uses       # the plan's sample output: `vllm serve …`
    assert ("--index-url", FOREIGN) in uses                  # pip
    assert ("--reasoning-parser", FOREIGN) in uses           # "vLLM started with … `--reasoning-parser`"


@pytest.mark.parametrize("typo, where", [
    ("connect timeout, `--upstream-connect-timeout-secs` otherwise)", "prose"),
    ("```bash\nunimodel serve --model tiny-random --max-queue-size 4\n```", "a serve command"),
    ("```bash\nunimodel logs stats --since 1d --gpu-count 2\n```", "a logs stats command"),
    ("```yaml\nrpm: 60   # or --rpm-limit\n```", "a YAML comment"),
    ("A plan for vLLM (`unimodel plan --gpus 2 --weight fp8`).", "an inline command after vLLM"),
])
def test_a_flag_that_does_not_exist_fails(commands: dict[tuple[str, ...], Any], typo: str, where: str) -> None:
    text = README.read_text(encoding="utf-8") + "\n\n" + typo + "\n"
    problems = unknown_flags(text, commands)
    assert len(problems) == 1, (where, problems)


def test_a_flag_of_another_command_fails(commands: dict[tuple[str, ...], Any]) -> None:
    text = "```bash\nunimodel bench --url URL --model NAME --suite math\n```\n"  # --suite is eval's
    [problem] = unknown_flags(text, commands)
    assert problem.startswith("README.md:2: --suite is not a flag of unimodel bench (")
