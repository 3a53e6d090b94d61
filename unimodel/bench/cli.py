"""``unimodel bench``: parse flags, run the benchmark with live progress, write and print its results.

``register(app)`` adds the command to a typer app (the CLI's, or a test's). Bad flags (a size flag the
workload cannot honour included) end with one line on stderr and exit code 2. Then a test request of each
kind the workload sends (:mod:`unimodel.bench.preflight`, unless ``--no-preflight``): if the endpoint refuses
it, one line on stderr says why and what to fix, exit code 1, and nothing is written. Ctrl-C stops the run and
still writes what was measured (exit code 130); a run in which no request completed exits 1. Under the
results table: the errors by kind with a message each, and the plots not drawn with why.
"""

from __future__ import annotations

import asyncio
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from unimodel.bench.client import Target
from unimodel.bench.console import LiveProgress, errors_table, results_table
from unimodel.bench.loadgen import LoadPlan
from unimodel.bench.metrics import SLOError, parse_slo
from unimodel.bench.preflight import PreflightFailed, preflight
from unimodel.bench.report import build_results, write_outputs
from unimodel.bench.runner import Bench, BenchSpec, run_bench
from unimodel.bench.workloads import WorkloadError, WorkloadOptions, build_workload

ERROR_PREFIX = "unimodel: error: "
EFFORTS = ("none", "minimal", "low", "medium", "high")


def _fail(message: str) -> None:
    typer.echo(ERROR_PREFIX + " ".join(message.split()), err=True)
    raise typer.Exit(2)


def parse_efforts(text: Optional[str]) -> tuple[Optional[str], ...]:
    if text is None:
        return (None,)
    efforts = tuple(e.strip().lower() for e in text.split(",") if e.strip())
    unknown = [e for e in efforts if e not in EFFORTS]
    if not efforts or unknown:
        _fail(f"--reasoning-effort: {', '.join(unknown) or 'nothing given'}: use a comma-separated list of "
              f"{', '.join(EFFORTS)}")
    return tuple(dict.fromkeys(efforts))


def _check(concurrency: Optional[int], rate: Optional[float], sweep: bool, requests: Optional[int],
           duration: Optional[float], warmup: int, max_concurrency: int, *, timeout: float = 600.0,
           input_tokens: Optional[int] = None, output_tokens: Optional[int] = None,
           max_tokens: Optional[int] = None) -> None:
    if concurrency is not None and rate is not None:
        _fail("give --concurrency (closed loop) or --rate (open loop), not both")
    if sweep and (rate is not None or concurrency is not None):
        _fail("--sweep runs the closed loop at 1, 2, 4, ... streams: it takes no --rate or --concurrency "
              "(its last level is --max-concurrency)")
    if requests is not None and duration is not None:
        _fail("give --requests or --duration, not both")
    for name, value in (("--concurrency", concurrency), ("--rate", rate), ("--requests", requests),
                        ("--duration", duration), ("--max-concurrency", max_concurrency), ("--timeout", timeout),
                        ("--input-tokens", input_tokens), ("--output-tokens", output_tokens),
                        ("--max-tokens", max_tokens)):
        if value is not None and not value > 0:
            _fail(f"{name} must be positive, not {value}")
    if warmup < 0:
        _fail(f"--warmup must be 0 or more, not {warmup}")


def _by_reason(skipped: dict[str, str]) -> dict[str, list[str]]:
    reasons: dict[str, list[str]] = {}
    for name, why in skipped.items():
        reasons.setdefault(why, []).append(name)
    return reasons


