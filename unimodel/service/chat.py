"""HTTP-free serving logic for chat completions: run the pipeline, call the engine, build the response.

The server makes a :class:`~unimodel.service.pipeline.Call` and calls :meth:`ChatService.prepare` (every
stage's ``enter`` runs and the engine's first event is pulled, so every refusal surfaces here, before any byte
is sent), then either :meth:`ChatService.complete` or :meth:`ChatService.stream`. Whatever happens next, the
request ends exactly once in :meth:`ChatService._end`: the engine iterator is closed (a client that leaves
cancels the engine's work), the stages' ``exit`` hooks run, and the observers see the finished context; that
end runs as one unit no cancellation interrupts (:func:`~unimodel.service.ending.run_to_end`).
Mid-stream failures become an OpenAI-shaped error frame here, not in the route.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Generator
from dataclasses import dataclass
from typing import Any, Optional

from unimodel.engines.base import Engine
from unimodel.errors import ClientClosedError, UnimodelError
from unimodel.formats.reasoning import AppliedReasoning
from unimodel.protocol.events import (
    ChoiceEvent,
    ContentDelta,
    Event,
    Finish,
    Flush,
    ReasoningDelta,
    ThinkingBudgetReached,
    ToolCallArgsDelta,
    ToolCallStart,
    Usage,
    close_events,
)
from unimodel.protocol.openai import ChatCompletion
from unimodel.service.assemble import CompletionBuilder, merge_deltas, reasoning_header
from unimodel.service.ending import run_to_end
from unimodel.service.observer import Observers
from unimodel.service.pipeline import Call, Pipeline, Stage, StageState
from unimodel.service.usage_estimate import UsageEstimator, text_bytes

log = logging.getLogger("unimodel.chat")

REASONING_HEADER = "X-Unimodel-Reasoning"


@dataclass(eq=False)
class PreparedChat:
    """A request whose stages have entered and whose engine stream has started. ``ended``: its end has begun
    (it is never begun twice)."""

    call: Call
    entered: list[Stage]
    events: Optional[AsyncIterator[Event]]
    first: list[Event]
    ended: bool = False


class ChatService:
    """``capture_text_chars`` > 0 (the request log's ``--log-prompts``): the observers also get the prompt's and
    the answer's text, up to that many characters each, in ``ctx.prompt_text``/``ctx.answer_text`` (raw: the
    request log redacts them before they touch disk). The observers always get ``ctx.tool_names`` (the tools
    the model called) and ``ctx.image_count``.

    A request that ends without a usage event once the engine was asked (its client left, before the first
    token or mid-stream; the stream broke after some output) gets ``estimator``'s estimate of its prompt and of
    the text that came (``Usage(..., estimated=True)``) before the stages' ``exit``: the limits settle with it,
    and the request log and the metrics count it. One that failed before any output for another reason (the
    engine's queue was full, the upstream refused) is charged nothing: the model did no work we can see."""

    def __init__(self, engine: Engine, pipeline: Pipeline, observers: Optional[Observers] = None,
                 capture_text_chars: int = 0, estimator: UsageEstimator = UsageEstimator()) -> None:
        self.engine = engine
        self.pipeline = pipeline
        self.observers = observers or Observers()
        self.capture_text_chars = capture_text_chars
        self.estimator = estimator
        self.in_flight = 0  # requests between prepare and their one end (_observe); the metrics read it

    async def prepare(self, call: Call) -> PreparedChat:
        """Run the stages and start generation, pulling the first event so that refusals raise here."""
        self.in_flight += 1
        if self.capture_text_chars:
            call.put(_ANSWER, _AnswerText(self.capture_text_chars))
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
            await self._end(PreparedChat(call, entered, events, first), exc)
            raise
        if call.created is None:
            call.created = int(time.time())
        call.response_headers[REASONING_HEADER] = reasoning_header(_applied(call).report())
        for event in first:
            self._track(call, event)
        return PreparedChat(call, entered, events, first)

    async def complete(self, prepared: PreparedChat) -> dict[str, Any]:
        """The whole response body in the call's shape (a chat completion has ``unimodel_reasoning``); headers
        are in ``call.response_headers``."""
        call, request = prepared.call, prepared.call.require_engine_request()
        builder = CompletionBuilder(include_reasoning=request.include_reasoning)
        error: Optional[BaseException] = None
        events = prepared.events
        assert events is not None  # None only for a request that failed in prepare
        try:
            builder.add_all(prepared.first)
            async for event in events:
                self._track(call, event)
                builder.add(event)
        except BaseException as exc:
            error = exc
            raise
        finally:
            await self._end(prepared, error)
        report = _applied(call).report(builder.usage.reasoning_tokens if builder.usage is not None else None,
                                       builder.truncated)
        call.response_headers[REASONING_HEADER] = reasoning_header(report)
        completion: ChatCompletion = builder.completion(request.completion_id, request.served_model, call.created)
        body = completion.model_dump(mode="json")
        body["unimodel_reasoning"] = report
        answer = call.shape.body(body, call)
        await call.shape.finished(call, answer)
        return answer

    async def stream(self, prepared: PreparedChat) -> AsyncGenerator[bytes, None]:
        """The answer's stream in the call's shape (SSE frames to ``[DONE]`` for chat); a failure mid-stream
        ends it with the shape's error, never a hang.

        Each yielded ``bytes`` is meant as one body write: the events up to each
        :class:`~unimodel.protocol.events.Flush` (every engine yields one wherever it is about to wait, whichever
        engine streams: the primary or a fallback) go out together, adjacent deltas merged into one chunk; the
        first event goes out at once, with the stream's preamble. What is left when the engine stops (the
        finish and usage, or the error) goes out in the last write, once the request has ended
        (``prepared.ended`` is then true: the server ends the body with that write)."""
        call = prepared.call
        writer = call.shape.stream_writer(call)
        held: list[Event] = []  # events waiting for a Flush
        error: Optional[BaseException] = None
        failure: Optional[UnimodelError] = None  # what the stream's error frame says
        events = prepared.events
        assert events is not None  # None only for a request that failed in prepare
        try:
            yield writer.opening(prepared.first)
            async for event in events:
                if isinstance(event, Flush):
                    if held:
                        yield writer.write(merge_deltas(held))
                        held.clear()
                    continue
                self._track(call, event)
                held.append(event)
        except UnimodelError as exc:
            error = failure = exc
            log.warning("stream %s failed: %s", call.ctx.request_id, exc.message)
        except Exception as exc:
            error = exc
            failure = UnimodelError("The server had an internal error; it is logged.")
            log.exception("stream %s failed", call.ctx.request_id)
        except BaseException as exc:  # cancelled or closed: the client left
            error = exc
            raise
        finally:
            await self._end(prepared, error)
        tail = writer.closing(merge_deltas(held), failure)
        result = writer.result()
        if result is not None:
            try:
                await call.shape.finished(call, result)
            except Exception:  # the answer is complete and owed to the client: a shape's bookkeeping is not
                log.exception("the %s shape failed to finish %s", call.shape.name, call.ctx.request_id)
        yield tail

    async def abandon(self, prepared: PreparedChat, error: Optional[BaseException] = None) -> None:
        """End a prepared request that will never be read (its client left before the response started, or
        ``error`` stopped it: a shape that runs requests on its own refused to take it); a no-op for one that
        already ended. The server calls it after every response, so a prepared request always ends exactly once,
        even when its stream or completion never ran."""
        if not prepared.ended:
            await self._end(prepared, error or ClientClosedError(
                "the client closed the connection before the answer began"))

    # ---- bookkeeping --------------------------------------------------------------------------------

    @staticmethod
    def _track(call: Call, event: Event) -> None:
        ctx = call.ctx
        if type(event) is ChoiceEvent:  # one of several choices: counted alike; the untagged finish ends them
            event = event.event
            if type(event) is Finish:
                return
        if isinstance(event, (ContentDelta, ToolCallStart)):
            if ctx.first_answer_at is None:
                ctx.first_answer_at = time.perf_counter()
                if ctx.first_token_at is None:
                    ctx.first_token_at = ctx.first_answer_at
            if isinstance(event, ToolCallStart):
                ctx.tool_names.append(event.name)
                ctx.output_bytes += len(event.name)
            else:
                ctx.output_bytes += text_bytes(event.text)
                if (answer := call.get(_ANSWER)) is not None:
                    answer.add(event.text)
        elif isinstance(event, ReasoningDelta):
            if ctx.first_token_at is None:
                ctx.first_token_at = time.perf_counter()
            size = text_bytes(event.text)
            ctx.output_bytes += size
            ctx.reasoning_bytes += size
        elif isinstance(event, ToolCallArgsDelta):
            ctx.output_bytes += text_bytes(event.text)
        elif isinstance(event, Usage):
            ctx.usage = event if ctx.usage is None else ctx.usage + event
        elif isinstance(event, Finish):
            ctx.finish_reason = event.reason
        elif isinstance(event, ThinkingBudgetReached):
            ctx.thinking_truncated = True

    def _end(self, prepared: PreparedChat, error: Optional[BaseException]) -> Awaitable[None]:
        """Close the engine iterator, release the stages, tell the observers: once per request, whoever asks
        first (a later call returns at once), as one unit that runs to its end whatever is cancelled meanwhile
        (a cancellation of the caller is raised once it is done). A plain function returning what to await:
        one coroutine less per request."""
        if prepared.ended:
            return _ENDED
        prepared.ended = True  # before anything is awaited: a second caller never repeats it
        if error is None and prepared.call.ctx.finish_reason is None:
            error = ClientClosedError("the client closed the connection before the answer was complete")
        return run_to_end(self._finish(prepared, error))

    async def _finish(self, prepared: PreparedChat, error: Optional[BaseException]) -> None:
        call = prepared.call
        held: Optional[BaseException] = None  # a cancellation or an interrupt, raised once all is done
        if prepared.events is not None:
            try:
                await close_events(prepared.events)
            except Exception:
                log.exception("closing the engine stream of %s failed", call.ctx.request_id)
            except BaseException as exc:
                held = exc
        if call.ctx.usage is None and prepared.events is not None:
            self._estimate_usage(call, error)
        try:
            await self.pipeline.exit(call, prepared.entered, error)  # raises only once every exit has run
        except BaseException as exc:
            held = held or exc
        self._observe(call, error)
        if held is not None:
            raise held

    def _estimate_usage(self, call: Call, error: Optional[BaseException]) -> None:
        """An engine asked that reported no usage: estimate it, unless it failed before any output for a reason
        other than its client leaving (the class docstring says why)."""
        ctx, request = call.ctx, call.engine_request
        if request is None or ctx.idempotency == "replayed":
            return
        if ctx.output_bytes == 0 and error is not None and not isinstance(
                error, (ClientClosedError, asyncio.CancelledError, GeneratorExit)):
            return
        ctx.usage = self.estimator.usage(request, ctx.output_bytes, ctx.reasoning_bytes)

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
        request = call.engine_request
        if request is not None:
            if ctx.reasoning is None:
                ctx.reasoning = _applied(call)
            if ctx.image_count is None:
                ctx.image_count = request.image_count
        if self.capture_text_chars:
            _capture_text(call, self.capture_text_chars)
        self.observers.request_finished(ctx)




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


_ANSWER: StageState[_AnswerText] = StageState("chat.answer")


class _Ended:
    """Awaiting it does nothing: the end of a request already begun."""

    __slots__ = ()

    def __await__(self) -> Generator[None, None, None]:
        return iter(())  # type: ignore[return-value]


_ENDED = _Ended()


def _applied(call: Call) -> AppliedReasoning:
    """The reasoning the validate stage applied (or, for a pipeline without one, the engine request's)."""
    if call.ctx.reasoning is None:
        request = call.require_engine_request()
        call.ctx.reasoning = AppliedReasoning(request.effort, request.model_effort, request.thinking_budget)
    return call.ctx.reasoning


def _capture_text(call: Call, limit: int) -> None:
    """The prompt (``role: text`` lines, images as ``[image]``) and the answer's content, cut to ``limit``."""
    if call.client_request is not None:
        lines: list[str] = []
        size = 0
        for message in call.client_request.messages:
            line = f"{message.role}: {message.text()}" + " [image]" * len(message.image_urls())
            lines.append(line[: limit - size])
            size += len(lines[-1]) + 1
            if size >= limit:
                break
        call.ctx.prompt_text = "\n".join(lines)
    answer = call.get(_ANSWER)
    if answer is not None and answer.parts:
        call.ctx.answer_text = "".join(answer.parts)

