"""Find the answer in a reply: the rules every suite uses, written down once.

Written by hand: each rule is a few lines of ``re``/``json``, and being exact about them matters more than
being clever. Only the reply's answer (``content``) is searched, never its reasoning.

- **number** (math, vision): the last ``\\boxed{...}`` if there is one; else the last line that starts with
  "answer" or "final answer" (any case, markdown emphasis ignored); else the whole answer. In that span the
  *last* number counts: an optional minus, digits with optional thousands commas (``1,234``) and an
  optional decimal part. So "3 + 4 = 7" reads 7, and "7 apples, from 3 boxes" reads 3: the prompts ask for
  the number alone on the last line.
- **JSON object** (json): the first ``{`` from which a whole JSON *object* decodes (``json.raw_decode``), so
  a fenced ```` ```json ```` block and prose around the object both work; arrays and scalars do not count.
- **code** (code): the first fenced block tagged ``python``/``py``/``python3``; else the first fenced block
  at all (a block cut short by ``max_tokens`` runs to the end of the text); else the whole answer when it
  parses as Python and defines a function.
- **tool call** (tools): the first tool call of the reply, from the API's ``tool_calls`` only; a call
  written as text in the content does not count.
"""

from __future__ import annotations

import ast
import json
import re
from decimal import Decimal, InvalidOperation
from typing import Any, Optional

_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_ANSWER_LINE = re.compile(r"^\W*(?:final\s+)?answer\b", re.IGNORECASE)
_NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\w])")
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


def last_number(text: str) -> Optional[Decimal]:
    """The answer's number by the rule above, or None."""
    boxed = _BOXED.findall(text)
    if boxed:
        span = boxed[-1]
    else:
        answer_lines = [line for line in text.splitlines() if _ANSWER_LINE.match(line.replace("*", ""))]
        span = answer_lines[-1] if answer_lines else text
    found = _NUMBER.findall(span)
    if not found:
        return None
    try:
        return Decimal(found[-1].replace(",", ""))
    except InvalidOperation:  # pragma: no cover - the pattern only matches valid decimals
        return None


def first_json_object(text: str) -> Optional[dict[str, Any]]:
    """The first JSON object in ``text``, or None."""
    decoder = json.JSONDecoder()
    start = text.find("{")
    while start != -1:
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            value = None
        if isinstance(value, dict):
            return value
        start = text.find("{", start + 1)
    return None


def code_block(text: str) -> Optional[str]:
    """The candidate program by the rule above, or None."""
    blocks = [(tag.lower(), body) for tag, body in _FENCE.findall(text)]
    for tag, body in blocks:
        if tag in ("python", "py", "python3"):
            return body
    if blocks:
        return blocks[0][1]
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return None
    if any(isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) for node in tree.body):
        return text
    return None
