"""``unimodel eval``: parse flags, run the evaluation, write ``results.json``, ``report.md`` and plots, print.

``register(app)`` adds the command to a typer app. The evaluation's modules are imported when the command
runs, not when the CLI starts. Bad input ends with one line on stderr and exit code 2; an evaluation in which
every request failed exits 1 (its files are still written).
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

if TYPE_CHECKING:
    from unimodel.evals.results import EvalReport
    from unimodel.evals.runner import EvalConfig
    from unimodel.evals.sandbox import Limits

ERROR_PREFIX = "unimodel: error: "
EFFORTS = ("default", "none", "minimal", "low", "medium", "high", "xhigh")  # default: send no reasoning_effort


def _fail(message: str) -> None:
    typer.echo(ERROR_PREFIX + " ".join(message.split()), err=True)
    raise typer.Exit(2)


def _names(text: str, what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        _fail(f"{what} needs at least one name")
    if len(set(names)) != len(names):
        _fail(f"{what} names one twice: {text}")
    return names


def register(app: typer.Typer) -> None:
    @app.command("eval")
    def eval_command(
        url: str = typer.Option(..., help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1"),
        model: Optional[str] = typer.Option(None, help="Model name to send (default: the endpoint's only model)."),
        suite: str = typer.Option("math,json,tools,code,vision", help="Suites, comma-separated."),
        reasoning_effort: str = typer.Option("none,low,high", help="Efforts to run, comma-separated; 'default' "
                                                                   "sends no reasoning_effort."),
        samples: int = typer.Option(20, min=1, help="Tasks per suite."),
        concurrency: int = typer.Option(8, min=1, help="Requests in flight."),
        out: Path = typer.Option(Path("eval-results"), help="Folder for results.json, report.md and plots."),
        seed: int = typer.Option(0, help="Seed of the generated tasks (same seed, same tasks)."),
        compare: Optional[str] = typer.Option(None, help="A,B: the efforts of the A/B verdict (default: the "
                                                         "first and the last)."),
        max_tokens: int = typer.Option(4096, min=1, help="max_tokens of every request (reasoning included)."),
        temperature: float = typer.Option(0.0, min=0.0, max=2.0, help="Sampling temperature."),
        timeout_s: float = typer.Option(600.0, "--timeout", min=1.0, help="Seconds one request may take."),
        api_key: Optional[str] = typer.Option(None, envvar="OPENAI_API_KEY", help="Bearer key (or OPENAI_API_KEY)."),
        code_cpu_seconds: int = typer.Option(5, min=1, help="code suite: CPU seconds a candidate may use."),
        code_memory_mb: int = typer.Option(512, min=64, help="code suite: address space a candidate may use, MiB."),
        plots: bool = typer.Option(True, "--plots/--no-plots", help="Draw PNG plots (needs matplotlib)."),
    ) -> None:
        """Score an OpenAI-compatible endpoint on generated tasks with known answers, per reasoning effort."""
        import httpx
        from rich.console import Console

        from unimodel.evals import plots as plotting
        from unimodel.evals.evaluate import comparison_pair
        from unimodel.evals.report import markdown, render
        from unimodel.evals.runner import EvalConfig, served_models
        from unimodel.evals.sandbox import Limits
        from unimodel.evals.tasks import build_suites

        if not re.match(r"^https?://", url):
            _fail(f"--url must be an http(s) URL, not {url!r}")
        suites = _names(suite, "--suite")
        efforts = _names(reasoning_effort, "--reasoning-effort")
        unknown = [e for e in efforts if e not in EFFORTS]
        if unknown:
            _fail(f"unknown reasoning effort {', '.join(unknown)}; use {' | '.join(EFFORTS)}")
        limits = Limits(cpu_seconds=code_cpu_seconds, wall_seconds=2.0 * code_cpu_seconds + 5,
                        memory_bytes=code_memory_mb * 2**20)
        try:
            build_suites(suites, limits)
            pair = comparison_pair(efforts, _names(compare, "--compare") if compare else None)
        except ValueError as exc:
            _fail(str(exc))
            return
        if model is None:
            try:
                listed = asyncio.run(served_models(url, api_key))
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:  # unreachable, refused, not a list
                _fail(f"could not list the endpoint's models ({exc}); pass --model")
                return
            if len(listed) != 1:
                _fail(f"the endpoint serves {len(listed)} models ({', '.join(listed[:5])}); pass --model")
            model = listed[0]
        config = EvalConfig(url=url, model=model, efforts=tuple(efforts), max_tokens=max_tokens,
                            temperature=temperature, concurrency=concurrency, timeout_s=timeout_s, api_key=api_key)
        console = Console()
        report = asyncio.run(_run_with_progress(config, suites, samples, seed, pair, limits))
        out.mkdir(parents=True, exist_ok=True)
        report.write_json(out / "results.json")
        drawn: list[str] = []
        if plots and plotting.available():
            drawn = plotting.write_plots(report, out)
        elif plots:
            console.print("[yellow]no plots: matplotlib is not installed (pip install 'unimodel[bench]')[/yellow]")
        (out / "report.md").write_text(markdown(report, drawn), encoding="utf-8")
        render(report, console)
        console.print(f"wrote {out / 'results.json'}, {out / 'report.md'}"
                      + "".join(f", {out / name}" for name in drawn))
        if report.results and all(r.error for r in report.results):
            raise typer.Exit(1)


async def _run_with_progress(config: "EvalConfig", suites: list[str], samples: int, seed: int,
                             pair: Optional[tuple[str, str]], limits: "Limits") -> "EvalReport":
    """The evaluation, with a progress bar on stderr (gone when it ends)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from unimodel.evals.evaluate import evaluate

    total = samples * len(suites) * len(config.efforts)
    with Progress(TextColumn("eval"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True) as progress:
        bar = progress.add_task("eval", total=total)
        return await evaluate(config, suites, samples, seed, pair, limits,
                              on_result=lambda _: progress.advance(bar))
