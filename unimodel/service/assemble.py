"""Build responses from neutral events: one ``chat.completion``, or a stream of chunk payloads.

Both paths read the same events, so a streamed response folds to exactly the non-streamed one.

Log probabilities (``Logprobs`` events, only when the client asked) become ``choices[0].logprobs.content``: in
the whole answer one list of every token's entry, in order; in a stream each entry rides on the chunk of the
text its token made (or on a chunk with an empty delta, for a token that made none), so a client that joins
the chunks' lists gets the same list. The thinking's entries are left out where the reasoning is hidden.

Several choices (``n`` > 1) come as ``ChoiceEvent`` s (the choices stage,
``gateway/choices.py``), then one untagged usage and finish: the builder keeps one message, finish reason and
log probabilities per choice and gives ``choices`` by index; the encoder writes each choice's chunks with its
``index`` (each choice's own first chunk with the role, as vLLM does; its own finish chunk), and the untagged
finish then writes only the usage chunk (when asked for) and the ``unimodel_reasoning`` report, on a chunk with
no choices.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, Optional

from unimodel.formats.reasoning import AppliedReasoning
from unimodel.protocol.events import (
    ChoiceEvent,
    ContentDelta,
    Event,
    Finish,
    Logprobs,
    ReasoningDelta,
    ThinkingBudgetReached,
    TokenLogprob,
    ToolCallArgsDelta,
    ToolCallEnd,
    ToolCallStart,
    Usage,
)
from unimodel.protocol.openai import (
    ChatCompletion,
    Choice,
    CompletionTokensDetails,
    FunctionCall,
    PromptTokensDetails,
    ResponseMessage,
    ToolCall,
    UsageInfo,
)


def reasoning_header(applied: dict[str, Any]) -> str:
    def show(v: Any) -> str:
        return "unlimited" if v is None else str(v).lower() if isinstance(v, bool) else str(v)

    return "; ".join(f"{k}={show(v)}" for k, v in applied.items())


def usage_info(usage: Optional[Usage]) -> Optional[UsageInfo]:
    if usage is None:
        return None
    return UsageInfo(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
        completion_tokens_details=CompletionTokensDetails(reasoning_tokens=usage.reasoning_tokens),
        prompt_tokens_details=None if usage.cached_tokens is None
        else PromptTokensDetails(cached_tokens=usage.cached_tokens),
    )


def _bytes(value: Optional[tuple[int, ...]]) -> Optional[list[int]]:
    return None if value is None else list(value)


def logprob_entries(tokens: Iterable[TokenLogprob]) -> list[dict[str, Any]]:
    """OpenAI's ``logprobs.content`` entries (``{token, logprob, bytes, top_logprobs}``) of ``tokens``."""
    return [{"token": t.token, "logprob": t.logprob, "bytes": _bytes(t.bytes),
             "top_logprobs": [{"token": a.token, "logprob": a.logprob, "bytes": _bytes(a.bytes)} for a in t.top]}
            for t in tokens]


class CompletionBuilder:
    """Folds events into one assistant message (one per choice, for several: ``choices``)."""

    def __init__(self, include_reasoning: bool = True) -> None:
        self.include_reasoning = include_reasoning
        self.reasoning: list[str] = []
        self.content: list[str] = []
        self.calls: dict[int, dict[str, Any]] = {}
        self.usage: Optional[Usage] = None
        self.finish_reason: Optional[str] = None
        self.truncated = False
        self.logprobs: Optional[list[TokenLogprob]] = None  # a list once the engine sent any (they were asked)
        self.choices: dict[int, CompletionBuilder] = {}  # index → that choice's builder, when there are several

    def add(self, event: Event) -> None:
        if type(event) is ChoiceEvent:
            choice = self.choices.get(event.index)
            if choice is None:
                choice = self.choices[event.index] = CompletionBuilder(self.include_reasoning)
            choice.add(event.event)
            if type(event.event) is ThinkingBudgetReached:
                self.truncated = True
        elif isinstance(event, ReasoningDelta):
            self.reasoning.append(event.text)
        elif isinstance(event, ContentDelta):
            self.content.append(event.text)
        elif isinstance(event, ToolCallStart):
            self.calls[event.index] = {"id": event.id, "name": event.name, "args": []}
        elif isinstance(event, ToolCallArgsDelta):
            self.calls[event.index]["args"].append(event.text)
        elif isinstance(event, Usage):
            self.usage = event if self.usage is None else self.usage + event
        elif isinstance(event, Finish):
            self.finish_reason = event.reason
        elif isinstance(event, ThinkingBudgetReached):
            self.truncated = True
        elif isinstance(event, Logprobs):
            if self.logprobs is None:
                self.logprobs = []
            if self.include_reasoning or not event.reasoning:
                self.logprobs.extend(event.tokens)
        elif isinstance(event, ToolCallEnd):
            pass

    def add_all(self, events: Iterable[Event]) -> "CompletionBuilder":
        for e in events:
            self.add(e)
        return self

    def message(self) -> ResponseMessage:
        reasoning = "".join(self.reasoning) if self.include_reasoning and self.reasoning else None
        content = "".join(self.content)
        tool_calls = [
            ToolCall(id=c["id"], function=FunctionCall(name=c["name"], arguments="".join(c["args"])))
            for _, c in sorted(self.calls.items())
        ]
        return ResponseMessage(
            content=content if content or not tool_calls else None,
            reasoning=reasoning,
            reasoning_content=reasoning,
            tool_calls=tool_calls or None,
        )

    def choice(self, index: int = 0) -> Choice:
        return Choice(index=index, message=self.message(), finish_reason=self.finish_reason or "stop",
                      logprobs=None if self.logprobs is None else {"content": logprob_entries(self.logprobs)})

    def completion(self, request_id: str, model: str, created: Optional[int] = None) -> ChatCompletion:
        return ChatCompletion(
            id=request_id,
            created=created if created is not None else int(time.time()),
            model=model,
            choices=[c.choice(i) for i, c in sorted(self.choices.items())] if self.choices else [self.choice()],
            usage=usage_info(self.usage),
        )


