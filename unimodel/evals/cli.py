"""``unimodel eval``: parse flags, run the evaluation, write ``results.json``, ``report.md`` and plots, print.

``register(app)`` adds the command to a typer app. The evaluation's modules are imported when the command
runs, not when the CLI starts. Bad input ends with one line on stderr and exit code 2, and so does a suite the
model cannot run: before the run, one request per suite that needs something of the endpoint (images, tool
definitions, a JSON schema: ``requirements.py``) checks it, and a refusal stops the run with one line naming
the suite, the need and the endpoint's answer, unless ``--skip-unsupported`` leaves that suite out (the report
says so; if no suite is left, exit 2 all the same). An evaluation in which every request failed, or every
request of one effort, exits 1 (its files are still written). Without ``--samples``/``--max-tokens`` the run is
the quick one of ``profiles.py``; ``--full`` the full one.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

if TYPE_CHECKING:
    from unimodel.evals.requirements import Check
    from unimodel.evals.results import EvalReport
    from unimodel.evals.runner import EvalConfig
    from unimodel.evals.sandbox import Limits

ERROR_PREFIX = "unimodel: error: "
EFFORTS = ("default", "none", "minimal", "low", "medium", "high", "xhigh")  # default: send no reasoning_effort
# kept by hand (the suites are not imported when the CLI starts); tests/unit/evals/test_requirements.py checks it
# against each suite's declared needs
SUITE_HELP = ("Suites, comma-separated: math; json (needs response_format json_schema); tools (needs tool "
              "definitions); code; vision (needs a model that takes images, e.g. tiny-random-vision). Default: all "
              "five. What a suite needs is checked with one request before the run.")


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
        url: str = typer.Option(..., help="OpenAI-compatible base URL: http://HOST:PORT/v1"),
        model: Optional[str] = typer.Option(None, help="Model name to send (default: the endpoint's only model)."),
        suite: str = typer.Option("math,json,tools,code,vision", help=SUITE_HELP, show_default=False),
        reasoning_effort: str = typer.Option("none,low,high", help="Efforts to run, comma-separated; 'default' "
                                                                   "sends no reasoning_effort."),
        samples: Optional[int] = typer.Option(None, min=1, metavar="N",
                                              help="Tasks per suite (default 5; 50 with --full)."),
        full: bool = typer.Option(False, "--full", help="The full run: 50 tasks per suite and room to think "
                                  "(max_tokens none 1024, low 2048, medium 5120, high 8192). Default: a quick "
                                  "run, minutes on a CPU (5 tasks, max_tokens none 512, low 1536, high 2048)."),
        skip_unsupported: bool = typer.Option(False, "--skip-unsupported", help="Leave out a suite whose needs the "
                                              "endpoint refuses (default: stop before the run)."),
        concurrency: int = typer.Option(8, min=1, metavar="N", help="Requests in flight."),
        out: Path = typer.Option(Path("eval-results"), help="Folder for results.json, report.md and plots."),
        seed: int = typer.Option(0, metavar="N", help="Seed of the generated tasks (same seed, same tasks)."),
        compare: Optional[str] = typer.Option(None, help="A,B: the efforts of the A/B verdict (default: the "
                                                         "first and the last)."),
        max_tokens: Optional[int] = typer.Option(None, min=1, metavar="N", help="max_tokens of every request, "
                                                 "reasoning included (default: per effort, see --full)."),
        temperature: float = typer.Option(0.0, min=0.0, max=2.0, metavar="T", help="Sampling temperature."),
        timeout_s: float = typer.Option(600.0, "--timeout", min=1.0, metavar="S",
                                        help="Seconds one request may take."),
        api_key: Optional[str] = typer.Option(None, envvar="OPENAI_API_KEY", help="Bearer key (or OPENAI_API_KEY)."),
        code_cpu_seconds: int = typer.Option(5, min=1, metavar="S",
                                             help="code suite: CPU seconds a candidate may use."),
        code_memory_mb: int = typer.Option(512, min=64, metavar="MIB",
                                           help="code suite: address space a candidate may use, MiB."),
        plots: bool = typer.Option(True, "--plots/--no-plots", help="Draw PNG plots (needs matplotlib)."),
    ) -> None:
        """Score an OpenAI-compatible endpoint on generated tasks with known answers, per reasoning effort."""
        import httpx
        from rich.console import Console

        from unimodel.evals import plots as plotting
        from unimodel.evals import profiles
        from unimodel.evals.console import render
        from unimodel.evals.evaluate import comparison_pair
        from unimodel.evals.report import markdown
        from unimodel.evals.requirements import preflight
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
            built = build_suites(suites, limits)
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
        config = EvalConfig(url=url, model=model, efforts=tuple(efforts),
                            max_tokens_by_effort=profiles.max_tokens(efforts, full, max_tokens),
                            temperature=temperature, concurrency=concurrency, timeout_s=timeout_s, api_key=api_key)
        checks = asyncio.run(preflight(built, config))
        failed = [c for c in checks if not c.ok]
        for check in failed:
            if not (skip_unsupported and check.refused):
                _fail(check.line(others=len(suites) - len(failed)))
            typer.echo(f"unimodel: skipping: {check.line()}", err=True)
        suites = [s for s in suites if s not in {c.suite for c in failed}]
        if not suites:
            _fail("no suite left to run: the endpoint refused what every one needs")
        console = Console()
        report = asyncio.run(_run_with_progress(config, suites, profiles.samples(full, samples), seed, pair, limits,
                                                checks, "full" if full else "quick"))
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
        every_failed = [e for e in config.efforts if all(r.error for r in report.results if r.effort == e)]
        if report.results and every_failed:
            raise typer.Exit(1)


async def _run_with_progress(config: "EvalConfig", suites: list[str], samples: int, seed: int,
                             pair: Optional[tuple[str, str]], limits: "Limits", checks: "list[Check]",
                             profile: str) -> "EvalReport":
    """The evaluation, with a progress bar and its ETA on stderr (gone when it ends)."""
    from rich.console import Console

    from unimodel.evals.console import progress_bar
    from unimodel.evals.evaluate import evaluate

    total = samples * len(suites) * len(config.efforts)
    with progress_bar(Console(stderr=True)) as progress:
        bar = progress.add_task("eval", total=total)
        return await evaluate(config, suites, samples, seed, pair, limits,
                              on_result=lambda _: progress.advance(bar), checks=checks, profile=profile)
