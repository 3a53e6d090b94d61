"""Several choices for one request (``n`` > 1): one generation per choice, their streams merged into one.

Engines make one answer per request (an upstream is asked with no ``n``, the local engine decodes one
sequence), so ``n`` is served here, for every engine alike: the stage sits right before the resilience stage,
and its ``wrap`` runs the inner call (resilience, then the engine) ``n`` times at once, each with ``n=1`` and,
when the client gave a ``seed``, ``seed + i`` for choice ``i`` (as vLLM seeds its parallel samples), so every
choice has its own retries, fallback and timeouts. A request with ``n=1`` is not wrapped at all.

The merged stream (:func:`merged_choices`) tags every event of choice ``i`` as
:class:`~unimodel.protocol.events.ChoiceEvent` ``(i, event)``, its ``Finish`` too; each choice's ``Usage`` is held
back, and once every choice has ended one ``Usage`` for them all (the prompt counted once, as vLLM reports it:
choice 0's prompt and cached tokens; the completion and reasoning tokens summed; estimated if any was) and one
untagged ``Finish`` (choice 0's reason) close it. So whatever reads the stream without looking inside (the
request's finish reason and usage, the limits' settlement, the request log, idempotency) sees one request.

Nothing goes out until every choice has made its first event (or ended): a choice refused before its first
event (a context too long, a full queue) fails the whole request while it can still be an HTTP error, and one
that fails later breaks the stream, as a single answer's would. ``Flush``: the merged stream yields one when
something went out since the last one and either a choice flushed or no choice has anything ready (it is about
to wait), never first, never twice in a row (``protocol/events.py``'s rules). Each choice runs in a task of its
own, so an engine's stream is always resumed by the same task (its timeouts are bound to it); a bounded queue
between them keeps a slow client's back-pressure. Closing the merged stream cancels the tasks, which close their
streams: a client that leaves cancels all ``n`` generations.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Optional, Union

from unimodel.engines.base import GenerationRequest
from unimodel.protocol.events import FLUSH, ChoiceEvent, Event, Finish, Flush, Usage
from unimodel.service.pipeline import Call, Generate, Stage

#: events the queue between the choices' tasks and the merged stream holds, per choice
QUEUE_PER_CHOICE = 64

_SEED_SPAN = 2**64  # seeds are 64-bit signed (the wire type's bound); seed + i wraps around within it


class ChoicesStage(Stage):
    """Fans a request with ``n`` > 1 out into ``n`` generations and merges their events (module docstring)."""

    name = "choices"

    def wrap(self, call: Call, generate: Generate) -> Generate:
        request = call.engine_request
        if request is None or request.n <= 1:
            return generate
        return functools.partial(merged_choices, generate)


def choice_requests(request: GenerationRequest) -> list[GenerationRequest]:
    """The ``n`` requests of ``request``'s choices: each ``n=1``, choice ``i`` seeded ``seed + i`` if seeded."""
    seed = request.sampling.seed
    out = []
    for i in range(request.n):
        sampling = request.sampling if seed is None or i == 0 else dataclasses.replace(
            request.sampling, seed=(seed + i + _SEED_SPAN // 2) % _SEED_SPAN - _SEED_SPAN // 2)
        out.append(dataclasses.replace(request, n=1, sampling=sampling))
    return out


class _End:
    """A choice's stream ended (``error``: it raised)."""

    __slots__ = ("error",)

    def __init__(self, error: Optional[BaseException] = None) -> None:
        self.error = error


_Item = tuple[int, Union[Event, _End]]


async def _pump(index: int, generate: Generate, request: GenerationRequest, queue: "asyncio.Queue[_Item]") -> None:
    """Run choice ``index``'s stream in this task, putting its events on ``queue``, then its end."""
    try:
        async with aclosing(generate(request)) as events:  # type: ignore[type-var]
            async for event in events:
                await queue.put((index, event))
    except Exception as exc:
        await queue.put((index, _End(exc)))
        return
    await queue.put((index, _End()))


def _aggregate(usages: list[Optional[Usage]]) -> Optional[Usage]:
    """One usage for every choice: the prompt once (the first reported: the choices share it), the rest summed;
    estimated if any choice's was, or if some choice reported none."""
    reported = [u for u in usages if u is not None]
    if not reported:
        return None
    first = reported[0]
    return Usage(first.prompt_tokens, sum(u.completion_tokens for u in reported),
                 sum(u.reasoning_tokens for u in reported),
                 estimated=len(reported) < len(usages) or any(u.estimated for u in reported),
                 cached_tokens=first.cached_tokens)


async def merged_choices(generate: Generate, request: GenerationRequest) -> AsyncIterator[Event]:
    """The events of ``request``'s ``n`` choices as one stream (module docstring)."""
    requests = choice_requests(request)
    n = len(requests)
    queue: asyncio.Queue[_Item] = asyncio.Queue(QUEUE_PER_CHOICE * n)
    tasks = [asyncio.create_task(_pump(i, generate, r, queue), name=f"choice-{i}") for i, r in enumerate(requests)]
    usages: list[Optional[Usage]] = [None] * n
    reasons: list[Optional[Finish]] = [None] * n
    started = [False] * n
    held: Optional[list[Event]] = []  # until every choice has started; then None
    unflushed = False  # something went out since the last Flush
    ended = 0
    try:
        while ended < n:
            if unflushed and queue.empty():
                unflushed = False
                yield FLUSH  # nothing is ready: about to wait
            index, item = await queue.get()
            if isinstance(item, _End):
                if item.error is not None:
                    raise item.error
                ended += 1
            elif isinstance(item, Flush):
                if unflushed:
                    unflushed = False
                    yield FLUSH
                continue
            elif isinstance(item, Usage):
                usages[index] = item if usages[index] is None else usages[index] + item  # type: ignore[operator]
                continue
            else:
                if isinstance(item, Finish):
                    reasons[index] = item
                event = ChoiceEvent(index, item)
                if held is None:
                    unflushed = True
                    yield event
                    continue
                held.append(event)
            started[index] = True  # its first event, or its end
            if held is not None and all(started):
                for waiting in held:
                    yield waiting
                unflushed = bool(held)
                held = None
        usage = _aggregate(usages)
        if usage is not None:
            yield usage
        first = reasons[0]
        yield Finish(first.reason if first is not None else "stop")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
