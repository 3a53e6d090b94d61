"""``report.md``: the configuration (with what each kind of request really asked for), then every run side by
side (efforts, concurrencies), then the errors by kind with a message each, then the plots and why any is
missing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Optional

from unimodel.bench.schema import Distribution, Results, Summary
from unimodel.bench.shape import describe


def _f(x: Optional[float], digits: int = 1) -> str:
    return "–" if x is None else f"{x:,.{digits}f}"


def _pp(d: Distribution) -> str:
    return f"{_f(d.p50)} / {_f(d.p99)}"


def _row(label: str, s: Summary) -> str:
    t = s.tokens
    cells = [label, str(s.completed), str(s.errors), _f(s.throughput.requests_per_s, 2),
             _f(s.throughput.output_tokens_per_s), _pp(s.ttft), _pp(s.ttfa), _pp(s.itl), _pp(s.tpot), _pp(s.e2e),
             _f(t.reasoning_mean), _f(t.answer_mean)]
    if s.slo is not None:
        cells.append(f"{_f(s.slo.goodput_requests_per_s, 2)} ({s.slo.good_fraction:.0%})")
    return "| " + " | ".join(cells) + " |"


def _workload(results: Results, amount: str) -> list[str]:
    """The workload as sent: one line, or one line per kind for a mix."""
    c = results.config
    tail = f"; {amount} a run after {c.warmup} warm-up"
    if len(c.shape) == 1:
        return [f"- workload: `{c.workload}`: {describe(c.shape[0])}{tail}"]
    lines = [f"- workload: `{c.workload}`, interleaved{tail}:"]
    return lines + [f"  - {s.kind}: {describe(s)}" for s in c.shape]


def render_markdown(results: Results, plots: Sequence[str] = (), skipped: Mapping[str, str] = {}) -> str:
    c = results.config
    load = ("sweep (closed loop, 1 stream to saturation)" if c.sweep
            else f"closed loop, concurrency {c.concurrency}" if c.mode == "closed"
            else f"open loop, Poisson arrivals at {c.rate:g} requests/s (seed {c.seed})")
    amount = f"{c.requests} requests" if c.requests is not None else f"{c.duration_s:g} s"
    efforts = ", ".join(e or "default" for e in c.efforts)
    lines = [
        "# unimodel bench",
        "",
        f"- endpoint: `{c.url}`, model `{c.model}`",
        *_workload(results, amount),
        f"- load: {load}; reasoning effort: {efforts}",
        f"- started {results.started_at}" + (" — **interrupted** (Ctrl-C): what was measured until then"
                                             if results.interrupted else ""),
        f"- token counts: {results.summary.tokens.source} (reasoning: {results.summary.tokens.reasoning_source}); "
        "`usage` = the server's, `counted` = one per streamed chunk",
    ]
    if c.slo_ms:
        lines.append("- SLOs: " + ", ".join(f"{k} ≤ {v:g} ms" for k, v in c.slo_ms.items()))
    header = ["run", "done", "errors", "req/s", "out tok/s", "TTFT p50/p99", "TTFA p50/p99", "ITL p50/p99",
              "TPOT p50/p99", "E2E p50/p99", "think tok", "answer tok"]
    if c.slo_ms:
        header.append("goodput req/s (share)")
    lines += ["", "## Runs", "", "Times in ms; TTFT is the first token of any kind, TTFA the first answer token "
              "(after the thinking); token columns are means per request.", "",
              "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += [_row(run.label, run.summary) for run in results.runs]
    if len(results.runs) > 1:
        lines.append(_row("**all**", results.summary))
    lines += ["", "## Percentiles (all runs)", "", "| metric | p50 | p90 | p95 | p99 | mean | count |",
              "|---|---|---|---|---|---|---|"]
    for name in ("ttft", "ttfa", "itl", "tpot", "e2e"):
        d: Distribution = getattr(results.summary, name)
        lines.append(f"| {name} | {_f(d.p50)} | {_f(d.p90)} | {_f(d.p95)} | {_f(d.p99)} | {_f(d.mean)} | {d.count} |")
    if results.errors or results.summary.incomplete:
        lines += ["", "## Errors", "", "All runs; the type is the HTTP status and the server's error code, or the "
                  "transport's failure; the example is the first message of its kind.", "",
                  "| type | count | example |", "|---|---|---|"]
        lines += [f"| {g.kind} | {g.count} | {g.sample.replace('|', '/')[:200]} |" for g in results.errors]
        if results.summary.incomplete:
            lines.append(f"| incomplete (in flight when stopped) | {results.summary.incomplete} | |")
    if plots or skipped:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
        lines += [f"- `{name}` not drawn: {why}" for name, why in skipped.items()]
    return "\n".join(lines) + "\n"