def _joined(last: Optional[Event], event: Event) -> Optional[Event]:
    """``last`` and ``event`` as one delta, when they are deltas of one kind (content, reasoning, one tool
    call's arguments); else None."""
    if type(event) is not type(last):
        return None
    if isinstance(event, (ContentDelta, ReasoningDelta)):
        return type(event)(last.text + event.text)  # type: ignore[union-attr]
    if isinstance(event, ToolCallArgsDelta) and isinstance(last, ToolCallArgsDelta) and event.index == last.index:
        return ToolCallArgsDelta(event.index, last.text + event.text)
    return None


def merge_deltas(events: list[Event]) -> list[Event]:
    """``events`` with each run of adjacent deltas of one kind (content, reasoning, one tool call's
    arguments) joined into one delta: events that go out in one write then make one chunk, not one per
    token. Folding the result gives the same message as folding ``events``.

    Log probabilities keep their order: adjacent ``Logprobs`` of one kind (thinking or not) are joined, and a
    delta that follows its run's ``Logprobs`` (``delta, logprobs, delta, logprobs``, as engines yield them)
    joins the delta before them, so the run still makes one chunk carrying all its tokens' entries.

    Several choices' events (``ChoiceEvent``) are joined only within a run of one choice's."""
    if events and type(events[0]) is ChoiceEvent:  # a stream of several choices starts every write with one
        return _merge_choices(events)
    out: list[Event] = []
    for event in events:
        last = out[-1] if out else None
        joined = _joined(last, event)
        if joined is not None:
            out[-1] = joined
            continue
        if isinstance(event, Logprobs):
            if isinstance(last, Logprobs) and last.reasoning == event.reasoning:
                out[-1] = Logprobs(last.tokens + event.tokens, event.reasoning)
                continue
        elif isinstance(last, Logprobs) and len(out) >= 2:
            joined = _joined(out[-2], event)
            if joined is not None:
                out[-2] = joined
                continue
        out.append(event)
    return out


def _merge_choices(events: list[Event]) -> list[Event]:
    """:func:`merge_deltas` within each run of adjacent events of one choice."""
    out: list[Event] = []
    run: list[Event] = []
    index = -1
    for event in events:
        if type(event) is ChoiceEvent:
            if event.index == index:
                run.append(event.event)
                continue
            out.extend(ChoiceEvent(index, e) for e in merge_deltas(run))
            run, index = [event.event], event.index
        else:
            out.extend(ChoiceEvent(index, e) for e in merge_deltas(run))
            run, index = [], -1
            out.append(event)
    out.extend(ChoiceEvent(index, e) for e in merge_deltas(run))
    return out


