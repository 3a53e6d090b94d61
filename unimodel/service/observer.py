"""End-of-request observers: each sees every request exactly once, when it is over.

The chat service calls :meth:`Observers.request_finished` once per request with its
:class:`~unimodel.service.context.RequestContext` filled in: refused before the engine, answered, failed
mid-stream, or abandoned by its client. The request log, metrics, token-limit settlement and alerts all read
it; :class:`AccessLog` writes one structured line per request. Observers run on the event loop and must be
cheap; one that raises is logged and does not disturb the others or the response.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol

from unimodel.printable import printable
from unimodel.service.context import RequestContext

log = logging.getLogger("unimodel.observer")

#: the most characters of one value in an access log line
VALUE_CHARS = 256


class Observer(Protocol):
    def request_finished(self, ctx: RequestContext) -> None: ...


class Observers:
    """A fixed list of observers, each called once per request."""

    def __init__(self, observers: Sequence[Observer] = ()) -> None:
        self.observers = tuple(observers)

    def request_finished(self, ctx: RequestContext) -> None:
        if ctx.observed:
            return
        ctx.observed = True
        for observer in self.observers:
            try:
                observer.request_finished(ctx)
            except Exception:
                log.exception("observer %s failed on request %s", type(observer).__name__, ctx.request_id)


class AccessLog:
    """One ``key=value`` line per request on the ``unimodel.access`` logger.

    It names the caller by key name only, never by key or by the client's ``user`` (PII stays out of logs).
    Values an upstream or a client chose (a model id, a finish reason, an error code) are cut to
    :data:`VALUE_CHARS` and the line's control characters escaped (:func:`unimodel.printable.printable`), so a
    value cannot forge a line or reach the terminal that tails the log.
    """

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.log = logger or logging.getLogger("unimodel.access")

    def request_finished(self, ctx: RequestContext) -> None:
        if not self.log.isEnabledFor(logging.INFO):
            return
        self.log.info(printable(" ".join(f"{k}={_show(v)}" for k, v in access_fields(ctx).items())))


def access_fields(ctx: RequestContext) -> dict[str, Any]:
    usage = ctx.usage
    return {
        "request_id": ctx.request_id,
        "client_request_id": ctx.client_request_id,
        "status": ctx.status,
        "error_type": ctx.error_type,
        "model": ctx.model,
        "key": ctx.key_name,
        "route": ctx.route,
        "priority": ctx.priority_class,
        "stream": ctx.stream,
        "effort": ctx.effort,
        "finish_reason": ctx.finish_reason,
        "upstream": ctx.upstream,  # set by the resilience stage, with the retries it took
        "retries": ctx.retries,
        "prompt_tokens": usage.prompt_tokens if usage else None,
        "completion_tokens": usage.completion_tokens if usage else None,
        "reasoning_tokens": usage.reasoning_tokens if usage else None,
        "ttft_ms": ctx.ttft_ms,
        "latency_ms": ctx.latency_ms,
    }


def _show(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.1f}"
    text = str(value)
    if len(text) > VALUE_CHARS:
        text = text[:VALUE_CHARS] + "…"
    return text if text and " " not in text and '"' not in text else '"' + text.replace('"', "'") + '"'
