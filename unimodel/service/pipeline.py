"""The request pipeline: the one path every chat request takes between the client and the engine.

A :class:`Stage` is a small class with three optional hooks:

* ``enter(call)`` runs before the engine, in stage order: it may refuse (raise a
  :class:`~unimodel.errors.UnimodelError`), record in the context, or rewrite ``call.request``;
* ``wrap(call, generate)`` may wrap the engine call (a retry, a fallback) or its event stream; stages are
  wrapped innermost-last, so the first stage's wrapper is the outermost. A wrapper must close the stream it
  wraps (``async with contextlib.aclosing(generate(request)) as events``): closing the outermost stream is how
  a client that leaves cancels the engine's work;
* ``exit(call, error)`` runs once the request is over (answered, failed, or abandoned by its client), in
  reverse order, for every stage whose ``enter`` returned: the place to release what ``enter`` took.

Stages are built once at start-up (``server/app.py``) in the order of the architecture page: auth → parse →
route → validate → images → limits → idempotency → resilience. Written by hand: it is
a few dozen lines, and a middleware library would tie it to HTTP, which the service layer does not know.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from unimodel.engines.base import GenerationRequest
from unimodel.errors import UnimodelError
from unimodel.protocol.events import Event
from unimodel.protocol.openai import ChatCompletionRequest
from unimodel.service.context import RequestContext

log = logging.getLogger("unimodel.pipeline")

Generate = Callable[[GenerationRequest], AsyncIterator[Event]]


@dataclass(slots=True, eq=False)
class Call:
    """One request as it moves through the stages.

    ``headers`` are the request's headers with lower-case names; ``read_body`` reads the body once (the parse
    stage calls it, so a refusal by an earlier stage never buffers a body). ``wire`` is set by the parse stage,
    ``request`` (what the engine gets) by the validate stage; later stages may replace ``request``.
    ``response_headers`` collects headers stages want on the response; ``state`` carries what one stage
    hands to a later one (e.g. the resolved route's policy), by the stage's name. ``created`` is the
    response's ``created`` (Unix seconds): set by the service when generation starts, unless a stage set it
    first (an idempotent replay keeps the original response's).
    """

    ctx: RequestContext
    headers: Mapping[str, str]
    read_body: Callable[[], Awaitable[bytes]]
    wire: Optional[ChatCompletionRequest] = None
    request: Optional[GenerationRequest] = None
    response_headers: dict[str, str] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)
    created: Optional[int] = None

    @property
    def generation(self) -> GenerationRequest:
        if self.request is None:
            raise UnimodelError("the pipeline has no validated request at this stage")
        return self.request


class Stage:
    """Base class: every hook is optional and does nothing.

    Besides the per-request hooks, a stage may hold resources for its lifetime (a Redis client, extra
    upstream engines): ``start`` and ``aclose`` run with the server's lifespan, and ``status`` adds a section
    to ``/ready``'s body (e.g. circuit breaker states).
    """

    name = "stage"

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    def status(self) -> Optional[dict[str, Any]]:
        return None

    async def enter(self, call: Call) -> None:
        return None

    def wrap(self, call: Call, generate: Generate) -> Generate:
        return generate

    async def exit(self, call: Call, error: Optional[BaseException]) -> None:
        return None


def _overrides(stage: Stage, hook: str) -> bool:
    return getattr(type(stage), hook) is not getattr(Stage, hook)


class Pipeline:
    """Stages composed once; per request, only the hooks a stage really has are called."""

    def __init__(self, stages: Sequence[Stage]) -> None:
        self.stages = tuple(stages)
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"pipeline stages must have distinct names: {names}")
        self._entering = tuple(s for s in self.stages if _overrides(s, "enter"))
        self._wrapping = tuple(s for s in self.stages if _overrides(s, "wrap"))
        self._exiting = tuple(s for s in self.stages if _overrides(s, "exit"))

    async def start(self) -> None:
        for stage in self.stages:
            await stage.start()

    async def aclose(self) -> None:
        for stage in reversed(self.stages):
            try:
                await stage.aclose()
            except Exception:
                log.exception("stage %s failed to close", stage.name)

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for stage in self.stages:
            section = stage.status()
            if section is not None:
                out[stage.name] = section
        return out

    async def enter(self, call: Call) -> list[Stage]:
        """Run every ``enter`` in order; returns the stages entered. On a refusal, exits the ones entered
        before it (in reverse) and re-raises."""
        entered: list[Stage] = []
        for stage in self.stages:
            if stage in self._entering:
                try:
                    await stage.enter(call)
                except BaseException as exc:
                    await self.exit(call, entered, exc)
                    raise
            entered.append(stage)
        return entered

    def generate(self, call: Call, engine_generate: Generate) -> AsyncIterator[Event]:
        generate = engine_generate
        for stage in reversed(self._wrapping):
            generate = stage.wrap(call, generate)
        return generate(call.generation)

    async def exit(self, call: Call, entered: Sequence[Stage], error: Optional[BaseException]) -> None:
        """Every entered stage's ``exit``, in reverse; one failing is logged and does not stop the others."""
        for stage in reversed(entered):
            if stage not in self._exiting:
                continue
            try:
                await stage.exit(call, error)
            except Exception:
                log.exception("stage %s failed to release request %s", stage.name, call.ctx.request_id)