class ChunkEncoder:
    """Maps events to ``chat.completion.chunk`` payloads (dicts ready for JSON). ``n``: the choices the stream
    has (each gets its own first chunk)."""

    def __init__(self, request_id: str, model: str, *, include_reasoning: bool = True,
                 include_usage: bool = False, created: Optional[int] = None,
                 applied: Optional[AppliedReasoning] = None, n: int = 1) -> None:
        self.request_id = request_id
        self.model = model
        self.include_reasoning = include_reasoning
        self.include_usage = include_usage
        self.created = created if created is not None else int(time.time())
        self._usage: Optional[Usage] = None
        self._applied = applied
        self._truncated = False
        self.n = n
        self._index = 0  # the choice whose event is being encoded
        self._several = False  # a ChoiceEvent was seen: the untagged finish only closes the stream

    def _chunk(self, delta: dict[str, Any], finish_reason: Optional[str] = None,
               usage: Any = None, choices: bool = True, logprobs: Any = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.request_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": self._index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}]
            if choices else [],
        }
        if self.include_usage:
            body["usage"] = usage
        return body

    def first(self, index: int = 0) -> dict[str, Any]:
        """Choice ``index``'s first chunk: the role."""
        self._index = index
        chunk = self._chunk({"role": "assistant", "content": ""})
        self._index = 0
        return chunk

    def encode_all(self, events: Iterable[Event]) -> list[dict[str, Any]]:
        """The chunks of ``events`` (one write's): each ``Logprobs`` rides on the chunk just before it when that
        one carries a delta, else it makes a chunk of its own with an empty delta."""
        out: list[dict[str, Any]] = []
        for event in events:
            if type(event) is Logprobs:
                self._attach(out, event)
            elif type(event) is ChoiceEvent and type(event.event) is Logprobs:
                self._index = event.index
                self._attach(out, event.event)
                self._index = 0
            else:
                out.extend(self.encode(event))
        return out

    def _attach(self, chunks: list[dict[str, Any]], event: Logprobs) -> None:
        if event.reasoning and not self.include_reasoning:
            return
        entries = logprob_entries(event.tokens)
        choice = chunks[-1]["choices"][0] if chunks and chunks[-1]["choices"] else None
        if choice is None or choice["finish_reason"] is not None or not (choice["delta"] or choice["logprobs"]) \
                or choice["index"] != self._index:
            chunks.append(self._chunk({}, logprobs={"content": entries}))
        elif choice["logprobs"] is None:
            choice["logprobs"] = {"content": entries}
        else:
            choice["logprobs"]["content"].extend(entries)

    def encode(self, event: Event) -> list[dict[str, Any]]:
        if type(event) is ChoiceEvent:
            return self._encode_choice(event)
        if isinstance(event, ReasoningDelta):
            if not self.include_reasoning or not event.text:
                return []
            return [self._chunk({"reasoning": event.text, "reasoning_content": event.text})]
        if isinstance(event, ContentDelta):
            return [self._chunk({"content": event.text})] if event.text else []
        if isinstance(event, ToolCallStart):
            return [self._chunk({"tool_calls": [{
                "index": event.index, "id": event.id, "type": "function",
                "function": {"name": event.name, "arguments": ""},
            }]})]
        if isinstance(event, ToolCallArgsDelta):
            return [self._chunk({"tool_calls": [{"index": event.index, "function": {"arguments": event.text}}]})]
        if isinstance(event, Usage):
            self._usage = event if self._usage is None else self._usage + event
            return []
        if isinstance(event, ThinkingBudgetReached):
            self._truncated = True
            return []
        if isinstance(event, Logprobs):
            out: list[dict[str, Any]] = []
            self._attach(out, event)
            return out
        if isinstance(event, Finish):
            if self._several:
                return self._close_choices()
            out = [self._chunk({}, finish_reason=event.reason)]
            if self._applied is not None:
                out[0]["unimodel_reasoning"] = self._applied.report(
                    self._usage.reasoning_tokens if self._usage is not None else None, self._truncated)
            if self.include_usage:
                info = usage_info(self._usage)
                out.append(self._chunk({}, usage=info.model_dump() if info else None, choices=False))
            return out
        return []

    def _encode_choice(self, event: ChoiceEvent) -> list[dict[str, Any]]:
        """One choice's event: its chunks with its index; its finish is only its own finish chunk."""
        self._several = True
        index, self._index = self._index, event.index
        try:
            inner = event.event
            if isinstance(inner, Finish):
                return [self._chunk({}, finish_reason=inner.reason)]
            return self.encode(inner)
        finally:
            self._index = index

    def _close_choices(self) -> list[dict[str, Any]]:
        """The end of a stream of several choices (each has had its finish chunk): the usage chunk when asked
        for, and the reasoning report, on a chunk with no choices."""
        info = usage_info(self._usage) if self.include_usage else None
        chunk = self._chunk({}, usage=info.model_dump() if info else None, choices=False)
        if self._applied is not None:
            chunk["unimodel_reasoning"] = self._applied.report(
                self._usage.reasoning_tokens if self._usage is not None else None, self._truncated)
        elif not self.include_usage:
            return []
        return [chunk]
