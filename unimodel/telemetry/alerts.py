"""Alerts: the config's rules (``telemetry/alert_rules.py``) judged in process over the rolling window.

:class:`Alerts` evaluates the window-based rules every ``interval_s`` seconds in a background task that
follows the server's lifespan, and checks ``prompt_length`` rules as each request ends (it is an end-of-request
observer too: one comparison per rule). Each rule — or, for ``rate_limit_rejections`` without a ``key``, each
key — is an alert that is either firing or not: it fires once when its value goes above the threshold and
resolves once when the value falls back to ``resolve_threshold`` (or becomes unknown), so a steady condition
makes two events, not one per evaluation. An event is one ``key=value`` line on the ``unimodel.alerts``
logger (rule, kind, state, key name, value, threshold, window: no prompt, user or API key) and, when the rule
or ``alert_webhook_url`` names a webhook, a JSON POST queued for :class:`~.alert_webhook.WebhookSender`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Optional

from unimodel.service.context import RequestContext
from unimodel.telemetry.alert_rules import AlertRule
from unimodel.telemetry.alert_webhook import WebhookSender
from unimodel.telemetry.window import RequestWindow

log = logging.getLogger("unimodel.alerts")

MAX_ALERTS_PER_RULE = 256  # per-key alerts of one rule (the window keeps at most max_labels keys anyway)


@dataclass(frozen=True)
class AlertEvent:
    rule: str
    kind: str
    state: str  # "firing" | "resolved"
    key: Optional[str]
    value: Optional[float]
    threshold: float
    window_s: float
    at: float  # wall-clock seconds
    details: dict[str, Any] = field(default_factory=dict)

    def fields(self) -> dict[str, Any]:
        return {"alert": self.rule, "kind": self.kind, "state": self.state, "key": self.key,
                "value": _finite(self.value), "threshold": self.threshold, "window_s": self.window_s,
                **{k: _finite(v) for k, v in self.details.items()}}

    def payload(self) -> dict[str, Any]:
        """The webhook's JSON body."""
        return {**self.fields(), "at": datetime.fromtimestamp(self.at, timezone.utc).isoformat(),
                "source": "unimodel"}

    def log_line(self) -> str:
        return " ".join(f"{k}={_show(v)}" for k, v in self.fields().items())


@dataclass
class _Alert:
    rule: AlertRule
    key: Optional[str]
    since: float  # wall clock
    value: Optional[float]
    last_seen: float = 0.0  # prompt_length: monotonic time of the last offending request
    count: int = 0  # prompt_length: offending requests while firing
    details: dict[str, Any] = field(default_factory=dict)


