"""The shared driver of the marker-based output parsers (``mistral``, ``think-tags``).

Hand-written: no library parses these formats incrementally from both raw text and token ids.
(mistral_common's ``experimental.tools`` parses finished token lists; vLLM's parsers live inside vLLM's
serving layer and differ by version.) The driver is two layers:

* A lexer that turns input into text pieces and *markers*. With ``feed_text`` the markers active in the
  current state are found by text; the longest suffix of the input that could still start one of them is held
  back and released as text as soon as it cannot. With ``feed_token`` only the special ids given in
  ``special_ids`` are markers; all other token text is literal. A marker that is not active in the current
  state (e.g. ``[THINK]`` after the answer began in ``think-tags``) counts as its own literal text; an active
  one that means nothing in the state (see ``ignored_markers`` below) is dropped.
* A state machine: ``content`` and ``reasoning`` here, the tool-call states in each family's subclass. A text
  handler consumes a piece and returns what it did not consume when it changed state; the lexer re-reads that
  rest under the new state's markers. Every handler gives the same result however its input is cut, so a
  generation folds to the same message whether it is fed whole, in any chunks, or token by token.

Policies shared by both families (each family can widen the first two, see its class attributes):

* An opening think marker counts only before any answer text or tool call (leading whitespace before it is
  dropped); later it is literal text, so reasoning always comes before content. A family with
  ``think_anywhere`` lets the first one count wherever it comes before a tool call (the content before and
  after the thinking is joined; reasoning events may then follow content events).
* A family's ``ignored_markers`` are recognised in text wherever markers are (not inside a JSON value) and
  dropped; its own markers are then also dropped in states that do not use them (both by text and by id).
  Without ``ignored_markers`` a marker out of place is its own literal text.
* Content that is only whitespace and is followed by a tool call, or that trails tool calls at the end, is
  dropped. Otherwise content is passed on exactly, except that ``strip_answer_ws`` families drop the leading
  whitespace of the answer after the closing think marker.
* End-of-sequence text (``</s>`` and the like) leaked by an upstream is dropped when it ends the output and
  kept as literal text otherwise (``<s>...</s>`` is also HTML). A special EOS id is always dropped.
* Tool calls are buffered until complete (see the family modules for the trade-off). What a family does with
  a tool-call section that is malformed or cut off is its own choice (see its module).
"""

from __future__ import annotations

import functools
import re

from collections.abc import Callable, Mapping
from typing import ClassVar

from unimodel.formats.base import OutputParser, new_call_id
from unimodel.formats.jsonscan import JsonValueScanner
from unimodel.protocol.events import (
    ContentDelta,
    Event,
    Finish,
    FinishReason,
    ReasoningDelta,
    ToolCallArgsDelta,
    ToolCallEnd,
    ToolCallStart,
)

CONTENT = "content"
REASONING = "reasoning"


