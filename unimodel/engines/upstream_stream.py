"""Decode an OpenAI-compatible upstream's answer (SSE frames or one JSON body) into neutral events.

Written by hand because it joins three things no library does together: the SSE frames, the upstream's own
parsed fields (``reasoning``/``reasoning_content``/``tool_calls``) and our ``formats/`` parser over raw
content. Tool calls from both sources are renumbered into one index space.

Reasoning tokens: taken from the upstream's ``usage.completion_tokens_details.reasoning_tokens`` when it
reports them; otherwise counted as the streamed frames that carried thinking text (vLLM, SGLang and
llama.cpp send one token a frame; the ``[THINK]``/``[/THINK]`` markers are not counted), and for a
non-streamed body estimated as characters / 4.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any, Optional

from unimodel.errors import UpstreamError, UpstreamStatusError
from unimodel.formats.base import ModelFormat, OutputParser, new_call_id
from unimodel.protocol.events import (
    ContentDelta,
    Event,
    Finish,
    FinishReason,
    ReasoningDelta,
    ToolCallArgsDelta,
    ToolCallEnd,
    ToolCallStart,
    Usage,
)

_FINISH: dict[str, FinishReason] = {
    "stop": "stop", "length": "length", "tool_calls": "tool_calls", "function_call": "tool_calls",
    "content_filter": "content_filter",
}


class _UpstreamCall:
    __slots__ = ("id", "name", "index", "pending")

    def __init__(self) -> None:
        self.id: Optional[str] = None
        self.name: Optional[str] = None
        self.index: Optional[int] = None
        self.pending: list[str] = []


class UpstreamStreamDecoder:
    def __init__(self, fmt: ModelFormat, *, parse_content: bool) -> None:
        self.parser: Optional[OutputParser] = fmt.new_parser() if parse_content else None
        self.done = False
        self._finish: Optional[str] = None
        self._usage: Optional[dict[str, Any]] = None
        self._next_index = 0
        self._parser_index: dict[int, int] = {}
        self._upstream_calls: dict[int, _UpstreamCall] = {}
        self._frames = 0
        self._reasoning_frames = 0
        self._saw_any = False
        self._thinking_field_open = False  # the upstream's own reasoning field is streaming

    # ---- input --------------------------------------------------------------------------------------

    def sse_line(self, line: str) -> list[Event]:
        if not line.startswith("data:"):
            return []  # blank separators, comments, `event:` lines
        data = line[5:].strip()
        if data == "[DONE]":
            self.done = True
            return []
        try:
            frame = json.loads(data)
        except ValueError as exc:
            raise UpstreamError(f"the upstream sent a malformed stream frame: {data[:200]!r}") from exc
        if not isinstance(frame, dict):
            raise UpstreamError("the upstream sent a stream frame that is not an object")
        return self._frame(frame)

    def _frame(self, frame: dict[str, Any]) -> list[Event]:
        if "error" in frame:
            _raise_embedded_error(frame["error"])
        self._saw_any = True
        if isinstance(frame.get("usage"), dict):
            self._usage = frame["usage"]
        out: list[Event] = []
        for choice in frame.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if isinstance(delta, dict):
                out.extend(self._delta(delta, streamed=True))
            if choice.get("finish_reason"):
                self._finish = str(choice["finish_reason"])
        return out

    def whole_response(self, body: dict[str, Any]) -> list[Event]:
        """An upstream that answered with one ``chat.completion`` body."""
        if "error" in body:
            _raise_embedded_error(body["error"])
        choices = body.get("choices") or []
        if not choices or not isinstance(choices[0], dict):
            raise UpstreamError("the upstream answered without choices")
        message = choices[0].get("message") or {}
        out = self._delta(message, streamed=False)
        self._finish = choices[0].get("finish_reason") or "stop"
        if isinstance(body.get("usage"), dict):
            self._usage = body["usage"]
        self.done = True
        self._saw_any = True
        return out + self.close()

    def _delta(self, delta: dict[str, Any], *, streamed: bool) -> list[Event]:
        out: list[Event] = []
        reasoning = delta.get("reasoning")
        if not isinstance(reasoning, str) or not reasoning:
            reasoning = delta.get("reasoning_content")
        if isinstance(reasoning, str) and reasoning:
            out.append(ReasoningDelta(reasoning))
            self._thinking_field_open = True
        content = delta.get("content")
        if (isinstance(content, str) and content) or delta.get("tool_calls"):
            self._thinking_field_open = False
        if isinstance(content, str) and content:
            if self.parser is None:
                out.append(ContentDelta(content))
            else:
                out.extend(self._renumber(self.parser.feed_text(content)))
        for call in delta.get("tool_calls") or []:
            if isinstance(call, dict):
                out.extend(self._upstream_call(call))
        # thinking tokens: frames that carried thinking text (markers alone are not thinking)
        if streamed and (reasoning or content or delta.get("tool_calls")):
            self._frames += 1
            self._reasoning_frames += any(isinstance(e, ReasoningDelta) for e in out)
        elif not streamed:
            chars = sum(len(e.text) for e in out if isinstance(e, ReasoningDelta))
            self._reasoning_frames += math.ceil(chars / 4)
        return out

    def _upstream_call(self, call: dict[str, Any]) -> list[Event]:
        key = call.get("index", len(self._upstream_calls))
        state = self._upstream_calls.setdefault(int(key), _UpstreamCall())
        fn = call.get("function") or {}
        if call.get("id") and state.id is None:
            state.id = str(call["id"])
        if fn.get("name") and state.name is None:
            state.name = str(fn["name"])
        args = fn.get("arguments")
        if isinstance(args, dict):  # some servers send an object instead of a JSON string
            args = json.dumps(args, ensure_ascii=False)
        if isinstance(args, str) and args:
            state.pending.append(args)
        out: list[Event] = []
        if state.index is None and state.name is not None:
            state.index = self._next_index
            self._next_index += 1
            out.append(ToolCallStart(state.index, state.id or new_call_id(), state.name))
        if state.index is not None and state.pending:
            out.append(ToolCallArgsDelta(state.index, "".join(state.pending)))
            state.pending.clear()
        return out

    def _renumber(self, events: Iterable[Event]) -> list[Event]:
        out: list[Event] = []
        for e in events:
            if isinstance(e, ToolCallStart):
                self._parser_index[e.index] = self._next_index
                self._next_index += 1
                out.append(ToolCallStart(self._parser_index[e.index], e.id, e.name))
            elif isinstance(e, ToolCallArgsDelta):
                out.append(ToolCallArgsDelta(self._parser_index[e.index], e.text))
            elif isinstance(e, ToolCallEnd):
                out.append(ToolCallEnd(self._parser_index[e.index]))
            else:
                out.append(e)
        return out

    # ---- state for budget enforcement ---------------------------------------------------------------

    @property
    def thinking_open(self) -> bool:
        """The model is thinking right now (in raw markers or in the upstream's reasoning field)."""
        return self._thinking_field_open or (self.parser is not None and self.parser.in_reasoning)

    @property
    def reasoning_tokens(self) -> int:
        """Thinking tokens so far, as streamed frames (one token a frame on vLLM, SGLang, llama.cpp)."""
        return self._reasoning_frames

    def usage_so_far(self) -> Usage:
        """Usage of a call we cut short (the upstream's own usage frame never came)."""
        return self._usage_event()

    # ---- end ----------------------------------------------------------------------------------------

    def close(self) -> list[Event]:
        if self._finish is None and not self.done:
            raise UpstreamError("the upstream stream ended before the response was complete")
        reason: FinishReason = _FINISH.get(self._finish or "stop", "stop")
        out: list[Event] = []
        for state in self._upstream_calls.values():
            if state.index is None:  # arguments without a name: keep what came as text, never drop it
                if state.pending:
                    out.append(ContentDelta("".join(state.pending)))
                continue
            out.append(ToolCallEnd(state.index))
        tail = self._renumber(self.parser.finish(reason)) if self.parser else [Finish(reason)]
        out.extend(tail[:-1])
        final = tail[-1]
        assert isinstance(final, Finish)
        if any(s.index is not None for s in self._upstream_calls.values()) and final.reason == "stop":
            final = Finish("tool_calls")
        out.append(self._usage_event())
        out.append(final)
        return out

    def _usage_event(self) -> Usage:
        u = self._usage or {}
        details = u.get("completion_tokens_details") or {}
        reasoning = details.get("reasoning_tokens") if isinstance(details, dict) else None
        completion = u.get("completion_tokens")
        return Usage(
            prompt_tokens=int(u.get("prompt_tokens") or 0),
            completion_tokens=int(completion) if completion is not None else self._frames,
            reasoning_tokens=int(reasoning) if reasoning is not None else self._reasoning_frames,
        )


def _raise_embedded_error(err: Any) -> None:
    if isinstance(err, dict):
        message = str(err.get("message") or "the upstream reported an error")
        code = err.get("code")
        status = code if isinstance(code, int) and 400 <= code < 600 else 502
        raise UpstreamStatusError(message, upstream_status=status)
    raise UpstreamError(f"the upstream reported an error: {err}")