class Alerts:
    """The rules, the alerts firing now, the evaluator task and the webhook sender."""

    def __init__(self, rules: Sequence[AlertRule], window: RequestWindow, *, default_webhook: Optional[str] = None,
                 sender: Optional[WebhookSender] = None, interval_s: float = 5.0,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.rules = list(rules)
        self.window = window
        self.default_webhook = default_webhook
        self.sender = sender if sender is not None else WebhookSender()
        self.interval_s = interval_s
        self.wall_clock = wall_clock
        self._prompt_rules = [r for r in self.rules if r.kind == "prompt_length"]
        self._firing: dict[tuple[str, Optional[str]], _Alert] = {}
        self._task: Optional[asyncio.Task[None]] = None
        self.max_events = 50
        self.events: list[AlertEvent] = []  # the last max_events events, newest last (for the dashboard)

    # ---- per request ----------------------------------------------------------------------------------

    def request_finished(self, ctx: RequestContext) -> None:
        usage = ctx.usage
        if not self._prompt_rules or usage is None:
            return
        for rule in self._prompt_rules:
            if usage.prompt_tokens > rule.threshold and (rule.key is None or rule.key == ctx.key_name):
                alert = self._firing.get((rule.name, None))
                if alert is None:
                    alert = self._fire(rule, None, float(usage.prompt_tokens), {"key_name": ctx.key_name})
                alert.last_seen = self.window.clock()
                alert.count += 1
                alert.value = max(alert.value or 0.0, float(usage.prompt_tokens))

    # ---- evaluation -----------------------------------------------------------------------------------

    def evaluate(self) -> None:
        """Judge every rule once against the window now (the background task calls it every interval)."""
        for rule in self.rules:
            if rule.kind == "prompt_length":
                alert = self._firing.get((rule.name, None))
                if alert is not None and self.window.clock() - alert.last_seen > rule.window_s:
                    self._resolve(alert, None, {"requests_over": alert.count, "largest": alert.value})
                continue
            values = self._values(rule)
            for key in {k for (name, k) in self._firing if name == rule.name} - values.keys():
                values[key] = (None, {})  # a key that left the window: nothing to judge, so it resolves
            for key, (value, details) in values.items():
                alert = self._firing.get((rule.name, key))
                if alert is None:
                    if value is not None and value > rule.threshold:
                        self._fire(rule, key, value, details)
                elif value is None or value <= rule.resolves_at:
                    self._resolve(alert, value, details)
                else:
                    alert.value = value

    def _values(self, rule: AlertRule) -> dict[Optional[str], tuple[Optional[float], dict[str, Any]]]:
        """The rule's value now, per alert key (``None``: the rule's one alert); a value of ``None`` is
        unknown (too few requests)."""
        view = self.window.view(rule.window_s)
        fewest = rule.fewest_requests
        if rule.kind == "rate_limit_rejections":
            keys = view.keys()
            if rule.key is not None:
                return {rule.key: (float(keys.get(rule.key, {}).get("rate_limited", 0)), {})}
            hits = sorted(((k, c["rate_limited"]) for k, c in keys.items() if c["rate_limited"]),
                          key=lambda kc: -kc[1])[:MAX_ALERTS_PER_RULE]
            return {k: (float(n), {}) for k, n in hits}
        if rule.kind == "p95_latency":
            latencies = view.histogram("latency_ms")
            if sum(latencies.values()) < fewest:
                return {None: (None, {})}
            return {None: (view.percentile("latency_ms", 95), {"requests": view.requests})}
        requests, errors, tokens = view.requests, view.server_errors, view.tokens
        if rule.key is not None:
            mine = view.keys().get(rule.key, {})
            requests, errors, tokens = mine.get("requests", 0), mine.get("server_errors", 0), mine.get("tokens", 0)
        if requests < fewest:
            return {rule.key: (None, {})}
        if rule.kind == "error_rate":
            return {rule.key: (errors / requests, {"requests": requests, "server_errors": errors})}
        # token_spike: this window's rate against the baseline's, once a whole baseline has been watched
        assert rule.baseline_window_s is not None
        baseline = self.window.view(rule.baseline_window_s, ending_s_ago=rule.window_s)
        if baseline.span_s < rule.baseline_window_s - self.window.bucket_s:
            return {rule.key: (None, {})}
        base_tokens = baseline.tokens
        if rule.key is not None:
            base_tokens = baseline.keys().get(rule.key, {}).get("tokens", 0)
        rate, base_rate = view.per_minute(tokens), baseline.per_minute(base_tokens)
        if rate is None or base_rate is None:
            return {rule.key: (None, {})}
        ratio = rate / base_rate if base_rate > 0 else (math.inf if rate > 0 else 0.0)
        return {rule.key: (ratio, {"tokens_per_minute": round(rate, 1),
                                   "baseline_tokens_per_minute": round(base_rate, 1)})}

    # ---- events ---------------------------------------------------------------------------------------

    def _fire(self, rule: AlertRule, key: Optional[str], value: Optional[float],
              details: dict[str, Any]) -> _Alert:
        now = self.wall_clock()
        alert = _Alert(rule, key, now, value, details=dict(details))
        self._firing[(rule.name, key)] = alert
        self._emit(AlertEvent(rule.name, rule.kind, "firing", key, value, rule.threshold, rule.window_s, now,
                              dict(details)), rule)
        return alert

    def _resolve(self, alert: _Alert, value: Optional[float], details: dict[str, Any]) -> None:
        rule = alert.rule
        del self._firing[(rule.name, alert.key)]
        now = self.wall_clock()
        self._emit(AlertEvent(rule.name, rule.kind, "resolved", alert.key, value, rule.threshold, rule.window_s,
                              now, {**details, "firing_s": round(now - alert.since, 1)}), rule)

    def _emit(self, event: AlertEvent, rule: AlertRule) -> None:
        self.events.append(event)
        del self.events[:-self.max_events]
        (log.warning if event.state == "firing" else log.info)(event.log_line())
        url = rule.webhook or self.default_webhook
        if url is not None:
            self.sender.submit(url, event.payload())

    def firing(self) -> list[dict[str, Any]]:
        """The alerts firing now, oldest first, as the dashboard shows them."""
        return [{"alert": a.rule.name, "kind": a.rule.kind, "key": a.key, "value": _finite(a.value),
                 "threshold": a.rule.threshold, "window_s": a.rule.window_s,
                 "since": datetime.fromtimestamp(a.since, timezone.utc).isoformat(),
                 **({"requests_over": a.count} if a.rule.kind == "prompt_length" else {})}
                for a in sorted(self._firing.values(), key=lambda a: a.since)]

    # ---- lifespan -------------------------------------------------------------------------------------

    async def start(self) -> None:
        if any(r.webhook for r in self.rules) or self.default_webhook:
            await self.sender.start()
        self._task = asyncio.create_task(self._run(), name="alert-evaluator")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.sender.aclose()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                self.evaluate()
            except Exception:  # one bad evaluation must not end alerting
                log.exception("alert evaluation failed")


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4) if math.isfinite(value) else None
    return value


def _show(value: Any) -> str:
    if value is None:
        return "-"
    text = str(value)
    return text if text and " " not in text and '"' not in text and "=" not in text else \
        '"' + text.replace('"', "'") + '"'
