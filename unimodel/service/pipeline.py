"""The request pipeline: the one path every chat request takes between the client and the engine.

A :class:`Stage` is a small class with three optional hooks:

* ``enter(call)`` runs before the engine, in stage order: it may refuse (raise a
  :class:`~unimodel.errors.UnimodelError`), record in the context, or rewrite ``call.engine_request``;
* ``wrap(call, generate)`` may wrap the engine call (a retry, a fallback) or its event stream; stages are
  wrapped innermost-last, so the first stage's wrapper is the outermost. A wrapper must close the stream it
  wraps (``async with contextlib.aclosing(generate(request)) as events``): closing the outermost stream is how
  a client that leaves cancels the engine's work;
* ``exit(call, error)`` runs once the request is over (answered, failed, or abandoned by its client), in
  reverse order, for every stage whose ``enter`` returned: the place to release what ``enter`` took. It runs
  exactly once and to its end: whatever another stage's ``exit`` raises, and however often the request is
  cancelled meanwhile (the end of a request runs as one unit no cancellation interrupts, ``service/ending.py``;
  a cancellation waits for it), so an ``exit`` that awaits needs no shield of its own.

Stages are built once at start-up (``unimodel/compose.py``) in the order of the architecture page: auth →
limits.requests → parse → route → validate → limits → images → idempotency → upstream_share → choices →
resilience. Written by hand: it is a few dozen lines, and a middleware library would tie it to HTTP, which the
service layer does not know.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Optional, TypeVar

from unimodel.engines.base import GenerationRequest
from unimodel.errors import UnimodelError
from unimodel.protocol.events import Event
from unimodel.protocol.openai import ChatCompletionRequest
from unimodel.service.context import RequestContext, RouteChoice
from unimodel.service.ending import run_to_end
from unimodel.service.shape import CHAT, ApiShape

log = logging.getLogger("unimodel.pipeline")

Generate = Callable[[GenerationRequest], AsyncIterator[Event]]


T = TypeVar("T")


class StageState(Generic[T]):
    """A typed place for one stage's own per-request state on a :class:`Call`.

    A stage makes one at import (``HELD: StageState[_Held] = StageState("limits")``) and keeps it to itself:
    ``call.put(HELD, held)`` in ``enter``, ``call.get(HELD)`` in ``exit``. Each is its own key, so two stages
    never collide, and the value's type is checked where it is read.
    """

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"StageState({self.name!r})"


@dataclass(slots=True, eq=False)
class Call:
    """One request as it moves through the stages.

    ``headers`` are the request's headers with lower-case names; ``read_body`` reads the body once (the parse
    stage calls it, so a refusal by an earlier stage never buffers a body). ``client_request`` is what the
    client sent, parsed (set by the parse stage; the route stage may rewrite its defaults); ``engine_request``
    is what the engine gets (set by the validate stage; later stages may replace it). ``route`` is the route
    taken (route stage). ``shape`` is the API shape the request came in (``service/shape.py``): the parse stage
asks it for the chat request, the service for the answer's form. ``response_headers`` collects headers stages want on the response. ``created`` is the
    response's ``created`` (Unix seconds): set by the service when generation starts, unless a stage set it
    first (an idempotent replay keeps the original response's). A stage's own state goes in a
    :class:`StageState` of its own (:meth:`put`, :meth:`get`, :meth:`pop`).
    """

    ctx: RequestContext
    headers: Mapping[str, str]
    read_body: Callable[[], Awaitable[bytes]]
    client_request: Optional[ChatCompletionRequest] = None
    engine_request: Optional[GenerationRequest] = None
    route: Optional[RouteChoice] = None
    shape: ApiShape = CHAT
    response_headers: dict[str, str] = field(default_factory=dict)
    created: Optional[int] = None
    _stage_state: dict[StageState[Any], Any] = field(default_factory=dict)

    def require_engine_request(self) -> GenerationRequest:
        """The validated request, for a stage that runs after validation (a 500 if the order is wrong)."""
        if self.engine_request is None:
            raise UnimodelError("the pipeline has no validated request at this stage")
        return self.engine_request

    def put(self, slot: StageState[T], value: T) -> None:
        self._stage_state[slot] = value

    def get(self, slot: StageState[T]) -> Optional[T]:
        return self._stage_state.get(slot)

    def pop(self, slot: StageState[T]) -> Optional[T]:
        return self._stage_state.pop(slot, None)

    @property
    def stage_states(self) -> frozenset[str]:
        """The names of the stage states held now (for diagnostics and tests)."""
        return frozenset(slot.name for slot in self._stage_state)


class Stage:
    """Base class: every hook is optional and does nothing.

    Besides the per-request hooks, a stage may hold resources for its lifetime (a Redis client, extra
    upstream engines): ``start`` and ``aclose`` run with the server's lifespan, ``status`` adds a section
    to ``/ready``'s body (e.g. circuit breaker states), and ``check`` says, fresh, what the stage can no longer
    do as configured (``/ready``'s ``degraded``).
    """

    name = "stage"

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    def status(self) -> Optional[dict[str, Any]]:
        return None

    async def check(self) -> Optional[str]:
        """A fresh look at what the stage depends on (a Redis), asked by ``/ready`` before ``status``: a
        sentence saying what no longer works as configured, or ``None``. Bounded: a stage answers from a cache
        refreshed at most every few seconds, each refresh under a short timeout. Never raises but for
        cancellation."""
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

    async def check(self) -> list[str]:
        """Every stage's :meth:`Stage.check` that found something (asked concurrently), in stage order; a stage
        whose check fails is logged and reported as unable to say."""
        checking = [s for s in self.stages if _overrides(s, "check")]
        found = await asyncio.gather(*(s.check() for s in checking), return_exceptions=True)
        out: list[str] = []
        for stage, result in zip(checking, found):
            if isinstance(result, asyncio.CancelledError):
                raise result
            if isinstance(result, BaseException):
                log.error("stage %s failed its check: %s: %s", stage.name, type(result).__name__, result)
                result = f"the {stage.name} stage cannot say whether it works"
            if result is not None and result not in out:
                out.append(result)
        return out

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
                    await run_to_end(self.exit(call, entered, exc))
                    raise
            entered.append(stage)
        return entered

    def generate(self, call: Call, engine_generate: Generate) -> AsyncIterator[Event]:
        generate = engine_generate
        for stage in reversed(self._wrapping):
            generate = stage.wrap(call, generate)
        return generate(call.require_engine_request())

    async def exit(self, call: Call, entered: Sequence[Stage], error: Optional[BaseException]) -> None:
        """Every entered stage's ``exit``, in reverse, each whatever the others raise: an ``Exception`` is logged,
        a ``BaseException`` (a cancellation, an interrupt) is raised again once every other has run. Callers run
        it inside :func:`~unimodel.service.ending.run_to_end`, so that no cancellation cuts an ``exit`` short."""
        held: Optional[BaseException] = None
        for stage in reversed(entered):
            if stage not in self._exiting:
                continue
            try:
                await stage.exit(call, error)
            except Exception:
                log.exception("stage %s failed to release request %s", stage.name, call.ctx.request_id)
            except BaseException as exc:
                log.warning("stage %s raised %s while releasing request %s", stage.name, type(exc).__name__,
                            call.ctx.request_id)
                held = held or exc
        if held is not None:
            raise held
