"""The stream of an Anthropic Message: the neutral events of one answer as Anthropic's server-sent events.

The grammar, as the official SDK's accumulator reads it (``anthropic.lib.streaming``), every frame
``event: NAME\\ndata: JSON\\n\\n``:

* ``message_start`` (the Message with empty ``content``, null ``stop_reason`` and its usage so far), then one
  ``ping``, as Anthropic's own server sends;
* per content block, in the order the model writes them, with ``index`` 0, 1, 2 … (its place in
  ``content``): ``content_block_start`` (the block, empty), ``content_block_delta``\\s (``thinking_delta``,
  ``text_delta``, ``input_json_delta`` with ``partial_json``; a thinking block gets its ``signature_delta``
  last), ``content_block_stop``. A change of kind (thinking → text → a call) closes the open block and opens
  the next; each tool call is a block of its own;
* ``message_delta`` (``stop_reason``, ``stop_sequence``, and the usage: ``output_tokens`` and the exact
  ``input_tokens``, which the engine reports only at the end: ``message_start`` says 0), ``message_stop``.

A failure after the first byte ends the stream with an ``error`` frame (``{"type": "error", "error": {…}}``,
the shape's error body), which the SDK raises as an ``APIStatusError``; nothing follows it. The events one
write carries are already merged (``service/assemble.merge_deltas``), so a write is a few frames, not one per
token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable, Optional

from unimodel.errors import UnimodelError
from unimodel.protocol.events import (
    ContentDelta,
    Event,
    Finish,
    ReasoningDelta,
    ToolCallArgsDelta,
    ToolCallEnd,
    ToolCallStart,
    Usage,
)
from unimodel.protocol.jsonbytes import dumps
from unimodel.shapes.messages.convert import SIGNATURE, stop_reason, usage


def sse(name: str, payload: dict[str, Any]) -> bytes:
    """One frame of Anthropic's stream."""
    return b"event: " + name.encode() + b"\ndata: " + dumps(payload) + b"\n\n"


_PING = sse("ping", {"type": "ping"})
_STOP = sse("message_stop", {"type": "message_stop"})


class MessagesStreamWriter:
    """Events → Anthropic frames, for one answer (``service/shape.StreamWriter``)."""

    __slots__ = ("message_id", "model", "error_body", "include_reasoning", "_open", "_index", "_calls", "_usage",
                 "_finish", "_called")

    def __init__(self, message_id: str, model: str, error_body: Callable[[UnimodelError], dict[str, Any]],
                 include_reasoning: bool = True) -> None:
        self.message_id = message_id
        self.model = model
        self.error_body = error_body
        self.include_reasoning = include_reasoning
        self._open: Optional[str] = None  # the kind of the open block: "thinking", "text", "tool_use"
        self._index = -1  # the open (or last) block's index
        self._calls: dict[int, int] = {}  # a tool call's index → its block's index
        self._usage: Optional[Usage] = None
        self._finish: Optional[str] = None
        self._called = False

    def opening(self, events: Sequence[Event]) -> bytes:
        start = sse("message_start", {"type": "message_start", "message": {
            "id": self.message_id, "type": "message", "role": "assistant", "model": self.model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": usage(0, 0, None)}})
        return start + _PING + self.write(events)

    def write(self, events: Sequence[Event]) -> bytes:
        out: list[bytes] = []
        for event in events:
            if isinstance(event, ContentDelta):
                if event.text:
                    self._delta(out, "text", {"type": "text_delta", "text": event.text})
            elif isinstance(event, ReasoningDelta):
                if event.text and self.include_reasoning:
                    self._delta(out, "thinking", {"type": "thinking_delta", "thinking": event.text})
            elif isinstance(event, ToolCallArgsDelta):
                if event.text:
                    out.append(sse("content_block_delta", {
                        "type": "content_block_delta", "index": self._calls.get(event.index, self._index),
                        "delta": {"type": "input_json_delta", "partial_json": event.text}}))
            elif isinstance(event, ToolCallStart):
                self._start(out, "tool_use", {"type": "tool_use", "id": event.id, "name": event.name, "input": {}})
                self._calls[event.index] = self._index
                self._called = True
            elif isinstance(event, ToolCallEnd):
                if self._open == "tool_use" and self._calls.get(event.index) == self._index:
                    self._stop(out)
            elif isinstance(event, Usage):
                self._usage = event if self._usage is None else self._usage + event
            elif isinstance(event, Finish):
                self._finish = event.reason
        return b"".join(out)

    def closing(self, events: Sequence[Event], error: Optional[UnimodelError]) -> bytes:
        tail = self.write(events)
        if error is not None:
            return tail + sse("error", self.error_body(error))
        out = [tail]
        self._stop(out)
        used = self._usage
        counts = usage(used.prompt_tokens, used.completion_tokens, getattr(used, "cached_tokens", None)) \
            if used is not None else usage(0, 0, None)
        out.append(sse("message_delta", {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason(self._finish, self._called), "stop_sequence": None},
            "usage": counts}))
        out.append(_STOP)
        return b"".join(out)

    def result(self) -> Optional[dict[str, Any]]:
        return None  # nothing is stored: a Message is not kept after it is sent

    # ---- blocks -------------------------------------------------------------------------------------

    def _delta(self, out: list[bytes], kind: str, delta: dict[str, Any]) -> None:
        if self._open != kind:
            empty = {"type": "text", "text": ""} if kind == "text" else {
                "type": "thinking", "thinking": "", "signature": ""}
            self._start(out, kind, empty)
        out.append(sse("content_block_delta", {"type": "content_block_delta", "index": self._index,
                                               "delta": delta}))

    def _start(self, out: list[bytes], kind: str, block: dict[str, Any]) -> None:
        self._stop(out)
        self._index += 1
        self._open = kind
        out.append(sse("content_block_start", {"type": "content_block_start", "index": self._index,
                                               "content_block": block}))

    def _stop(self, out: list[bytes]) -> None:
        if self._open is None:
            return
        if self._open == "thinking":
            out.append(sse("content_block_delta", {"type": "content_block_delta", "index": self._index,
                                                   "delta": {"type": "signature_delta", "signature": SIGNATURE}}))
        out.append(sse("content_block_stop", {"type": "content_block_stop", "index": self._index}))
        self._open = None
