"""Request-log statistics: counts, errors by type, tokens by effort, latency percentiles, and a cost estimate.

:func:`compute_stats` folds rows (as :meth:`LogStore.rows` returns them) into a :class:`LogStats`, which
renders itself with rich and turns into JSON with :meth:`LogStats.to_dict`.

The cost estimate prices the hardware the operator named (a :class:`Pricing`: GPUs × price per GPU-hour, the
price from ``unimodel plan``'s catalog unless given, or one price per hour for the whole machine) against the
throughput the log measured: ``window`` runs from the first request's arrival to the last one's end,
``tokens_per_s`` is the completion tokens served in it per second, and the cost per million tokens is what the
hardware costs for the time it takes to serve a million tokens at that rate. An idle server makes tokens
expensive; that is the point of measuring it. Without a :class:`Pricing` there is no cost at all: a price for
hardware nobody named (a CPU demo priced as two H200s) would be made up; :data:`COST_HINT` says how to get one.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Optional

from rich.console import Console, ConsoleOptions, RenderResult
from rich.table import Table

from unimodel.telemetry.listing import cell

STATS_COLUMNS = ("created_at", "status", "error_type", "reasoning_effort", "prompt_tokens", "reasoning_tokens",
                 "completion_tokens", "tokens_estimated", "ttft_ms", "ttfa_ms", "latency_ms")


def percentile(values: Sequence[float], p: float) -> Optional[float]:
    """The ``p``-th percentile (0–100) with linear interpolation between ranks; ``None`` for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass
class EffortTokens:
    requests: int = 0
    prompt_tokens: int = 0
    reasoning_tokens: int = 0
    completion_tokens: int = 0
    estimated: int = 0  # requests whose counts are estimates


#: what ``logs stats`` prints instead of a cost when no hardware or price was given
COST_HINT = "no cost estimate: add --gpu h100 --gpus 2, or --price-per-hour USD"


@dataclass(frozen=True)
class Pricing:
    """The hardware the operator named: ``gpus`` × ``gpu`` at ``price_per_gpu_hour``, or, with no GPU named,
    the whole machine at ``hourly_usd``."""

    hourly_usd: float
    gpu: Optional[str] = None
    gpus: Optional[int] = None
    price_per_gpu_hour: Optional[float] = None

    @classmethod
    def per_gpu(cls, gpu: Optional[str], gpus: int, price_per_gpu_hour: float) -> Pricing:
        return cls(gpus * price_per_gpu_hour, gpu, gpus, price_per_gpu_hour)

    def describe(self) -> str:
        """``2 × h100 at $2.54/GPU-hour``, or ``$0.40/hour`` for a whole machine."""
        if self.gpus is None or self.price_per_gpu_hour is None:
            return f"${self.hourly_usd:,.2f}/hour"
        return f"{self.gpus} × {self.gpu or 'GPU'} at ${self.price_per_gpu_hour:,.2f}/GPU-hour"


@dataclass
class Cost:
    pricing: Pricing
    window_s: float
    tokens_per_s: float

    @property
    def hourly_usd(self) -> float:
        return self.pricing.hourly_usd

    @property
    def window_usd(self) -> float:
        return self.hourly_usd * self.window_s / 3600.0

    @property
    def usd_per_million_tokens(self) -> Optional[float]:
        if self.tokens_per_s <= 0:
            return None
        return self.hourly_usd / (self.tokens_per_s * 3600.0) * 1e6


