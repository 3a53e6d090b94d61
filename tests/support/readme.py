"""The README read as the tests need it: its fenced blocks, the shell commands in them, and every ``--flag`` it
names with the command the flag belongs to.

Hand-written (a few regular expressions and :mod:`shlex`): a Markdown library would give the blocks but not
what the tests need from them, which commands a block holds and which program each flag is given to.

Which program a flag belongs to:

* in a shell command (a ``bash``/``shell``/``console`` block, or an inline code span that starts with a
  program): the program at the head of that command, ``unimodel`` with its subcommand path
  (``unimodel logs stats``) or another program (``vllm``, ``curl``, ``helm`` …);
* in a comment of a block: a program the comment names (``# gateway: unimodel serve …``, ``# node 0: vllm
  serve …``), else the command of the line it is on, else the one of the comment it continues (a comment
  that ends in ``\\``); in a YAML block, ``unimodel serve`` (the YAML is its settings file);
* a bare flag in a sentence (`` `--max-queue` ``): another program when the sentence names one before it
  (``vLLM``, ``SGLang`` …) or the section is about one (Claude Code, Codex CLI, the benchmark scripts);
  otherwise ``unimodel``, any of its commands (:data:`ANY_UNIMODEL`).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

README = Path(__file__).resolve().parents[2] / "README.md"

#: a bare flag in prose that names no command: it must be a flag of some ``unimodel`` command
ANY_UNIMODEL: tuple[str, ...] = ("unimodel", "*")
#: a flag given to a program other than ``unimodel``: not checked
FOREIGN = "foreign"

SUBCOMMANDS = ("serve", "plan", "bench", "eval", "logs", "keys")
SHELL_LANGS = ("bash", "shell", "sh", "console")
#: words that start another program's command line
OTHER_PROGRAMS = frozenset({
    "vllm", "python", "python3", "pip", "pytest", "helm", "kubectl", "curl", "jq", "ray", "npm", "openssl",
    "bash", "sh", "claude", "codex", "docker", "export", "grep", "cd", "chmod", "nvidia-smi", "sglang"})
#: in a sentence, these name another program: a flag after them is that program's
OTHER_IN_PROSE = re.compile(r"\bvLLM\b|\bvllm\b|\bSGLang\b|\bClaude Code\b|\bCodex\b|\bLiteLLM\b|\bGuideLLM\b"
                            r"|\bllama\.cpp\b|\bKubernetes\b|\bhelm\b")
#: sections whose bare flags are another program's (unless unimodel has them too)
OTHER_SECTIONS = ("Use it from Claude Code", "Use it from Codex CLI", "Benchmarks")

FLAG = re.compile(r"(?<![\w=/.-])--[A-Za-z][A-Za-z0-9-]*\*?")
MARKER = re.compile(r"<!--\s*walkthrough:\s*(.*?)\s*-->", re.S)


@dataclass(frozen=True)
class Block:
    lang: str
    line: int  #: the line of the opening fence (1-based)
    body: str
    marker: Optional[str] = None  #: the ``<!-- walkthrough: … -->`` comment just before the block, if any

    @property
    def id(self) -> str:
        return f"README.md:{self.line}"


@dataclass(frozen=True)
class FlagUse:
    flag: str
    line: int
    command: object  #: a unimodel command path (``("unimodel", "logs", "stats")``), ANY_UNIMODEL or FOREIGN
    text: str  #: the README line, for the failure message


@dataclass
class ShellLine:
    """One logical line of a shell block: continuations joined, the comment apart."""

    line: int
    code: str
    comment: str
    comment_continues: bool = False


def blocks(text: str) -> list[Block]:
    """Every fenced block, with the walkthrough marker that precedes it (blank lines may sit between)."""
    found: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^```(\w*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        start, lang = i, m.group(1)
        j = i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        k = start - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        before = "\n".join(lines[max(0, k - 3):k + 1]) if k >= 0 and lines[k].rstrip().endswith("-->") else ""
        marks = MARKER.findall(before)
        found.append(Block(lang, start + 1, "\n".join(lines[start + 1:j]), marks[-1] if marks else None))
        i = j + 1
    return found


def _split_comment(line: str) -> tuple[str, str]:
    """``code  # comment`` -> (code, comment); a ``#`` inside quotes or a word is not a comment."""
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), line[i + 1:].strip()
    return line.rstrip(), ""


def _open_quote(code: str) -> str:
    """The quote character left open at the end of ``code`` ('' when none)."""
    quote = ""
    for ch in code:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
    return quote


