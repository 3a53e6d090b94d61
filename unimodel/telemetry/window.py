"""A rolling, in-memory aggregate of the last hour's requests: what the alerts and the dashboard read.

:class:`RequestWindow` is an end-of-request observer (``service/observer.py``). Each finished request is added
to the bucket of the second it ended in (a bucket is ``bucket_s`` seconds wide, one second for an hour's
horizon): counts, server errors (status ≥ 500), errors by type, rate-limit rejections, tokens by reasoning
effort, counts per route and per key, and log-scale histograms (``telemetry/histogram.py``) of latency, TTFT
and prompt length. Memory is bounded three ways: at most ``max_buckets`` buckets (older ones are dropped, and
a longer horizon makes the buckets wider instead), seconds without a request hold no bucket at all, and each
bucket keeps at most ``max_labels`` routes, keys or error types (the rest count as ``other``).

:meth:`RequestWindow.view` sums the buckets of a time range into a :class:`WindowView` whose aggregates are
computed on demand, so an alert that needs a token count never merges histograms. Everything runs on the event
loop (the observer, the alert evaluator, the dashboard's data route): no locks, no I/O. Latency and TTFT count
answered requests only (status < 400): a refusal in a millisecond says nothing about how fast the model is.
The clock is injectable (``time.monotonic`` by default) so tests can move time.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Optional

from unimodel.service.context import RequestContext
from unimodel.telemetry import histogram
from unimodel.telemetry.histogram import Histogram

OTHER = "other"
NO_ROUTE = "(unrouted)"  # refused before the route stage
NO_KEY = "(unauthenticated)"  # refused by the auth stage
NO_EFFORT = "(unset)"  # refused before validation
RATE_LIMITED = "rate_limit_exceeded"

# per key: requests, server errors, tokens (prompt + completion), rate-limit rejections
_REQUESTS, _SERVER_ERRORS, _TOKENS, _RATE_LIMITED = range(4)
# per effort: requests, prompt, reasoning, answer tokens (answer = completion - reasoning)
_PROMPT, _REASONING, _ANSWER = 1, 2, 3


@dataclass(slots=True)
class Bucket:
    """What ended in one ``bucket_s``-wide slice of time."""

    index: int
    requests: int = 0
    server_errors: int = 0
    rate_limited: int = 0
    tokens: int = 0
    errors_by_type: dict[str, int] = field(default_factory=dict)
    routes: dict[str, int] = field(default_factory=dict)
    keys: dict[str, list[int]] = field(default_factory=dict)
    efforts: dict[str, list[int]] = field(default_factory=dict)
    latency_ms: Histogram = field(default_factory=dict)
    ttft_ms: Histogram = field(default_factory=dict)
    prompt_tokens: Histogram = field(default_factory=dict)


def _label(table: dict[str, Any], label: str, limit: int) -> str:
    return label if label in table or len(table) < limit else OTHER


class RequestWindow:
    """The observer and its buckets. ``horizon_s``: how far back a view can reach (alert windows plus their
    baselines, and the dashboard's longest view); ``max_buckets`` bounds memory whatever the horizon."""

    def __init__(self, horizon_s: float = 3600.0, *, max_buckets: int = 3600, max_labels: int = 64,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if horizon_s <= 0 or max_buckets < 1 or max_labels < 1:
            raise ValueError("horizon_s, max_buckets and max_labels must be positive")
        self.bucket_s = float(max(1, math.ceil(horizon_s / max_buckets)))
        self.horizon_s = horizon_s
        self.max_labels = max_labels
        self.clock = clock
        self.started_at = clock()
        self._keep = math.ceil(horizon_s / self.bucket_s) + 1
        self._buckets: deque[Bucket] = deque()

    # ---- the observer -------------------------------------------------------------------------------

    def request_finished(self, ctx: RequestContext) -> None:
        bucket = self._current()
        limit = self.max_labels
        bucket.requests += 1
        server_error = ctx.status >= 500
        rate_limited = ctx.status == 429 and ctx.error_type == RATE_LIMITED
        bucket.server_errors += server_error
        bucket.rate_limited += rate_limited
        if ctx.error_type:
            kind = _label(bucket.errors_by_type, ctx.error_type, limit)
            bucket.errors_by_type[kind] = bucket.errors_by_type.get(kind, 0) + 1
        route = _label(bucket.routes, ctx.route or NO_ROUTE, limit)
        bucket.routes[route] = bucket.routes.get(route, 0) + 1
        usage = ctx.usage
        tokens = usage.prompt_tokens + usage.completion_tokens if usage is not None else 0
        bucket.tokens += tokens
        key = _label(bucket.keys, ctx.key_name or NO_KEY, limit)
        per_key = bucket.keys.get(key)
        if per_key is None:
            per_key = bucket.keys[key] = [0, 0, 0, 0]
        per_key[_REQUESTS] += 1
        per_key[_SERVER_ERRORS] += server_error
        per_key[_TOKENS] += tokens
        per_key[_RATE_LIMITED] += rate_limited
        effort = _label(bucket.efforts, str(ctx.effort or NO_EFFORT), limit)
        per_effort = bucket.efforts.get(effort)
        if per_effort is None:
            per_effort = bucket.efforts[effort] = [0, 0, 0, 0]
        per_effort[_REQUESTS] += 1
        if usage is not None:
            per_effort[_PROMPT] += usage.prompt_tokens
            per_effort[_REASONING] += usage.reasoning_tokens
            per_effort[_ANSWER] += max(0, usage.completion_tokens - usage.reasoning_tokens)
            histogram.add(bucket.prompt_tokens, usage.prompt_tokens)
        if ctx.status < 400:
            latency, ttft = ctx.latency_ms, ctx.ttft_ms
            if latency is not None:
                histogram.add(bucket.latency_ms, latency)
            if ttft is not None:
                histogram.add(bucket.ttft_ms, ttft)

    # ---- reading ------------------------------------------------------------------------------------

    def view(self, window_s: float, *, ending_s_ago: float = 0.0) -> "WindowView":
        """The requests that ended in the ``window_s`` seconds up to ``ending_s_ago`` seconds ago (to the
        bucket's width). ``span_s`` is the part of that range this window has watched (less just after
        start-up), the honest denominator of a rate."""
        now = self.clock()
        self._prune(now)
        high = math.floor((now - ending_s_ago) / self.bucket_s)
        low = high - max(1, math.ceil(window_s / self.bucket_s))
        end = now - ending_s_ago
        span = max(0.0, end - max(end - window_s, self.started_at))
        return WindowView([b for b in self._buckets if low < b.index <= high], min(span, window_s))

    def series(self, window_s: float, step_s: float) -> list[tuple[float, "WindowView"]]:
        """``(seconds ago, view)`` for consecutive steps of ``step_s`` (rounded to whole buckets) covering the
        last ``window_s`` seconds, oldest first; a step with no request has an empty view."""
        now = self.clock()
        self._prune(now)
        per_step = max(1, round(step_s / self.bucket_s))
        steps = max(1, math.ceil(window_s / (per_step * self.bucket_s)))
        current = math.floor(now / self.bucket_s)
        first = current - steps * per_step + 1  # the oldest bucket index shown
        grouped: list[list[Bucket]] = [[] for _ in range(steps)]
        for bucket in self._buckets:
            if bucket.index >= first:
                grouped[(bucket.index - first) // per_step].append(bucket)
        width = per_step * self.bucket_s
        return [((steps - 1 - i) * width, WindowView(group, width)) for i, group in enumerate(grouped)]

    def __len__(self) -> int:
        return len(self._buckets)

    # ---- buckets ------------------------------------------------------------------------------------

    def _current(self) -> Bucket:
        now = self.clock()
        index = math.floor(now / self.bucket_s)
        if self._buckets and self._buckets[-1].index == index:
            return self._buckets[-1]
        self._prune(now)
        bucket = Bucket(index)
        self._buckets.append(bucket)
        return bucket

    def _prune(self, now: float) -> None:
        oldest = math.floor(now / self.bucket_s) - self._keep
        buckets = self._buckets
        while buckets and buckets[0].index <= oldest:
            buckets.popleft()


class WindowView:
    """The sum of some buckets; each aggregate is computed when asked for."""

    def __init__(self, buckets: Iterable[Bucket], span_s: float) -> None:
        self.buckets = list(buckets)
        self.span_s = span_s
        self.requests = sum(b.requests for b in self.buckets)
        self.server_errors = sum(b.server_errors for b in self.buckets)
        self.rate_limited = sum(b.rate_limited for b in self.buckets)
        self.tokens = sum(b.tokens for b in self.buckets)

    def per_minute(self, amount: float) -> Optional[float]:
        return amount * 60.0 / self.span_s if self.span_s > 0 else None

    @property
    def error_rate(self) -> Optional[float]:
        return self.server_errors / self.requests if self.requests else None

    def percentile(self, name: str, p: float) -> Optional[float]:
        """``p``-th percentile of ``latency_ms``, ``ttft_ms`` or ``prompt_tokens``."""
        return histogram.percentile(self.histogram(name), p)

    def histogram(self, name: str) -> Histogram:
        if name not in ("latency_ms", "ttft_ms", "prompt_tokens"):
            raise ValueError(f"no histogram named {name!r}")
        return histogram.merged(getattr(b, name) for b in self.buckets)

    def errors_by_type(self) -> dict[str, int]:
        return _summed(b.errors_by_type for b in self.buckets)

    def routes(self) -> dict[str, int]:
        return _summed(b.routes for b in self.buckets)

    def keys(self) -> dict[str, dict[str, int]]:
        """Per key: ``requests``, ``server_errors``, ``tokens``, ``rate_limited``."""
        totals: dict[str, list[int]] = {}
        for bucket in self.buckets:
            for key, counts in bucket.keys.items():
                into = totals.setdefault(key, [0, 0, 0, 0])
                for i, value in enumerate(counts):
                    into[i] += value
        return {k: {"requests": c[_REQUESTS], "server_errors": c[_SERVER_ERRORS], "tokens": c[_TOKENS],
                    "rate_limited": c[_RATE_LIMITED]} for k, c in totals.items()}

    def tokens_by_effort(self) -> dict[str, dict[str, int]]:
        """Per requested reasoning effort: ``requests`` and ``prompt``/``reasoning``/``answer`` tokens."""
        totals: dict[str, list[int]] = {}
        for bucket in self.buckets:
            for effort, counts in bucket.efforts.items():
                into = totals.setdefault(effort, [0, 0, 0, 0])
                for i, value in enumerate(counts):
                    into[i] += value
        return {e: {"requests": c[_REQUESTS], "prompt": c[_PROMPT], "reasoning": c[_REASONING],
                    "answer": c[_ANSWER]} for e, c in totals.items()}


def _summed(tables: Iterable[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for table in tables:
        for label, value in table.items():
            out[label] = out.get(label, 0) + value
    return out


def top(counts: dict[str, int], k: int) -> list[tuple[str, int]]:
    """The ``k`` largest counts, largest first (ties by name)."""
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:k]
