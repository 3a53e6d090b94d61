"""``unimodel serve --help`` at 80 columns (issue 24): every flag of the settings whole, in the panel of its
subject, no panel over ``MAX_PANEL_FLAGS`` flags. Before, about 100 options shared a few panels and at 80 columns
typer's table cut the long names (``--upstream-max-c…``): a user could not read the flag, let alone copy it.

Run as a user runs it: the ``unimodel`` command through typer's CliRunner with ``COLUMNS=80``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from unimodel.cli import app
from unimodel.config import Settings
from unimodel.settings_flags import MAX_PANEL_FLAGS, PANELS, _extra, flag_name

ROW = re.compile(r"^│ (--[a-z0-9-]+)(?=[ │])")  # a row's first flag, at the left edge of a panel
TITLE = re.compile(r"^╭─ (.+?) ─+╮$")


def help_at(columns: int) -> str:
    result = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": str(columns), "NO_COLOR": "1"},
                                terminal_width=columns)
    assert result.exit_code == 0, result.output
    return result.output


def panels(text: str) -> Iterator[tuple[str, list[str]]]:
    """(title, the flags that open its rows) for each panel, in order; a ``--no-`` line is its flag's second."""
    title, flags = None, []
    for line in text.splitlines():
        if (m := TITLE.match(line)) is not None:
            title, flags = m.group(1), []
        elif line.startswith("╰") and title is not None:
            yield title, flags
            title = None
        elif title is not None and (m := ROW.match(line)) is not None:
            if not (flags and m.group(1) == "--no-" + flags[-1][2:]):  # a boolean's second line
                flags.append(m.group(1))


@pytest.fixture(scope="module")
def at_80() -> str:
    return help_at(80)


def test_every_flag_is_whole_at_80_columns_in_its_panel(at_80: str) -> None:
    assert not re.search(r"--[a-z0-9-]+…", at_80)  # no flag cut (a "…" of a help text is the text's)
    assert max(len(line) for line in at_80.splitlines()) <= 80
    shown = dict(panels(at_80))
    where = {flag: title for title, flags in shown.items() for flag in flags}
    for name, field in Settings.model_fields.items():
        flag = flag_name(name, field)
        title = PANELS[_extra(field)["panel"]]
        assert where.get(flag) == title, f"{flag} is not a row of the panel {title!r} at 80 columns"
        if field.annotation is bool:
            assert re.search(rf"^│ --no-{flag[2:]}(?=[ │])", at_80, re.M), f"--no-{flag[2:]} is not whole"


def test_no_panel_is_long_and_each_has_its_title(at_80: str) -> None:
    shown = list(panels(at_80))
    titles = [title for title, _ in shown]
    assert titles[0] == "Options" and titles[1:] == [t for t in PANELS.values() if t in titles]
    assert set(PANELS.values()) <= set(titles)
    for title, flags in shown:
        assert 0 < len(flags) <= MAX_PANEL_FLAGS, (title, flags)


def test_a_wide_terminal_shows_the_same_flags() -> None:
    wide = dict(panels(help_at(160)))
    narrow = dict(panels(help_at(80)))
    assert wide == narrow
