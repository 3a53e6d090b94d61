"""Decode an OpenAI-compatible upstream's answer (SSE frames or one JSON body) into neutral events.

Written by hand because it joins three things no library does together: the SSE frames, the upstream's own
parsed fields (``reasoning``/``reasoning_content``/``tool_calls``) and our ``formats/`` parser over raw
content. Tool calls from both sources are renumbered into one index space.

Frames: each ``data:`` line comes as bytes (:mod:`unimodel.engines.sse_lines`) and is read by orjson, the
gateway's hot path; a frame orjson refuses is read again by the standard library before it counts as
malformed. One difference remains: an integer beyond 64 bits is a float.

Reasoning tokens: taken from the upstream's ``usage.completion_tokens_details.reasoning_tokens`` when it
reports them; otherwise counted as the streamed frames that carried thinking text (vLLM, SGLang and
llama.cpp send one token a frame; the format's thinking markers are not counted), and for a
non-streamed body estimated as characters / 4.

Prompt and completion tokens: the upstream's ``usage``. Where it reports none, they are counted with our
tokenizer when the engine has one (``count_tokens``), else estimated (completion: streamed frames, or
characters / 4 of a whole body; prompt: characters / 4 of the messages sent), and the usage is marked
``estimated``.

Prompt tokens read from the upstream's prefix cache: its ``usage.prompt_tokens_details.cached_tokens`` (vLLM
reports it with prefix caching and ``--enable-prompt-tokens-details``), else unknown (``None``).

Log probabilities (only when the client asked for them): each frame's ``choices[0].logprobs.content`` becomes
one ``Logprobs`` event after the frame's deltas, so they reach the client in the upstream's order, entry for
entry, whatever the parse mode: vLLM gives one entry for every generated token (thinking, markers, tool calls,
the stop token), and so do we. An entry is marked as thinking when its frame carried thinking (the upstream's
reasoning field, or raw text our parser read as thinking, its markers included), so a client whose reasoning is
hidden does not see it; a whole body's entries are thinking when its message has any (then all are hidden, as
vLLM hides them). Odd entries are skipped, numbers that are not finite become -9999.0 (vLLM's floor), and at
most 20 alternatives are kept per token.

Odd answers: an error object inside a frame or a body becomes our error through
:mod:`unimodel.engines.upstream_errors`; a frame or body that is not a JSON object, or a body without a list
of choices, is an :class:`UpstreamError` (502); any other odd field is read for what it holds or ignored,
never a crash of ours.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable
from typing import Any, Optional

import orjson

from unimodel.engines.upstream_errors import raise_embedded_error
from unimodel.errors import UpstreamError
from unimodel.formats.base import ModelFormat, OutputParser, new_call_id
from unimodel.protocol.events import (
    ContentDelta,
    Event,
    Finish,
    FinishReason,
    Logprobs,
    ReasoningDelta,
    TokenLogprob,
    TopLogprob,
    ToolCallArgsDelta,
    ToolCallEnd,
    ToolCallStart,
    Usage,
)

log = logging.getLogger("unimodel.upstream")

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
    def __init__(self, fmt: ModelFormat, *, parse_content: bool, logprobs: bool = False) -> None:
        self.parser: Optional[OutputParser] = fmt.new_parser() if parse_content else None
        self._think_open = fmt.think_open_text  # a frame of that token alone opens the thinking (vLLM-parsed)
        self.logprobs = logprobs  # the client asked for them: read the upstream's
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
        self._streamed = False
        self._reasoning_text: list[str] = []  # for counting when the upstream reports no usage
        self._answer_text: list[str] = []
        self._count_tokens: Optional[Callable[[str], int]] = None
        self._prompt_text: Optional[Callable[[], str]] = None

    def set_counting(self, count_tokens: Optional[Callable[[str], int]],
                     prompt_text: Optional[Callable[[], str]]) -> None:
        """How to count usage the upstream does not report: a tokenizer (or None: estimate), and the prompt
        as text (asked for only when needed)."""
        self._count_tokens = count_tokens
        self._prompt_text = prompt_text

    # ---- input --------------------------------------------------------------------------------------

    def sse_line(self, line: bytes) -> list[Event]:
        """One line of the SSE stream (see :mod:`unimodel.engines.sse_lines`), without its line ending."""
        if not line.startswith(b"data:"):
            return []  # blank separators, comments, `event:` lines
        data = line[5:].strip()
        if data == b"[DONE]":
            self.done = True
            return []
        try:
            frame = orjson.loads(data)
        except orjson.JSONDecodeError:
            frame = self._lenient_frame(data)
            if frame is None:
                return []
        if not isinstance(frame, dict):
            log.warning("the upstream sent a stream frame that is not an object: %r", data[:200])
            raise UpstreamError("the upstream sent a stream frame that is not an object")
        self._streamed = True
        return self._frame(frame)

    def _lenient_frame(self, data: bytes) -> Any:
        """A frame orjson refuses, read as the standard library reads it: invalid UTF-8 as U+FFFD, a lone
        surrogate escape, ``NaN``/``Infinity``, a number beyond a double. So orjson changes no answer, only the
        speed. None for a ``[DONE]`` padded with non-ASCII whitespace."""
        text = data.decode("utf-8", "replace").strip()
        if text == "[DONE]":
            self.done = True
            return None
        try:
            return json.loads(text)
        except (ValueError, RecursionError) as exc:  # RecursionError: nested past the interpreter's stack
            log.warning("the upstream sent a malformed stream frame: %r", data[:200])
            raise UpstreamError("the upstream sent a malformed stream frame") from exc

    def _frame(self, frame: dict[str, Any]) -> list[Event]:
        if frame.get("error") is not None:
            raise_embedded_error(frame["error"])
        self._saw_any = True
        if isinstance(frame.get("usage"), dict):
            self._usage = frame["usage"]
        out: list[Event] = []
        choices = frame.get("choices")
        for choice in choices if isinstance(choices, list) else []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            thinking = self.thinking_open
            events = self._delta(delta, streamed=True) if isinstance(delta, dict) else []
            out.extend(events)
            if self.logprobs and choice.get("logprobs") is not None:
                tokens = token_logprobs(choice["logprobs"])
                if tokens:
                    out.append(Logprobs(tokens, self._thinking_frame(events, thinking, tokens)))
            if choice.get("finish_reason"):
                self._finish = str(choice["finish_reason"])
        return out

    def whole_body(self, raw: bytes) -> list[Event]:
        """An upstream that answered with one JSON body (all of it, as received): its events to the end."""
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError) as exc:  # not JSON, not UTF-8, or nested past the interpreter's stack
            log.warning("the upstream answered with a body that is not JSON: %r", raw[:200])
            raise UpstreamError("the upstream answered with a body that is not JSON") from exc
        if not isinstance(body, dict):
            log.warning("the upstream answered with JSON that is not an object: %r", raw[:200])
            raise UpstreamError("the upstream answered with JSON that is not an object")
        return self.whole_response(body)

    def whole_response(self, body: dict[str, Any]) -> list[Event]:
        """An upstream that answered with one ``chat.completion`` body."""
        if body.get("error") is not None:
            raise_embedded_error(body["error"])
        choices = body.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise UpstreamError("the upstream answered without choices")
        message = choices[0].get("message") or {}
        if not isinstance(message, dict):
            raise UpstreamError("the upstream answered with a message that is not an object")
        out = self._delta(message, streamed=False)
        if self.logprobs and choices[0].get("logprobs") is not None:
            tokens = token_logprobs(choices[0]["logprobs"])
            if tokens:  # the body's thinking and answer cannot be told apart token by token: all or nothing
                out.append(Logprobs(tokens, any(isinstance(e, ReasoningDelta) for e in out)))
        reason = choices[0].get("finish_reason")
        self._finish = str(reason) if reason else "stop"  # as a frame's: anything unknown finishes as "stop"
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
        calls = delta.get("tool_calls")
        for call in calls if isinstance(calls, list) else []:
            if isinstance(call, dict):
                out.extend(self._upstream_call(call))
        # thinking tokens: frames that carried thinking text (markers alone are not thinking)
        if streamed and (reasoning or content or delta.get("tool_calls")):
            self._frames += 1
            self._reasoning_frames += any(isinstance(e, ReasoningDelta) for e in out)
        elif not streamed:
            chars = sum(len(e.text) for e in out if isinstance(e, ReasoningDelta))
            self._reasoning_frames += math.ceil(chars / 4)
        self._keep_text(out)
        return out

    def _thinking_frame(self, events: list[Event], thinking_before: bool, tokens: tuple[TokenLogprob, ...]) -> bool:
        """Whether a frame's tokens were thinking: it carried thinking text, or no answer text and the thinking
        was open before or after it (a marker), or its token is the opening marker (an upstream that parses
        sends that frame empty, before its thinking starts)."""
        for e in events:
            if isinstance(e, ReasoningDelta):
                return True
        if any(isinstance(e, (ContentDelta, ToolCallStart, ToolCallArgsDelta)) for e in events):
            return False
        return thinking_before or self.thinking_open or any(t.token == self._think_open for t in tokens)

    def _keep_text(self, events: Iterable[Event]) -> None:
        for e in events:
            if isinstance(e, ReasoningDelta):
                self._reasoning_text.append(e.text)
            elif isinstance(e, (ContentDelta, ToolCallArgsDelta)):
                self._answer_text.append(e.text)
            elif isinstance(e, ToolCallStart):
                self._answer_text.append(e.name)

    def _upstream_call(self, call: dict[str, Any]) -> list[Event]:
        key = call.get("index")
        if not isinstance(key, int) or isinstance(key, bool):
            key = len(self._upstream_calls)
        state = self._upstream_calls.setdefault(key, _UpstreamCall())
        fn = call.get("function")
        if not isinstance(fn, dict):
            fn = {}
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
        self._keep_text(out)
        final = tail[-1]
        assert isinstance(final, Finish)
        if any(s.index is not None for s in self._upstream_calls.values()) and final.reason == "stop":
            final = Finish("tool_calls")
        out.append(self._usage_event())
        out.append(final)
        return out

    def _usage_event(self) -> Usage:
        u = self._usage or {}
        details = u.get("completion_tokens_details")
        prompt = _count(u.get("prompt_tokens"))
        completion = _count(u.get("completion_tokens"))
        prompt_details = u.get("prompt_tokens_details")
        cached = _count(prompt_details.get("cached_tokens")) if isinstance(prompt_details, dict) else None
        reasoning = _count(details.get("reasoning_tokens")) if isinstance(details, dict) else None
        estimated = prompt is None or completion is None
        if prompt is None:
            prompt = self._count_text(self._prompt_text()) if self._prompt_text is not None else 0
        if completion is None:
            if self._count_tokens is not None or not self._streamed:
                completion = self._count_text("".join(self._reasoning_text)) + self._count_text(
                    "".join(self._answer_text))
            else:
                completion = self._frames  # one token a frame
        if reasoning is None:
            if self._usage is None and self._count_tokens is not None:
                reasoning = self._count_text("".join(self._reasoning_text))
            else:
                reasoning = self._reasoning_frames
            reasoning = min(reasoning, completion)  # our count of a part never exceeds the whole
        if cached is not None:
            cached = min(cached, prompt)
        return Usage(prompt_tokens=prompt, completion_tokens=completion, reasoning_tokens=reasoning,
                     estimated=estimated, cached_tokens=cached)

    def _count_text(self, text: str) -> int:
        if not text:
            return 0
        if self._count_tokens is not None:
            try:
                return max(0, int(self._count_tokens(text)))
            except Exception:  # a tokenizer failing must not fail the response: estimate instead
                log.warning("counting tokens failed; estimating from characters", exc_info=True)
        return math.ceil(len(text) / 4)


MAX_TOP_LOGPROBS = 20  # OpenAI's and vLLM's most


def token_logprobs(value: Any) -> tuple[TokenLogprob, ...]:
    """The entries of an upstream's ``logprobs`` object (``{"content": [...]}``), read leniently: an entry
    without a string token is skipped, an odd number is -9999.0, odd bytes are None."""
    content = value.get("content") if isinstance(value, dict) else None
    if not isinstance(content, list):
        return ()
    out: list[TokenLogprob] = []
    for entry in content:
        if not isinstance(entry, dict) or not isinstance(entry.get("token"), str):
            continue
        tops = entry.get("top_logprobs")
        top = tuple(TopLogprob(a["token"], _logprob(a.get("logprob")), _bytes(a.get("bytes")))
                    for a in (tops if isinstance(tops, list) else ())[:MAX_TOP_LOGPROBS]
                    if isinstance(a, dict) and isinstance(a.get("token"), str))
        out.append(TokenLogprob(entry["token"], _logprob(entry.get("logprob")), _bytes(entry.get("bytes")), top))
    return tuple(out)


def _logprob(value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return max(float(value), -9999.0)
    return -9999.0


def _bytes(value: Any) -> Optional[tuple[int, ...]]:
    if isinstance(value, list) and all(isinstance(b, int) and not isinstance(b, bool) and 0 <= b < 256
                                       for b in value):
        return tuple(value)
    return None


def _count(value: Any) -> Optional[int]:
    """A token count as the upstream reported it, or None when it is absent or not a count."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value if value >= 0 else None
    if isinstance(value, float) and math.isfinite(value) and value >= 0:
        return int(value)
    return None