def shell_lines(block: Block) -> list[ShellLine]:
    """The block's logical lines: continuations and quoted strings over several lines joined, the comment
    apart. In a ``console`` block only ``$ `` lines are commands (the rest is output)."""
    out: list[ShellLine] = []
    pending: Optional[ShellLine] = None
    for n, raw in enumerate(block.body.splitlines(), start=block.line + 1):
        if block.lang == "console":
            if not raw.startswith("$ ") and pending is None:
                continue
            raw = raw[2:] if raw.startswith("$ ") else raw
        if pending is not None and _open_quote(pending.code):  # inside a quoted string: no comment, as is
            pending.code = f"{pending.code}\n{raw}"
            if not _open_quote(pending.code) and not pending.code.endswith("\\"):
                out.append(pending)
                pending = None
            continue
        code, comment = _split_comment(raw)
        continues = code.endswith("\\") or bool(_open_quote((pending.code + " " if pending else "") + code))
        code = code[:-1].rstrip() if code.endswith("\\") else code
        comment_continues = comment.endswith("\\")
        comment = comment[:-1].rstrip() if comment_continues else comment
        if pending is not None:
            pending.code = f"{pending.code} {code.strip()}".strip()
            pending.comment = f"{pending.comment} {comment}".strip()
            pending.comment_continues = comment_continues
        else:
            pending = ShellLine(n, code.strip(), comment, comment_continues)
        if not continues:
            out.append(pending)
            pending = None
    if pending is not None:
        out.append(pending)
    return out


def split_commands(code: str) -> list[str]:
    """A line's commands, split at ``&&`` and ``;`` outside quotes (pipes stay in their command)."""
    parts, current, quote, i = [], "", "", 0
    while i < len(code):
        ch = code[i]
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif code.startswith("&&", i) or ch == ";":
            parts.append(current.strip())
            current, i = "", i + (2 if ch == "&" else 1)
            continue
        current += ch
        i += 1
    parts.append(current.strip())
    return [p for p in parts if p]


def words(code: str) -> list[str]:
    try:
        return shlex.split(code, comments=False)
    except ValueError:  # an unbalanced quote (prose in a comment): whitespace will do
        return code.split()


def _unimodel_path(ws: Sequence[str], i: int, tree: dict[str, object]) -> tuple[tuple[str, ...], int]:
    """The subcommand path that starts at ``ws[i]`` (after ``unimodel``) and the index after it."""
    path: list[str] = ["unimodel"]
    node: object = tree
    while i < len(ws) and isinstance(node, dict) and ws[i] in node:
        path.append(ws[i])
        node = node[ws[i]]
        i += 1
    return tuple(path), i


def _walk(ws: Sequence[str], context: object, tree: dict[str, object], line: int,
          text: str, *, program_anywhere: bool) -> Iterator[tuple[FlagUse, object]]:
    """Flags in ``ws`` with their command; ``program_anywhere``: a program may start at any word (a comment or
    a sentence), not only at the head of a command. Yields each use and the context after it."""
    head = True
    previous = ""
    for i, raw in enumerate(ws):
        w = raw.strip("[]()`,;")
        if w in ("|", "&&", ";", "||"):
            head = True
            continue
        at_head = head or (program_anywhere and not previous.startswith("--"))
        if at_head and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", w):  # VAR=value before a command
            previous = w
            continue
        if at_head and w == "unimodel":
            path, _ = _unimodel_path([x.strip("[]()`,;") for x in ws], i + 1, tree)
            context = path
        elif at_head and (w in OTHER_PROGRAMS or w.endswith(".py") or w.startswith(("./", "/"))) and \
                (head or w in OTHER_PROGRAMS):
            context = FOREIGN
        elif at_head and program_anywhere and OTHER_IN_PROSE.fullmatch(w.rstrip("'s:")):  # "… to vLLM (run …"
            context = FOREIGN
        elif at_head and head and w in tree and not program_anywhere:  # `logs stats --since 1d` in a sentence
            path, _ = _unimodel_path([x.strip("[]()`,;") for x in ws], i, tree)
            context = path
        for m in FLAG.finditer(raw.split("=", 1)[0] if raw.startswith("--") else raw):
            yield FlagUse(m.group(), line, context, text), context
        head = False
        previous = w
    yield FlagUse("", line, context, text), context  # the context at the end (never a flag)


