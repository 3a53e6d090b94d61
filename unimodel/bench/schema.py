"""The schema of ``results.json`` (pydantic models: ``Results.model_json_schema()`` is its JSON Schema).

```
{
  "schema_version": 1,
  "tool": "unimodel bench", "started_at": "2026-01-01T12:00:00+00:00", "interrupted": false,
  "config": {"url", "model", "workload", "mode": "closed"|"open", "concurrency", "rate", "sweep",
             "requests", "duration_s", "warmup", "efforts", "slo_ms", "seed",
             "input_tokens", "output_tokens", "max_tokens",   # the flags as given (null: not given)
             "ignore_eos",
             "shape": [{"kind", "distinct", "prompt_tokens", "prompt_tokens_reported", "max_tokens_min",
                        "max_tokens_max", "images", "tools", "ignore_eos"}, ...]},  # per kind, as sent
  "summary": Summary,            # every measured request of every run, pooled
  "runs": [{"label", "effort", "mode", "concurrency", "rate", "summary": Summary,
            "error_samples": {"http_503": "engine overloaded", ...}}, ...],
  "errors": [{"kind": "http_400 invalid_value", "status": 400, "count": 12,
              "sample": "max_tokens (2048) is above the cap of 512 tokens ..."}, ...]   # most frequent first
}
Summary = {
  "completed", "errors", "incomplete",          # requests: answered in full / failed / in flight at Ctrl-C
  "errors_by_type": {"http_503": 3, "timeout": 1, ...},
  "duration_s", "mean_concurrency",
  "throughput": {"requests_per_s", "output_tokens_per_s", "goodput_requests_per_s"},
  "ttft" | "ttfa" | "itl" | "tpot" | "e2e": {"p50", "p90", "p95", "p99", "mean", "min", "max", "count"},  # ms
  "tokens": {"prompt_mean", "output_total", "output_mean", "reasoning_total", "reasoning_mean",
             "answer_total", "answer_mean", "source", "reasoning_source"},   # source: usage|counted|mixed|none
  "slo": null | {"limits_ms": {"ttft": 500, ...}, "good", "good_fraction", "goodput_requests_per_s"}
}
```

``shape`` is read from the requests the workload really built (``prompt_tokens`` an estimate from their text,
``prompt_tokens_reported`` the server's mean count when its usage said), not from the flags. An error's
``kind`` is its type and the server's error code or the transport exception (``connect_error ConnectError``).
Times are milliseconds; a distribution with no values (e.g. ``ttfa`` when no request answered) has
``count: 0`` and null figures. How each figure is defined: :mod:`unimodel.bench.metrics`.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict

SCHEMA_VERSION: Literal[1] = 1
METRICS = ("ttft", "ttfa", "itl", "tpot", "e2e")
PERCENTILES = (50, 90, 95, 99)
TokenSource = Literal["usage", "counted", "mixed", "none"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Distribution(_Model):
    """One latency metric over the completed requests, in milliseconds."""

    p50: Optional[float] = None
    p90: Optional[float] = None
    p95: Optional[float] = None
    p99: Optional[float] = None
    mean: Optional[float] = None
    min: Optional[float] = None
    max: Optional[float] = None
    count: int = 0


class Throughput(_Model):
    requests_per_s: float
    output_tokens_per_s: float
    goodput_requests_per_s: Optional[float] = None  # only with SLOs


class Tokens(_Model):
    prompt_mean: Optional[float] = None
    output_total: int = 0
    output_mean: Optional[float] = None
    reasoning_total: int = 0
    reasoning_mean: Optional[float] = None
    answer_total: int = 0
    answer_mean: Optional[float] = None
    source: TokenSource = "none"  # output tokens: the server's usage, counted chunks, or some of each
    reasoning_source: TokenSource = "none"


class SLOResult(_Model):
    limits_ms: dict[str, float]
    good: int
    good_fraction: float
    goodput_requests_per_s: float


class Summary(_Model):
    completed: int
    errors: int
    incomplete: int = 0
    errors_by_type: dict[str, int]
    duration_s: float
    mean_concurrency: float
    throughput: Throughput
    ttft: Distribution
    ttfa: Distribution
    itl: Distribution
    tpot: Distribution
    e2e: Distribution
    tokens: Tokens
    slo: Optional[SLOResult] = None


class RunResult(_Model):
    label: str
    effort: Optional[str]
    mode: Literal["closed", "open"]
    concurrency: Optional[int] = None
    rate: Optional[float] = None
    summary: Summary
    error_samples: dict[str, str] = {}


class KindShape(_Model):
    """What one kind of request of the workload really asks for (the report's "workload" line)."""

    kind: str
    distinct: int  # different requests of this kind, cycled
    prompt_tokens: int  # mean estimate from the text (and tools) sent
    prompt_tokens_reported: Optional[float] = None  # the server's usage.prompt_tokens, mean, when reported
    max_tokens_min: Optional[int] = None  # None: the requests send no max_tokens (the server's default)
    max_tokens_max: Optional[int] = None
    images: int = 0  # per request
    tools: int = 0  # function tools offered per request
    ignore_eos: bool = False


class ErrorGroup(_Model):
    """The failed requests of one kind (type and code), pooled over the runs, with one server message."""

    kind: str
    status: Optional[int] = None  # the HTTP status, for an HTTP error
    count: int
    sample: str = ""


class BenchConfig(_Model):
    url: str
    model: str
    workload: str
    mode: Literal["closed", "open"]
    concurrency: Optional[int] = None
    rate: Optional[float] = None
    sweep: bool = False
    requests: Optional[int] = None
    duration_s: Optional[float] = None
    warmup: int = 0
    efforts: list[Optional[str]]
    slo_ms: dict[str, float] = {}
    seed: int = 0
    input_tokens: Optional[int] = None
    output_tokens: Optional[int] = None
    max_tokens: Optional[int] = None
    ignore_eos: bool = False
    shape: list[KindShape] = []


class Results(_Model):
    schema_version: Literal[1] = SCHEMA_VERSION
    tool: Literal["unimodel bench"] = "unimodel bench"
    started_at: str
    interrupted: bool = False
    config: BenchConfig
    summary: Summary
    runs: list[RunResult]
    errors: list[ErrorGroup] = []