@dataclass
class LogStats:
    requests: int = 0
    errors: int = 0
    errors_by_type: dict[str, int] = field(default_factory=dict)
    tokens_by_effort: dict[str, EffortTokens] = field(default_factory=dict)
    latency_ms: dict[str, Optional[float]] = field(default_factory=dict)  # p50, p95
    ttft_ms: dict[str, Optional[float]] = field(default_factory=dict)
    ttfa_ms: dict[str, Optional[float]] = field(default_factory=dict)
    first: Optional[str] = None
    last: Optional[str] = None
    cost: Optional[Cost] = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "requests": self.requests, "errors": self.errors, "errors_by_type": self.errors_by_type,
            "tokens_by_effort": {k: vars(v) for k, v in self.tokens_by_effort.items()},
            "latency_ms": self.latency_ms, "ttft_ms": self.ttft_ms, "ttfa_ms": self.ttfa_ms,
            "first": self.first, "last": self.last, "cost": None,
        }
        if self.cost is not None:
            c, p = self.cost, self.cost.pricing
            out["cost"] = {"gpu": p.gpu, "gpus": p.gpus, "price_per_gpu_hour": p.price_per_gpu_hour,
                           "window_s": round(c.window_s, 3), "tokens_per_s": round(c.tokens_per_s, 3),
                           "hourly_usd": round(c.hourly_usd, 4), "window_usd": round(c.window_usd, 6),
                           "usd_per_million_tokens": None if c.usd_per_million_tokens is None
                           else round(c.usd_per_million_tokens, 4)}
        return out

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        summary = Table(title="Request log", show_header=False, title_justify="left")
        summary.add_column(style="bold")
        summary.add_column(justify="right")
        summary.add_row("requests", str(self.requests))
        summary.add_row("errors", str(self.errors))
        summary.add_row("from", self.first or "-")
        summary.add_row("to", self.last or "-")
        for name, values in (("latency", self.latency_ms), ("TTFT", self.ttft_ms),
                             ("time to first answer token", self.ttfa_ms)):
            summary.add_row(f"{name} p50 / p95", f"{_ms(values.get('p50'))} / {_ms(values.get('p95'))}")
        yield summary
        if self.errors_by_type:
            errors = Table(title="Errors by type", title_justify="left")
            errors.add_column("error_type")
            errors.add_column("requests", justify="right")
            for name, n in sorted(self.errors_by_type.items(), key=lambda kv: (-kv[1], kv[0])):
                errors.add_row(cell(name), str(n))
            yield errors
        tokens = Table(title="Tokens by reasoning effort", title_justify="left")
        for name in ("effort", "requests", "prompt", "reasoning", "completion", "estimated"):  # fits 80 columns
            tokens.add_column(name, justify="left" if name == "effort" else "right", no_wrap=True)
        for effort, t in sorted(self.tokens_by_effort.items()):
            tokens.add_row(cell(effort), str(t.requests), f"{t.prompt_tokens:,}", f"{t.reasoning_tokens:,}",
                           f"{t.completion_tokens:,}", str(t.estimated))
        yield tokens
        if self.cost is not None:
            c = self.cost
            cost = Table(title="Cost estimate", show_header=False, title_justify="left")
            cost.add_column(style="bold")
            cost.add_column(justify="right")
            cost.add_row("hardware", cell(c.pricing.describe()))
            cost.add_row("window", f"{c.window_s:,.1f} s")
            cost.add_row("measured throughput", f"{c.tokens_per_s:,.1f} completion tokens/s")
            cost.add_row("cost of the window", f"${c.window_usd:,.4f}")
            per_m = c.usd_per_million_tokens
            cost.add_row("per 1M completion tokens", "-" if per_m is None else f"${per_m:,.2f}")
            yield cost


def _ms(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:,.0f} ms"


def _p50_p95(values: Sequence[float]) -> dict[str, Optional[float]]:
    return {"p50": _round(percentile(values, 50)), "p95": _round(percentile(values, 95))}


def _round(value: Optional[float]) -> Optional[float]:
    return None if value is None else round(value, 3)


def compute_stats(rows: Iterable[Mapping[str, Any]], pricing: Optional[Pricing] = None) -> LogStats:
    """Fold rows into :class:`LogStats`; with ``pricing`` (the hardware the operator named) the cost too.

    Latency and time-to-token percentiles are over the requests that succeeded (status 200)."""
    stats = LogStats()
    errors: Counter[str] = Counter()
    efforts: dict[str, EffortTokens] = defaultdict(EffortTokens)
    latency: list[float] = []
    ttft: list[float] = []
    ttfa: list[float] = []
    start: Optional[datetime] = None
    end: Optional[datetime] = None
    completion = 0
    for row in rows:
        stats.requests += 1
        status = int(row.get("status") or 0)
        if status >= 400:
            stats.errors += 1
            errors[row.get("error_type") or f"http_{status}"] += 1
        tokens = efforts[row.get("reasoning_effort") or "-"]
        tokens.requests += 1
        tokens.prompt_tokens += row.get("prompt_tokens") or 0
        tokens.reasoning_tokens += row.get("reasoning_tokens") or 0
        tokens.completion_tokens += row.get("completion_tokens") or 0
        tokens.estimated += bool(row.get("tokens_estimated"))
        completion += row.get("completion_tokens") or 0
        if status == 200:
            for values, name in ((latency, "latency_ms"), (ttft, "ttft_ms"), (ttfa, "ttfa_ms")):
                if row.get(name) is not None:
                    values.append(float(row[name]))
        arrived = datetime.fromisoformat(str(row["created_at"]))
        finished = arrived.timestamp() + (row.get("latency_ms") or 0.0) / 1000.0
        start = arrived if start is None or arrived < start else start
        if end is None or finished > end.timestamp():
            end = datetime.fromtimestamp(finished, arrived.tzinfo)
    stats.errors_by_type = dict(errors)
    stats.tokens_by_effort = dict(efforts)
    stats.latency_ms, stats.ttft_ms, stats.ttfa_ms = _p50_p95(latency), _p50_p95(ttft), _p50_p95(ttfa)
    if start is not None and end is not None:
        stats.first, stats.last = start.isoformat(), end.isoformat()
        if pricing is not None:
            window_s = max((end - start).total_seconds(), 1e-3)
            stats.cost = Cost(pricing, window_s, completion / window_s)
    return stats