def _scan(code: str, context: object, tree: dict[str, object], line: int, text: str,
          program_anywhere: bool = False) -> tuple[list[FlagUse], object]:
    uses: list[FlagUse] = []
    for use, context in _walk(words(code), context, tree, line, text, program_anywhere=program_anywhere):
        if use.flag:
            uses.append(use)
    return uses, context


def _block_flags(block: Block, tree: dict[str, object]) -> list[FlagUse]:
    uses: list[FlagUse] = []
    if block.lang in SHELL_LANGS:
        last: object = ANY_UNIMODEL
        carried: Optional[object] = None
        for sl in shell_lines(block):
            context: object = ANY_UNIMODEL
            for command in split_commands(sl.code):
                found, context = _scan(command, ANY_UNIMODEL, tree, sl.line, command)
                uses += found
                last = context
            if sl.comment:
                start = carried if carried is not None else (context if sl.code else last)
                found, after = _scan(sl.comment, start, tree, sl.line, sl.comment, program_anywhere=True)
                uses += found
                carried = after if sl.comment_continues else None
    elif block.lang in ("yaml", "python", "toml"):
        for n, raw in enumerate(block.body.splitlines(), start=block.line + 1):
            _, comment = _split_comment(raw)
            if comment:
                start = ("unimodel", "serve") if block.lang == "yaml" else ANY_UNIMODEL
                uses += _scan(comment, start, tree, n, comment, program_anywhere=True)[0]
    return uses


_SPAN = re.compile(r"`([^`]+)`")


def _sentences(unit: str) -> list[str]:
    """Sentences of a paragraph, list item or table row; ``e.g.``/``i.e.`` end none."""
    parts = re.split(r"(?<=[.!?])\s+(?=[A-Z(`*\[])", unit)
    merged: list[str] = []
    for p in parts:
        if merged and re.search(r"\b(e\.g|i\.e|etc|vs)\.$", merged[-1]):
            merged[-1] += " " + p
        else:
            merged.append(p)
    return merged


def _prose_flags(text: str, tree: dict[str, object]) -> list[FlagUse]:
    uses: list[FlagUse] = []
    lines = text.splitlines()
    section = ""
    fenced = False
    units: list[tuple[int, str, str]] = []  # (first line, section, text)
    current: Optional[list[object]] = None
    for n, line in enumerate(lines, start=1):
        if line.startswith("```"):
            fenced = not fenced
            current = None
            continue
        if fenced:
            continue
        heading = re.match(r"^#+\s+(.*)", line)
        starts_unit = (not line.strip() or heading or line.lstrip().startswith(("- ", "* ", "|"))
                       or re.match(r"^\s*\d+\.\s", line))
        if heading:
            section = heading.group(1)
        if starts_unit or current is None:
            current = [n, section, line] if line.strip() and not heading else None
            if current is not None:
                units.append(current)  # type: ignore[arg-type]
            continue
        current[2] = f"{current[2]} {line.strip()}"  # type: ignore[operator]
    for unit in units:
        first, sec, body = unit  # type: ignore[misc]
        base: object = FOREIGN if any(s in sec for s in OTHER_SECTIONS) else ANY_UNIMODEL
        for sentence in _sentences(body):  # type: ignore[arg-type]
            context = base
            pos = 0
            for m in _SPAN.finditer(sentence):
                if OTHER_IN_PROSE.search(sentence[pos:m.start()]):
                    context = FOREIGN
                pos = m.end()
                span = m.group(1)
                ws = words(span)
                if not ws:
                    continue
                head = ws[0].strip("[")
                invocation = head == "unimodel" or head in OTHER_PROGRAMS or head.endswith(".py") or \
                    re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", head) or (head in tree and len(ws) > 1)
                line_no = first
                if invocation:
                    uses += _scan(span, ANY_UNIMODEL, tree, line_no, span)[0]  # type: ignore[arg-type]
                    if head != "unimodel" and head not in tree:
                        context = FOREIGN
                else:
                    uses += _scan(span, context, tree, line_no, span, program_anywhere=True)[0]  # type: ignore
                    if OTHER_IN_PROSE.search(span) and not FLAG.search(span):
                        context = FOREIGN
    return uses


def flag_uses(text: str, tree: dict[str, object]) -> list[FlagUse]:
    """Every ``--flag`` the README names, in its blocks and its prose, with the command it belongs to.
    ``tree``: unimodel's subcommands as nested dicts (``{"logs": {"stats": {}}, "serve": {}, …}``)."""
    uses: list[FlagUse] = []
    for block in blocks(text):
        uses += _block_flags(block, tree)
    uses += _prose_flags(text, tree)
    return uses
