"""Where a streamed JSON value ends, and what a finished tool-call value means.

Hand-written because the parsers need one small thing no JSON library offers: to know, chunk by chunk, at
which character an object or array that started in the output is closed (depth and string tracking only).
Whether the value is valid is then decided by :func:`json.loads` on the completed text, never by this scanner.
"""

from __future__ import annotations

import json
import re
from typing import Any

_IN_STRING = re.compile(r'[\\"]')
_STRUCTURE = re.compile(r'["{}\[\]]')


class JsonValueScanner:
    """Finds the end of one JSON object or array fed in pieces (the first piece starts with ``{`` or ``[``)."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._depth = 0
        self._in_string = False
        self._escaped = False

    @property
    def started(self) -> bool:
        return bool(self._parts)

    @property
    def value(self) -> str:
        return "".join(self._parts)

    def feed(self, text: str) -> int | None:
        """Consume ``text``; the index just past the value's last character, or None if it goes on."""
        pos, end = 0, len(text)
        while pos < end:
            if self._escaped:
                self._escaped = False
                pos += 1
            elif self._in_string:
                m = _IN_STRING.search(text, pos)
                if m is None:
                    break
                pos = m.end()
                if m.group() == "\\":
                    self._escaped = True
                else:
                    self._in_string = False
            else:
                m = _STRUCTURE.search(text, pos)
                if m is None:
                    break
                pos = m.end()
                ch = m.group()
                if ch == '"':
                    self._in_string = True
                elif ch in "{[":
                    self._depth += 1
                else:
                    self._depth -= 1
                    if self._depth <= 0:
                        self._parts.append(text[:pos])
                        return pos
        self._parts.append(text)
        return None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _loads(text: str) -> tuple[Any, bool] | None:
    """Parse ``text``; (value, exact) where exact means strict JSON. Raw control characters inside strings
    are tolerated (exact=False: re-serialise before handing on); NaN/Infinity and other errors give None."""
    for strict in (True, False):
        try:
            return json.loads(text, strict=strict, parse_constant=_reject_constant), strict
        except ValueError:
            continue
    return None


def arguments_text(value: Any) -> str | None:
    """Tool-call arguments as the JSON string OpenAI's ``arguments`` holds, or None if not a JSON object.

    ``value`` is either the raw text the model wrote (kept verbatim when it is strict JSON) or an already
    parsed value (a dict is serialised; a string must itself hold a JSON object).
    """
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False)
    if not isinstance(value, str):
        return None
    parsed = _loads(value)
    if parsed is None or not isinstance(parsed[0], dict):
        return None
    obj, exact = parsed
    return value.strip() if exact else json.dumps(obj, ensure_ascii=False)


def calls_from_json(text: str) -> list[tuple[str, str, str | None]] | None:
    """``(name, arguments, id or None)`` for each call in a JSON call object or list of them, or None.

    Accepts ``{"name": ..., "arguments": {...}}`` (also ``"parameters"``, arguments as a JSON string, an
    optional ``"id"``) and a non-empty list of such objects (Mistral v3-v7, Hermes/Qwen ``<tool_call>``).
    """
    parsed = _loads(text)
    if parsed is None:
        return None
    obj = parsed[0]
    items = obj if isinstance(obj, list) else [obj]
    calls: list[tuple[str, str, str | None]] = []
    for item in items:
        if not isinstance(item, dict):
            return None
        name = item.get("name")
        if not isinstance(name, str) or not name.strip():
            return None
        args = arguments_text(item.get("arguments", item.get("parameters", {})))
        if args is None:
            return None
        call_id = item.get("id")
        calls.append((name.strip(), args, call_id if isinstance(call_id, str) and call_id else None))
    return calls or None
