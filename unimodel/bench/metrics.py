"""Figures from timing records: per-request latencies, their percentiles, throughput, tokens, goodput.

Definitions follow GuideLLM (``guidellm/schemas/request_stats.py``, ``benchmark/schemas/metrics.py``), so the
two tools' figures compare; where AIPerf differs it is said. For one completed request, with ``start`` the
send, ``first``/``last`` the first/last token-bearing chunk and ``out`` its output tokens (thinking included,
as both tools count them):

- ``ttft`` = first − start: the first token of any kind, thinking included (GuideLLM's and AIPerf's TTFT);
- ``ttfa`` = first answer token − start: the first ``content``/``tool_calls`` chunk, after the thinking
  (GuideLLM calls it TTFOT); a request that never answers has none;
- ``itl`` = (last − first) / (out − 1), for out ≥ 2 (GuideLLM's ITL; AIPerf's ``(e2e − ttft) / (out − 1)``
  differs only by the [DONE] frame after the last token; vLLM's ``bench serve`` calls this figure TPOT);
- ``tpot`` = (last − start) / out (GuideLLM's TPOT: the first token included);
- ``e2e`` = end − start, the end being ``[DONE]``'s arrival.

Percentiles are GuideLLM's: the smallest value whose cumulative weight reaches p % of the total (nearest
rank, no interpolation), with ``itl`` weighted by its request's out − 1 and ``tpot`` by out (so both are
per-token figures: a long answer counts for more than a short one), every other metric by 1. Unlike GuideLLM,
a request without a value (no answer token: no ``ttfa``) is left out rather than counted as 0.

Throughput (AIPerf's, equal to GuideLLM's means): ``duration`` runs from the first send to the last end of
the measured requests; requests/s = completed / duration; output tokens/s = the completed requests' output
tokens / duration; goodput = requests that completed within every SLO / duration. ``mean_concurrency`` is
the requests' summed latency over the duration (Little's law). Errors are counted by type, never measured.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Optional

from unimodel.bench.client import RequestRecord
from unimodel.bench.schema import (METRICS, PERCENTILES, Distribution, SLOResult, Summary, Throughput, Tokens,
                                   TokenSource)

_UNITS = {"ms": 1e-3, "s": 1.0, "m": 60.0}


class SLOError(ValueError):
    """An --slo that cannot be parsed."""


def parse_slo(text: str) -> dict[str, float]:
    """``"ttft=500ms,e2e=10s"`` → ``{"ttft": 0.5, "e2e": 10.0}`` (seconds; a bare number is milliseconds)."""
    limits: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        name, value = name.strip().lower(), value.strip().lower()
        if not sep or name not in METRICS:
            raise SLOError(f"--slo: {part!r} is not METRIC=LIMIT with METRIC one of {', '.join(METRICS)}")
        unit = next((u for u in ("ms", "s", "m") if value.endswith(u)), "ms")
        number = value[: len(value) - len(unit)] if value.endswith(unit) else value
        try:
            seconds = float(number) * _UNITS[unit]
        except ValueError:
            raise SLOError(f"--slo: {value!r} is not a duration such as 500ms or 10s") from None
        if not seconds > 0 or math.isinf(seconds):
            raise SLOError(f"--slo: the limit for {name} must be positive")
        limits[name] = seconds
    return limits


def percentile(values: Sequence[float], p: float, weights: Optional[Sequence[float]] = None) -> Optional[float]:
    """GuideLLM's percentile: the smallest value whose cumulative weight reaches ``p`` % of the total."""
    pairs = sorted(zip(values, weights if weights is not None else [1.0] * len(values)))
    pairs = [(v, w) for v, w in pairs if w > 0]
    if not pairs:
        return None
    threshold = sum(w for _, w in pairs) * p / 100.0
    cumulative = 0.0
    for value, weight in pairs:
        cumulative += weight
        if cumulative >= threshold * (1 - 1e-12):
            return value
    return pairs[-1][0]


