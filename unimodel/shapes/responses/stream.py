"""The Responses API's stream: neutral events → OpenAI's event grammar, ``event: TYPE\\ndata: JSON\\n\\n`` frames.

Every frame carries ``type`` and a ``sequence_number`` counting from 0. The stream opens with
``response.created`` and ``response.in_progress`` (the Response with no output yet); each output item then goes
``response.output_item.added`` → its deltas → ``response.output_item.done``:

* reasoning: ``response.content_part.added`` (a ``reasoning_text`` part), ``response.reasoning_text.delta`` …,
  ``response.reasoning_text.done``, ``response.content_part.done``. When the client asked for a reasoning
  summary, the reasoning goes out as the item's summary instead (``response.reasoning_summary_part.added``,
  ``response.reasoning_summary_text.delta`` …, ``.done``, ``response.reasoning_summary_part.done``): this
  server has no separate summarizer, and sending the text twice would double the stream;
* a message: ``response.content_part.added`` (an ``output_text`` part), ``response.output_text.delta`` …,
  ``response.output_text.done``, ``response.content_part.done``;
* a function call: ``response.function_call_arguments.delta`` …, ``response.function_call_arguments.done``.

An item opens when the model starts writing something of another kind than the open item, so items come in
the order the model wrote them. The stream ends with ``response.completed`` (``response.incomplete`` when the
answer was cut at ``max_output_tokens``; ``response.failed`` when it broke midway, with ``error: {code,
message}``, ``code`` being ``rate_limit_exceeded`` or ``server_error`` as the SDK's ``ResponseError`` knows
them), carrying the whole Response, built by the same functions as the non-streamed body (:mod:`.convert`),
with the ids the stream used.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

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
from unimodel.shapes.responses.convert import (
    ResponseFrame,
    message_item,
    output_text,
    reasoning_item,
    response_object,
    status_of,
    usage_object,
)


class _Item:
    """One output item while it streams."""

    __slots__ = ("kind", "index", "id", "parts", "call_id", "name")

    def __init__(self, kind: str, index: int, item_id: str, call_id: str = "", name: str = "") -> None:
        self.kind = kind  # "reasoning", "message" or "function_call"
        self.index = index
        self.id = item_id
        self.parts: list[str] = []
        self.call_id = call_id
        self.name = name


_PREFIX = {"reasoning": "rs", "message": "msg", "function_call": "fc"}


class ResponsesStreamWriter:
    """The writer of one streamed Response (see the module's docstring)."""

    def __init__(self, frame: ResponseFrame) -> None:
        self.frame = frame
        self.seq = 0
        self.done: list[tuple[int, dict[str, Any]]] = []  # the items done, with their output index
        self.text_item: Optional[_Item] = None  # the open reasoning or message item
        self.calls: dict[int, _Item] = {}  # open function calls by tool-call index
        self.count = 0  # items opened
        self.usage: Optional[Usage] = None
        self.finish: Optional[str] = None
        self.final: Optional[dict[str, Any]] = None

    # ---- the StreamWriter protocol ---------------------------------------------------------------------

    def opening(self, events: Sequence[Event]) -> bytes:
        snapshot = response_object(self.frame, status="in_progress", output=[], usage=None)
        out = [self._event("response.created", response=snapshot),
               self._event("response.in_progress", response=snapshot)]
        out.extend(self._encode(events))
        return b"".join(out)

    def write(self, events: Sequence[Event]) -> bytes:
        return b"".join(self._encode(events))

    def closing(self, events: Sequence[Event], error: Optional[UnimodelError]) -> bytes:
        out = self._encode(events)
        if error is not None:
            status, reason = "failed", None
        else:
            status, reason = status_of(self.finish)
        item_status = "completed" if status == "completed" else "incomplete"
        out.extend(self._close_text(item_status))
        for index in sorted(self.calls):
            out.extend(self._close_call(self.calls[index], item_status))
        self.calls.clear()
        usage = None if self.usage is None else usage_object(
            self.usage.prompt_tokens, self.usage.completion_tokens, self.usage.reasoning_tokens,
            self.usage.cached_tokens)
        # the codes the SDK's ResponseError knows: our own stable code is in the request log and the metrics
        failure = None if error is None else {"code": "rate_limit_exceeded" if error.status_code == 429
                                              else "server_error", "message": error.message}
        output = [item for _, item in sorted(self.done, key=lambda pair: pair[0])]
        self.final = response_object(self.frame, status=status, output=output, usage=usage,
                                     incomplete_reason=reason, error=failure)
        kind = {"completed": "response.completed", "incomplete": "response.incomplete"}.get(status, "response.failed")
        out.append(self._event(kind, response=self.final))
        return b"".join(out)

    def result(self) -> Optional[dict[str, Any]]:
        return self.final

    # ---- events → frames -------------------------------------------------------------------------------

    def _encode(self, events: Sequence[Event]) -> list[bytes]:
        out: list[bytes] = []
        for event in events:
            if isinstance(event, ContentDelta):
                if event.text:
                    out.extend(self._text("message", event.text))
            elif isinstance(event, ReasoningDelta):
                if event.text and self.frame.include_reasoning:
                    out.extend(self._text("reasoning", event.text))
            elif isinstance(event, ToolCallStart):
                out.extend(self._close_text("completed"))
                item = self._open("function_call", call_id=event.id, name=event.name)
                self.calls[event.index] = item
                out.append(self._event("response.output_item.added", output_index=item.index,
                                       item=self.frame.call_item(item.id, item.call_id, item.name, "",
                                                                 "in_progress")))
            elif isinstance(event, ToolCallArgsDelta):
                item = self.calls.get(event.index)
                if item is not None and event.text:
                    item.parts.append(event.text)
                    out.append(self._event("response.function_call_arguments.delta", item_id=item.id,
                                           output_index=item.index, delta=event.text))
            elif isinstance(event, ToolCallEnd):
                item = self.calls.pop(event.index, None)
                if item is not None:
                    out.extend(self._close_call(item, "completed"))
            elif isinstance(event, Usage):
                self.usage = event if self.usage is None else self.usage + event
            elif isinstance(event, Finish):
                self.finish = event.reason
        return out

    def _text(self, kind: str, text: str) -> list[bytes]:
        out: list[bytes] = []
        item = self.text_item
        if item is None or item.kind != kind:
            out.extend(self._close_text("completed"))
            for index in sorted(self.calls):  # a call the engine never ended is over once text comes
                out.extend(self._close_call(self.calls[index], "completed"))
            self.calls.clear()
            item = self.text_item = self._open(kind)
            out.extend(self._added(item))
        item.parts.append(text)
        if kind == "message":
            out.append(self._event("response.output_text.delta", item_id=item.id, output_index=item.index,
                                   content_index=0, delta=text, logprobs=[]))
        elif self.frame.summary:
            out.append(self._event("response.reasoning_summary_text.delta", item_id=item.id,
                                   output_index=item.index, summary_index=0, delta=text))
        else:
            out.append(self._event("response.reasoning_text.delta", item_id=item.id, output_index=item.index,
                                   content_index=0, delta=text))
        return out

    def _open(self, kind: str, call_id: str = "", name: str = "") -> _Item:
        index = self.count
        self.count += 1
        return _Item(kind, index, self.frame.item_id(_PREFIX[kind], index), call_id, name)

    def _added(self, item: _Item) -> list[bytes]:
        where = {"item_id": item.id, "output_index": item.index}
        if item.kind == "message":
            return [self._event("response.output_item.added", output_index=item.index,
                                item={**message_item(item.id, "", "in_progress"), "content": []}),
                    self._event("response.content_part.added", **where, content_index=0, part=output_text(""))]
        added = self._event("response.output_item.added", output_index=item.index,
                            item={"id": item.id, "type": "reasoning", "summary": [], "status": "in_progress"})
        if self.frame.summary:
            return [added, self._event("response.reasoning_summary_part.added", **where, summary_index=0,
                                       part={"type": "summary_text", "text": ""})]
        return [added, self._event("response.content_part.added", **where, content_index=0,
                                   part={"type": "reasoning_text", "text": ""})]

    def _close_text(self, status: str) -> list[bytes]:
        item = self.text_item
        if item is None:
            return []
        self.text_item = None
        text = "".join(item.parts)
        where = {"item_id": item.id, "output_index": item.index}
        if item.kind == "message":
            done = message_item(item.id, text, status)
            out = [self._event("response.output_text.done", **where, content_index=0, text=text, logprobs=[]),
                   self._event("response.content_part.done", **where, content_index=0, part=done["content"][0])]
        elif self.frame.summary:
            done = reasoning_item(self.frame, item.id, text, status)
            out = [self._event("response.reasoning_summary_text.done", **where, summary_index=0, text=text),
                   self._event("response.reasoning_summary_part.done", **where, summary_index=0,
                               part=done["summary"][0])]
        else:
            done = reasoning_item(self.frame, item.id, text, status)
            out = [self._event("response.reasoning_text.done", **where, content_index=0, text=text),
                   self._event("response.content_part.done", **where, content_index=0, part=done["content"][0])]
        out.append(self._event("response.output_item.done", output_index=item.index, item=done))
        self.done.append((item.index, done))
        return out

    def _close_call(self, item: _Item, status: str) -> list[bytes]:
        arguments = "".join(item.parts)
        done = self.frame.call_item(item.id, item.call_id, item.name, arguments, status)
        self.done.append((item.index, done))
        return [self._event("response.function_call_arguments.done", item_id=item.id, output_index=item.index,
                            name=done["name"], arguments=arguments),
                self._event("response.output_item.done", output_index=item.index, item=done)]

    def _event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + dumps(payload) + b"\n\n"