def _preflight(spec: BenchSpec) -> None:
    """The test request: on failure, its one line on stderr and exit code 1, before anything is written."""
    try:
        with Console(stderr=True).status("a test request of each kind before the run (--no-preflight skips it)"):
            asyncio.run(preflight(spec.target, spec.workload, spec.model, spec.efforts[0]))
    except PreflightFailed as exc:
        typer.echo(ERROR_PREFIX + str(exc), err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def register(app: typer.Typer) -> None:
    @app.command()
    def bench(
        url: str = typer.Option(..., help="Base URL of any OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1"),
        model: str = typer.Option(..., help="The model name to send."),
        api_key: Optional[str] = typer.Option(None, help="Sent as Authorization: Bearer KEY."),
        workload: str = typer.Option("chat", help="chat | reasoning | vision | tools | mixed | FILE.jsonl "
                                                  "(one OpenAI chat request a line). report.md states what each "
                                                  "kind of request really sends."),
        concurrency: Optional[int] = typer.Option(None, help="Closed loop: requests in flight, one connection "
                                                             "each (default 1)."),
        rate: Optional[float] = typer.Option(None, help="Open loop: Poisson arrivals, requests per second."),
        sweep: bool = typer.Option(False, "--sweep", help="Closed loop at 1, 2, 4, ... streams until throughput "
                                                          "stops rising (or --max-concurrency)."),
        max_concurrency: int = typer.Option(256, help="The sweep's last level; the open loop's connection cap."),
        requests: Optional[int] = typer.Option(None, help="Measured requests per run (default 100)."),
        duration: Optional[float] = typer.Option(None, help="Or: seconds per run (requests in flight then finish)."),
        warmup: int = typer.Option(0, help="Requests sent first in each run and not measured."),
        reasoning_effort: Optional[str] = typer.Option(None, help="Comma-separated efforts, one run each, e.g. "
                                                                  "none,high (default: no reasoning_effort field, "
                                                                  "the server's default)."),
        slo: Optional[str] = typer.Option(None, help="Goodput limits, e.g. ttft=500ms,e2e=10s (ttft, ttfa, itl, "
                                                     "tpot, e2e)."),
        out: Optional[Path] = typer.Option(None, help="Output folder (default bench-results/<UTC time>)."),
        input_tokens: Optional[int] = typer.Option(
            None, help="Prompt length in tokens (about) of the chat workload and of mixed's chat part (default "
                       "128). reasoning, vision, tools and a FILE.jsonl send their own prompts and refuse it."),
        output_tokens: Optional[int] = typer.Option(
            None, help="max_tokens of every built-in workload's requests (defaults: chat 128, reasoning 2048, "
                       "vision 64, tools 256). A FILE.jsonl refuses it: use --max-tokens."),
        max_tokens: Optional[int] = typer.Option(None, help="max_tokens for every request, a FILE.jsonl's "
                                                            "included (not with --output-tokens)."),
        ignore_eos: bool = typer.Option(False, "--ignore-eos", help="Send ignore_eos (vLLM, SGLang, unimodel) so "
                                                                    "every answer is max_tokens long."),
        seed: int = typer.Option(0, help="Seed of the synthetic prompts and of the open loop's arrivals."),
        timeout: float = typer.Option(600.0, help="Read timeout of one request, in seconds."),
        no_preflight: bool = typer.Option(False, "--no-preflight",
                                          help="Skip the test request of each kind sent before the run (stopped "
                                               "at its first token); with it, an endpoint that refuses the "
                                               "workload stops the bench with the reason in one line."),
    ) -> None:
        """Measure an OpenAI-compatible endpoint: TTFT, time to first answer token, ITL, throughput, goodput."""
        if not url.startswith(("http://", "https://")):
            _fail(f"--url must be an http(s) URL such as http://127.0.0.1:8000/v1, not {url[:200]!r}")
        _check(concurrency, rate, sweep, requests, duration, warmup, max_concurrency, timeout=timeout,
               input_tokens=input_tokens, output_tokens=output_tokens, max_tokens=max_tokens)
        efforts = parse_efforts(reasoning_effort)
        try:
            limits = parse_slo(slo) if slo else {}
            options = WorkloadOptions(input_tokens=input_tokens, output_tokens=output_tokens, max_tokens=max_tokens,
                                      ignore_eos=ignore_eos, seed=seed)
            load = build_workload(workload, options)
        except (SLOError, WorkloadError) as exc:
            _fail(str(exc))
            return
        plan = LoadPlan(mode="open" if rate is not None else "closed", concurrency=concurrency or 1, rate=rate,
                        requests=requests, duration_s=duration, warmup=warmup, seed=seed,
                        max_connections=max_concurrency)
        spec = BenchSpec(target=Target(url, api_key=api_key, timeout_s=timeout), model=model, workload=load,
                         plan=plan, efforts=efforts, sweep=sweep, max_concurrency=max_concurrency, slo=limits)
        if not no_preflight:
            _preflight(spec)
        out_dir = out or Path("bench-results") / datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        console = Console()
        if not console.is_terminal and not os.environ.get("COLUMNS"):  # a log or a pipe: no 80-column wrapping
            console = Console(width=160)
        state = Bench(spec)
        interrupted = False
        with LiveProgress(console) as progress:
            try:
                asyncio.run(run_bench(state, progress))
            except KeyboardInterrupt:
                interrupted = True
        results = build_results(state, options, interrupted)
        written, skipped = write_outputs(state, results, out_dir)
        console.print(results_table(results, console.width))
        if results.errors:
            console.print(errors_table(results))
        for why, names in _by_reason(skipped).items():
            console.print(f"[yellow]not drawn ({why}): {', '.join(names)}[/yellow]", highlight=False)
        console.print("written: " + ", ".join(str(p) for p in written), highlight=False)
        if interrupted:
            raise typer.Exit(130)
        if results.summary.completed == 0:
            raise typer.Exit(1)
