"""HTTP-free serving logic for chat completions: run the pipeline, call the engine, build the response.

The server makes a :class:`~unimodel.service.pipeline.Call` and calls :meth:`ChatService.prepare` (every
stage's ``enter`` runs and the engine's first event is pulled, so every refusal surfaces here, before any byte
is sent), then either :meth:`ChatService.complete` or :meth:`ChatService.stream`. Whatever happens next, the
request ends exactly once in :meth:`ChatService._end`: the engine iterator is closed (a client that leaves
cancels the engine's work), the stages' ``exit`` hooks run, and the observers see the finished context.
Mid-stream failures become an OpenAI-shaped error frame here, not in the route.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Optional

from unimodel.engines.base import Engine
from unimodel.errors import UnimodelError
from unimodel.protocol.events import (
    ContentDelta,
    Event,
    Finish,
    Flush,
    ReasoningDelta,
    ThinkingBudgetReached,
    ToolCallStart,
    Usage,
)
from unimodel.protocol.openai import ChatCompletion
from unimodel.protocol.sse import DONE, frame
from unimodel.service.assemble import (
    ChunkEncoder,
    CompletionBuilder,
    merge_deltas,
    reasoning_applied,
    reasoning_header,
)
from unimodel.service.context import CLIENT_CLOSED
from unimodel.service.observer import Observers
from unimodel.service.pipeline import Call, Pipeline, Stage

log = logging.getLogger("unimodel.chat")

REASONING_HEADER = "X-Unimodel-Reasoning"


class ClientClosedError(UnimodelError):
    """The client left before the answer was complete (recorded as 499; nobody is there to read it)."""

    status_code = CLIENT_CLOSED
    error_type = "client_closed"
    code = "client_closed"


@dataclass(eq=False)
class PreparedChat:
    call: Call
    entered: list[Stage]
    events: AsyncIterator[Event]
    first: list[Event]


class ChatService:
    """``capture_text_chars`` > 0 (the request log's ``--log-prompts``): the observers also get the prompt's and
    the answer's text, up to that many characters each, in ``ctx.attributes["prompt_text"]``/``["answer_text"]``
    (raw: the request log redacts them before they touch disk). The observers always get
    ``ctx.attributes["tool_names"]`` (the tools the model called) and ``["image_count"]``."""

    def __init__(self, engine: Engine, pipeline: Pipeline, observers: Optional[Observers] = None,
                 capture_text_chars: int = 0) -> None:
        self.engine = engine
        self.pipeline = pipeline
        self.observers = observers or Observers()
        self.capture_text_chars = capture_text_chars
        self.in_flight = 0  # requests between prepare and their one end (_observe); the metrics read it

    async def prepare(self, call: Call) -> PreparedChat:
        """Run the stages and start generation, pulling the first event so that refusals raise here."""
        self.in_flight += 1
        if self.capture_text_chars:
            call.state[_ANSWER_PARTS] = _AnswerText(self.capture_text_chars)
        try:
            entered = await self.pipeline.enter(call)
        except BaseException as exc:  # the pipeline already released the stages it had entered
            self._observe(call, exc)
            raise
        events: Optional[AsyncIterator[Event]] = None
        first: list[Event] = []
        try:
            events = aiter(self.pipeline.generate(call, self.engine.generate))
            try:
                first.append(await anext(events))
            except StopAsyncIteration:
                pass
        except BaseException as exc:
            await self._end(call, entered, events, exc)
            raise
        request = call.generation
        if call.created is None:
            call.created = int(time.time())
        call.ctx.reasoning = reasoning_applied(request.effort, request.model_effort, request.thinking_budget)
        call.response_headers[REASONING_HEADER] = reasoning_header(call.ctx.reasoning)
        for event in first:
            self._track(call, event)
        return PreparedChat(call, entered, events, first)

    async def complete(self, prepared: PreparedChat) -> dict[str, Any]:
        """The whole response body (with ``unimodel_reasoning``); headers are in ``call.response_headers``."""
        call, request = prepared.call, prepared.call.generation
        builder = CompletionBuilder(include_reasoning=request.include_reasoning)
        error: Optional[BaseException] = None
        try:
            builder.add_all(prepared.first)
            async for event in prepared.events:
                self._track(call, event)
                builder.add(event)
        except BaseException as exc:
            error = exc
            raise
        finally:
            await self._end(call, prepared.entered, prepared.events, error)
        applied = reasoning_applied(request.effort, request.model_effort, request.thinking_budget, builder.usage,
                                    builder.truncated)
        call.ctx.reasoning = applied
        call.response_headers[REASONING_HEADER] = reasoning_header(applied)
        completion: ChatCompletion = builder.completion(request.request_id, request.served_model, call.created)
        body = completion.model_dump(mode="json")
        body["unimodel_reasoning"] = applied
        return body

    async def stream(self, prepared: PreparedChat) -> AsyncGenerator[bytes, None]:
        """SSE frames to ``[DONE]``; a failure mid-stream ends it with an error frame, never a hang.

        Each yielded ``bytes`` is meant as one body write. With an engine that ``flushes``, the events up to
        each :class:`~unimodel.protocol.events.Flush` go out together, adjacent deltas merged into one chunk;
        otherwise one write per event (its frames together: finish and usage). What is left when the engine
        stops (the finish and usage frames, or an error frame) goes out with ``[DONE]`` in the last write, once
        the request has ended, so the last write always ends with :data:`DONE`."""
        call, request = prepared.call, prepared.call.generation
        wire = call.wire
        encoder = ChunkEncoder(request.request_id, request.served_model, include_reasoning=request.include_reasoning,
                               include_usage=bool(wire and wire.wants_usage_in_stream),
                               applied=call.ctx.reasoning, created=call.created)
        held: Optional[list[Event]] = [] if self.engine.flushes else None  # events waiting for a Flush
        error: Optional[BaseException] = None
        tail = b""  # the frames that go out with [DONE]
        try:
            opening = [frame(encoder.first())]
            for event in prepared.first:
                opening.extend(frame(c) for c in encoder.encode(event))
            yield b"".join(opening)
            async for event in prepared.events:
                if isinstance(event, Flush):
                    if held:
                        yield _encoded(encoder, merge_deltas(held))
                        held.clear()
                    continue
                self._track(call, event)
                if held is not None:
                    held.append(event)
                elif chunks := encoder.encode(event):
                    yield _frames(chunks)
            tail = _encoded(encoder, merge_deltas(held or []))
        except UnimodelError as exc:
            error = exc
            log.warning("stream %s failed: %s", call.ctx.request_id, exc.message)
            tail = _encoded(encoder, merge_deltas(held or [])) + frame(exc.to_dict())
        except Exception as exc:
            error = exc
            log.exception("stream %s failed", call.ctx.request_id)
            tail = _encoded(encoder, merge_deltas(held or [])) + frame(
                UnimodelError("The server had an internal error; it is logged.").to_dict())
        except BaseException as exc:  # cancelled or closed: the client left
            error = exc
            raise
        finally:
            await self._end(call, prepared.entered, prepared.events, error)
        yield tail + DONE

    async def abandon(self, prepared: PreparedChat) -> None:
        """End a prepared request that will never be read (its client left before the response started);
        a no-op for one that already ended. The server calls it after every response, so a prepared request
        always ends exactly once, even when its stream or completion never ran."""
        if not prepared.call.ctx.observed:
            await self._end(prepared.call, prepared.entered, prepared.events,
                            ClientClosedError("the client closed the connection before the answer began"))

    # ---- bookkeeping --------------------------------------------------------------------------------

    @staticmethod
    def _track(call: Call, event: Event) -> None:
        ctx = call.ctx
        if isinstance(event, (ContentDelta, ToolCallStart)):
            if ctx.first_answer_at is None:
                ctx.first_answer_at = time.perf_counter()
                if ctx.first_token_at is None:
                    ctx.first_token_at = ctx.first_answer_at
            if isinstance(event, ToolCallStart):
                ctx.attributes.setdefault("tool_names", []).append(event.name)
            elif (answer := call.state.get(_ANSWER_PARTS)) is not None:
                answer.add(event.text)
        elif isinstance(event, ReasoningDelta):
            if ctx.first_token_at is None:
                ctx.first_token_at = time.perf_counter()
        elif isinstance(event, Usage):
            ctx.usage = event if ctx.usage is None else ctx.usage + event
        elif isinstance(event, Finish):
            ctx.finish_reason = event.reason
        elif isinstance(event, ThinkingBudgetReached):
            ctx.reasoning["truncated"] = True

    async def _end(self, call: Call, entered: Sequence[Stage], events: Optional[AsyncIterator[Event]],
                   error: Optional[BaseException]) -> None:
        """Close the engine iterator, release the stages, tell the observers: once per request."""
        if call.ctx.observed:
            return
        if error is None and call.ctx.finish_reason is None:
            error = ClientClosedError("the client closed the connection before the answer was complete")
        try:
            if events is not None:
                await _close(events)
        except Exception:
            log.exception("closing the engine stream of %s failed", call.ctx.request_id)
        finally:
            await self.pipeline.exit(call, entered, error)
            self._observe(call, error)

    def _observe(self, call: Call, error: Optional[BaseException]) -> None:
        ctx = call.ctx
        ctx.finished_at = time.perf_counter()
        self.in_flight -= 1
        if isinstance(error, (asyncio.CancelledError, GeneratorExit)):
            error = ClientClosedError("the client closed the connection before the answer was complete")
        if isinstance(error, UnimodelError):
            ctx.status, ctx.error_type, ctx.error_message = error.status_code, error.code, error.message
        elif error is not None:
            ctx.status, ctx.error_type, ctx.error_message = 500, "internal_error", type(error).__name__
        request = call.request
        if request is not None and not ctx.reasoning:  # refused after validation, before the first event
            ctx.reasoning = reasoning_applied(request.effort, request.model_effort, request.thinking_budget)
        if "truncated" not in ctx.reasoning and ctx.reasoning:
            ctx.reasoning["truncated"] = False
        if request is not None:
            ctx.attributes.setdefault("image_count", request.image_count)
        if self.capture_text_chars:
            _capture_text(call, self.capture_text_chars)
        self.observers.request_finished(ctx)


_ANSWER_PARTS = "chat.answer_parts"


class _AnswerText:
    """The answer's content as it streams, kept up to ``limit`` characters (all the request log stores)."""

    __slots__ = ("parts", "room")

    def __init__(self, limit: int) -> None:
        self.parts: list[str] = []
        self.room = limit

    def add(self, text: str) -> None:
        if self.room > 0:
            self.parts.append(text[: self.room])
            self.room -= len(self.parts[-1])


def _frames(chunks: list[dict[str, Any]]) -> bytes:
    return frame(chunks[0]) if len(chunks) == 1 else b"".join([frame(c) for c in chunks])


def _encoded(encoder: ChunkEncoder, events: list[Event]) -> bytes:
    return b"".join([frame(c) for e in events for c in encoder.encode(e)])


def _capture_text(call: Call, limit: int) -> None:
    """The prompt (``role: text`` lines, images as ``[image]``) and the answer's content, cut to ``limit``."""
    if call.wire is not None:
        lines: list[str] = []
        size = 0
        for message in call.wire.messages:
            line = f"{message.role}: {message.text()}" + " [image]" * len(message.image_urls())
            lines.append(line[: limit - size])
            size += len(lines[-1]) + 1
            if size >= limit:
                break
        call.ctx.attributes["prompt_text"] = "\n".join(lines)
    answer = call.state.get(_ANSWER_PARTS)
    if answer is not None and answer.parts:
        call.ctx.attributes["answer_text"] = "".join(answer.parts)


async def _close(events: AsyncIterator[Event]) -> None:
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        await aclose()