@functools.lru_cache(maxsize=64)
def _marker_pattern(markers: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile("|".join(re.escape(m) for m in sorted(markers, key=len, reverse=True)))


def _find_first(text: str, markers: tuple[str, ...]) -> tuple[int, str | None]:
    if not markers:
        return len(text), None
    m = _marker_pattern(markers).search(text)
    return (m.start(), m.group()) if m else (len(text), None)


@functools.lru_cache(maxsize=64)
def _with_ignored(own: tuple[str, ...], ignored: tuple[str, ...]) -> tuple[str, ...]:
    """A state's markers and, when it has any, the family's ignored ones (a state with none is a JSON value)."""
    return own + tuple(m for m in ignored if m not in own) if own else ()


@functools.lru_cache(maxsize=32)
def _marker_shape(markers: tuple[str, ...]) -> tuple[int, frozenset[str]]:
    return max((len(m) for m in markers), default=1) - 1, frozenset(m[0] for m in markers if m)


def _held_length(text: str, markers: tuple[str, ...]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of some marker.

    On the hot path of every streamed chunk: only positions holding a marker's first character are tried.
    """
    longest, firsts = _marker_shape(markers)
    for start in range(max(0, len(text) - longest), len(text)):
        if text[start] not in firsts:
            continue
        tail = text[start:]
        if any(m.startswith(tail) for m in markers):
            return len(text) - start
    return 0


class MarkerStreamParser(OutputParser):
    """Lexer, content/reasoning states and shared helpers; subclasses add the tool-call states."""

    open_think: ClassVar[str]
    close_think: ClassVar[str]
    tool_start: ClassVar[str]
    eos_markers: ClassVar[tuple[str, ...]]
    markers: ClassVar[tuple[str, ...]]  # every marker the family knows, eos included
    strip_answer_ws: ClassVar[bool] = False
    #: the first opening think marker counts wherever it comes before a tool call (not only before content)
    think_anywhere: ClassVar[bool] = False
    #: marker texts recognised and dropped outside JSON values (control tokens no state gives a meaning)
    ignored_markers: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        *,
        special_ids: Mapping[str, int] | None = None,
        id_factory: Callable[[], str] | None = None,
        starts_in_reasoning: bool = False,
    ) -> None:
        self._by_id = {tid: name for name, tid in (special_ids or {}).items() if name in self.markers}
        self._new_id = id_factory or new_call_id
        self._mode: str | None = None
        self._done = False
        self._pending = ""  # raw text still to scan for markers (feed_text)
        self._literal = ""  # text never scanned for markers (token text, inactive markers)
        self._eos_held = ""
        self._out: list[Event] = []
        self._reasoning: list[str] = []
        self._state = REASONING if starts_in_reasoning else CONTENT
        self._think_seen = starts_in_reasoning
        self._content_started = False
        self._ws_hold = ""
        self._drop_ws = False
        self._n_calls = 0
        self._raw = ""  # raw text of the tool-call section being buffered
        self._cand = ""  # text after a marker whose meaning is not known yet
        self._scanner = JsonValueScanner()

    # --- public interface -------------------------------------------------------------------------------

    @property
    def in_reasoning(self) -> bool:
        return self._state == REASONING

    @property
    def reasoning_text(self) -> str:
        return "".join(self._reasoning)

    @property
    def tool_call_count(self) -> int:
        return self._n_calls

    def feed_text(self, text: str) -> list[Event]:
        self._check("text")
        self._pending += text
        self._run(final=False)
        return self._take()

    def feed_token(self, token_id: int, text: str) -> list[Event]:
        self._check("token")
        name = self._by_id.get(token_id)
        if name is None:
            self._literal += text
        elif name not in self.eos_markers:
            self._run(final=True)
            if name in self._active():
                self._marker(name)
            else:
                self._literal += name
        self._run(final=True)
        return self._take()

    def finish(self, reason: FinishReason) -> list[Event]:
        self._check(None)
        self._run(final=True)
        self._eos_held = ""
        if self._state not in (CONTENT, REASONING):
            self._end_section()
        if self._ws_hold and not self._drop_ws and not self._n_calls:
            self._out.append(ContentDelta(self._ws_hold))
        self._ws_hold = ""
        self._done = True
        self._out.append(Finish("tool_calls" if reason == "stop" and self._n_calls else reason))
        return self._take()

    # --- lexer --------------------------------------------------------------------------------------------

    def _check(self, mode: str | None) -> None:
        if self._done:
            raise RuntimeError("parser already finished")
        if mode is not None:
            if self._mode not in (None, mode):
                raise RuntimeError("feed_text and feed_token cannot be mixed on one parser")
            self._mode = mode

    def _run(self, *, final: bool) -> None:
        while True:
            if self._literal:
                text, self._literal = self._literal, ""
                self._literal = self._on_text(text) + self._literal
                continue
            if not self._pending:
                return
            markers = self._active()
            idx, found = _find_first(self._pending, markers)
            end = idx if found is not None else len(self._pending)
            if found is None and not final:
                end -= _held_length(self._pending, markers)
            if self._eos_held and (end > 0 or (found is not None and found not in self.eos_markers)):
                self._literal, self._eos_held = self._eos_held, ""  # more output follows: it was text
                continue
            if end > 0:
                text, rest = self._pending[:end], self._pending[end:]
                self._pending = self._on_text(text) + rest
            elif found is not None:
                self._pending = self._pending[len(found):]
                self._marker(found)
            else:
                return

    def _active(self) -> tuple[str, ...]:
        if self._state == REASONING:
            own: tuple[str, ...] = (self.close_think, *self.eos_markers)
        elif self._state == CONTENT:
            opening = (self.open_think,) if self._may_open_think() else ()
            own = (self.tool_start, *opening, *self.eos_markers)
        else:
            own = self._section_markers()
        return _with_ignored(own, self.ignored_markers)

    def _may_open_think(self) -> bool:
        if self._think_seen or self._n_calls:
            return False
        return self.think_anywhere or not self._content_started

    def _on_text(self, text: str) -> str:
        if self._state == CONTENT:
            self._content(text)
            return ""
        if self._state == REASONING:
            if text:
                self._reasoning.append(text)
                self._out.append(ReasoningDelta(text))
            return ""
        return self._section_text(text)

    def _marker(self, marker: str) -> None:
        """An active marker; one that means nothing in the current state is dropped."""
        if marker in self.eos_markers:
            self._eos_held += marker
        elif self._state == REASONING:
            if marker == self.close_think:
                self._state = CONTENT
                self._drop_ws = self.strip_answer_ws
        elif self._state == CONTENT:
            if marker == self.open_think and self._may_open_think():
                self._state, self._think_seen, self._ws_hold = REASONING, True, ""
            elif marker == self.tool_start:
                self._start_section(marker)
        else:
            self._section_marker(marker)

    # --- helpers for the states ---------------------------------------------------------------------------

    def _content(self, text: str) -> None:
        if not text:
            return
        if not self._content_started:
            body = text.lstrip()
            if not body:
                self._ws_hold += text
                return
            lead = "" if self._drop_ws else self._ws_hold + text[: len(text) - len(body)]
            self._ws_hold, self._drop_ws, self._content_started = "", False, True
            text = lead + body
        self._out.append(ContentDelta(text))

    def _start_section(self, marker: str) -> None:
        self._raw, self._cand, self._scanner = marker, "", JsonValueScanner()
        self._state = self._first_section_state

    def _abort(self) -> None:
        """The tool-call section is not a valid call: its raw text becomes content."""
        raw, self._raw, self._cand, self._state = self._raw, "", "", CONTENT
        self._content(raw)

    def _leave_after_call(self) -> None:
        """Text after a call turned out not to start another call: it is content."""
        cand, self._cand, self._state = self._cand, "", CONTENT
        self._content(cand)

    def _emit_call(self, name: str, arguments: str, call_id: str | None) -> None:
        index = self._n_calls
        self._out.append(ToolCallStart(index, call_id or self._new_id(), name))
        if arguments:  # never "" from the families here (a call without arguments gets "{}"); kept as a guard
            self._out.append(ToolCallArgsDelta(index, arguments))
        self._out.append(ToolCallEnd(index))
        self._n_calls += 1
        self._ws_hold, self._drop_ws, self._content_started = "", False, False
        self._raw, self._cand = "", ""

    def _json_text(self, text: str, openers: str, on_value: Callable[[str], bool]) -> str:
        """Feed ``text`` to the section's JSON value; ``on_value`` emits calls and returns False if invalid."""
        if not self._scanner.started:
            body = text.lstrip()
            self._raw += text[: len(text) - len(body)]
            if not body:
                return ""
            if body[0] not in openers:
                self._abort()
                return body
            text = body
        end = self._scanner.feed(text)
        if end is None:
            self._raw += text
            return ""
        self._raw += text[:end]
        if not on_value(self._scanner.value):
            self._abort()
        return text[end:]

    def _take(self) -> list[Event]:
        out: list[Event] = []
        for ev in self._out:
            if out and type(ev) is type(out[-1]) and isinstance(ev, (ContentDelta, ReasoningDelta)):
                out[-1] = type(ev)(out[-1].text + ev.text)  # type: ignore[union-attr]
            else:
                out.append(ev)
        self._out = []
        return out

    # --- the family's tool-call states --------------------------------------------------------------------

    _first_section_state: ClassVar[str]

    def _section_markers(self) -> tuple[str, ...]:
        raise NotImplementedError

    def _section_text(self, text: str) -> str:
        raise NotImplementedError

    def _section_marker(self, marker: str) -> None:
        raise NotImplementedError

    def _end_section(self) -> None:
        """At the end of output, in a tool-call state."""
        raise NotImplementedError
