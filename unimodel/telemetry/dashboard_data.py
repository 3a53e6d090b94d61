"""The dashboard's JSON: the rolling window (``telemetry/window.py``) and the alerts, as series and tables.

:func:`dashboard_data` is what ``GET /dashboard/data`` answers: totals over the chosen window, per-step series
(``STEPS`` points: requests, server errors, tokens, latency and TTFT p50/p95), tokens by reasoning effort,
errors by type, the top routes and keys, and the alerts firing now with the latest events. It reads memory
only and costs a few milliseconds at most; it runs on the event loop.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Optional

from unimodel.telemetry import histogram
from unimodel.telemetry.alerts import Alerts
from unimodel.telemetry.window import RequestWindow, top

STEPS = 60
TOP = 10
SHORTEST_WINDOW_S = 10.0


def _round(value: Optional[float]) -> Optional[float]:
    return None if value is None else round(value, 1)


def _percentiles(hist: histogram.Histogram) -> dict[str, Optional[float]]:
    return {"p50": _round(histogram.percentile(hist, 50)), "p95": _round(histogram.percentile(hist, 95)),
            "max": _round(histogram.largest(hist)), "count": histogram.count(hist)}


def dashboard_data(window: RequestWindow, alerts: Optional[Alerts], window_s: float) -> dict[str, Any]:
    """The dashboard's view of the last ``window_s`` seconds (clamped to what the window keeps)."""
    window_s = min(max(SHORTEST_WINDOW_S, window_s), window.horizon_s)
    step_s = max(window.bucket_s, round(window_s / STEPS / window.bucket_s) * window.bucket_s)
    series = window.series(window_s, step_s)
    window_s = len(series) * step_s  # whole steps: the totals cover exactly the buckets the series shows
    view = window.view(window_s)
    columns: dict[str, list[Any]] = {name: [] for name in (
        "seconds_ago", "requests", "server_errors", "tokens", "latency_p50_ms", "latency_p95_ms", "ttft_p50_ms",
        "ttft_p95_ms")}
    # each step's histograms are merged once, for its points, and the totals' are the sum of the steps'
    totals: dict[str, list[histogram.Histogram]] = {"latency_ms": [], "ttft_ms": [], "prompt_tokens": []}
    for ago, step in series:
        columns["seconds_ago"].append(ago)
        columns["requests"].append(step.requests)
        columns["server_errors"].append(step.server_errors)
        columns["tokens"].append(step.tokens)
        for name, merged in totals.items():
            hist = step.histogram(name) if step.requests else {}
            merged.append(hist)
            if name != "prompt_tokens":
                column = name.removesuffix("_ms")
                columns[f"{column}_p50_ms"].append(_round(histogram.percentile(hist, 50)))
                columns[f"{column}_p95_ms"].append(_round(histogram.percentile(hist, 95)))
    keys = view.keys()
    top_keys = sorted(keys.items(), key=lambda kc: (-kc[1]["requests"], kc[0]))[:TOP]
    return {
        "generated_at": datetime.now(timezone.utc).isoformat(),
        "window_s": window_s,
        "step_s": step_s,
        "totals": {
            "requests": view.requests,
            "server_errors": view.server_errors,
            "rate_limited": view.rate_limited,
            "tokens": view.tokens,
            "requests_per_s": round(view.requests / view.span_s, 3) if view.span_s > 0 else None,
            "error_rate": _round(100.0 * view.error_rate) if view.error_rate is not None else None,
            **{name: _percentiles(histogram.merged(hists)) for name, hists in totals.items()},
        },
        "series": columns,
        "tokens_by_effort": view.tokens_by_effort(),
        "errors_by_type": top(view.errors_by_type(), TOP),
        "top_routes": top(view.routes(), TOP),
        "top_keys": [{"key": k, **counts} for k, counts in top_keys],
        "alerts": {
            "rules": len(alerts.rules) if alerts is not None else 0,
            "firing": alerts.firing() if alerts is not None else [],
            "recent": [e.payload() for e in reversed(alerts.events[-TOP:])] if alerts is not None else [],
        },
    }