def distribution(values: Sequence[float], weights: Optional[Sequence[float]] = None) -> Distribution:
    """Percentiles, weighted mean, min, max of values in seconds, reported in milliseconds."""
    if weights is None:
        weights = [1.0] * len(values)
    kept = [(v, w) for v, w in zip(values, weights) if w > 0]
    if not kept:
        return Distribution(count=0)
    vs, ws = [v for v, _ in kept], [w for _, w in kept]
    figures = {f"p{p}": 1e3 * percentile(vs, p, ws) for p in PERCENTILES}  # type: ignore[operator]
    mean = 1e3 * sum(v * w for v, w in kept) / sum(ws)
    return Distribution(**figures, mean=mean, min=1e3 * min(vs), max=1e3 * max(vs), count=len(vs))


def request_values(record: RequestRecord) -> dict[str, tuple[float, float]]:
    """The metrics one completed request has, as (value in seconds, weight)."""
    out: dict[str, tuple[float, float]] = {"e2e": (record.end - record.start, 1.0)}
    if record.first_token is not None:
        out["ttft"] = (record.first_token - record.start, 1.0)
    if record.first_answer is not None:
        out["ttfa"] = (record.first_answer - record.start, 1.0)
    n = record.output_tokens
    if record.first_token is not None and record.last_token is not None and n >= 2:
        out["itl"] = ((record.last_token - record.first_token) / (n - 1), float(n - 1))
    if record.last_token is not None and n >= 1:
        out["tpot"] = ((record.last_token - record.start) / n, float(n))
    return out


def meets(values: dict[str, tuple[float, float]], limits: dict[str, float]) -> bool:
    """Whether a completed request is within every SLO (a metric it lacks, e.g. no answer, fails it)."""
    return all(name in values and values[name][0] <= limit for name, limit in limits.items())


def _source(sources: Iterable[str]) -> TokenSource:
    seen = set(sources)
    if not seen:
        return "none"
    return "mixed" if len(seen) > 1 else seen.pop()  # type: ignore[return-value]


def _mean(xs: Sequence[float]) -> Optional[float]:
    return sum(xs) / len(xs) if xs else None


def summarize(records: Sequence[RequestRecord], slo: Optional[dict[str, float]] = None, *,
              duration_s: Optional[float] = None, incomplete: int = 0) -> Summary:
    """Summarize the measured requests of one run (or of several, with their summed ``duration_s``)."""
    done = [r for r in records if r.ok]
    if duration_s is None:
        duration_s = max(r.end for r in records) - min(r.start for r in records) if records else 0.0
    per_request = [request_values(r) for r in done]
    dists = {}
    for name in METRICS:
        pairs = [v[name] for v in per_request if name in v]
        dists[name] = distribution([p[0] for p in pairs], [p[1] for p in pairs])
    rate = (lambda n: n / duration_s) if duration_s > 0 else (lambda n: 0.0)
    output_total = sum(r.output_tokens for r in done)
    slo_result = None
    if slo:
        good = sum(1 for v in per_request if meets(v, slo))
        slo_result = SLOResult(limits_ms={k: v * 1e3 for k, v in slo.items()}, good=good,
                               good_fraction=good / len(records) if records else 0.0,
                               goodput_requests_per_s=rate(good))
    prompts = [float(r.prompt_tokens) for r in done if r.prompt_tokens is not None]
    tokens = Tokens(
        prompt_mean=_mean(prompts), output_total=output_total, output_mean=_mean([r.output_tokens for r in done]),
        reasoning_total=sum(r.reasoning_tokens for r in done),
        reasoning_mean=_mean([r.reasoning_tokens for r in done]),
        answer_total=sum(r.answer_tokens for r in done), answer_mean=_mean([r.answer_tokens for r in done]),
        source=_source(r.output_tokens_source for r in done),
        reasoning_source=_source(r.reasoning_tokens_source for r in done))
    return Summary(
        completed=len(done), errors=len(records) - len(done), incomplete=incomplete,
        errors_by_type=dict(sorted(Counter(r.error for r in records if r.error).items())),
        duration_s=duration_s,
        mean_concurrency=sum(r.end - r.start for r in records) / duration_s if duration_s > 0 else 0.0,
        throughput=Throughput(requests_per_s=rate(len(done)), output_tokens_per_s=rate(output_total),
                              goodput_requests_per_s=slo_result.goodput_requests_per_s if slo_result else None),
        tokens=tokens, slo=slo_result, **dists)
