"""The evaluation as a Markdown report (``report.md``) and as rich tables in the terminal.

Both show the same figures as ``results.json``: per effort over all suites, per suite and effort, and the
A/B verdict; the Markdown report also links the plots and lists the commonest errors.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Optional

from rich.console import Console
from rich.table import Table

from unimodel.evals.results import EvalReport
from unimodel.evals.scoring import ALL, Comparison, Score, Spread

PLOTS = (("accuracy.png", "accuracy per effort and suite"), ("tokens_per_solved.png", "tokens per solved task"))


def _num(value: Optional[float], digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _acc(s: Score) -> str:
    return f"{s.accuracy * 100:.1f}% [{s.ci_low * 100:.1f}, {s.ci_high * 100:.1f}]"


def _spread(value: Optional[Spread]) -> str:
    return "—" if value is None else f"{value.mean:.2f} / {value.p50:.2f} / {value.p95:.2f}"


SCORE_COLUMNS = ("effort", "suite", "accuracy (95% CI)", "solved", "errors", "reasoning tok", "answer tok",
                 "tokens / solved", "latency s mean/p50/p95", "TTFT s mean/p50/p95")
AB_COLUMNS = ("suite", "accuracy A", "accuracy B", "B − A", "A only", "B only", "p (McNemar exact)", "significant")


def _score_row(s: Score) -> list[str]:
    return [s.effort, s.suite, _acc(s), f"{s.solved}/{s.tasks}", str(s.errors), _num(s.mean_reasoning_tokens),
            _num(s.mean_answer_tokens), _num(s.tokens_per_solved), _spread(s.latency_s), _spread(s.ttft_s)]


def _ab_row(c: Comparison) -> list[str]:
    acc_a = c.a_solved / c.pairs if c.pairs else 0.0
    acc_b = c.b_solved / c.pairs if c.pairs else 0.0
    return [c.suite, f"{acc_a * 100:.1f}%", f"{acc_b * 100:.1f}%", f"{c.difference * 100:+.1f} pts",
            str(c.a_only), str(c.b_only), f"{c.p_value:.3g}", "yes" if c.significant else "no"]


def _ordered(report: EvalReport) -> tuple[list[Score], list[Score]]:
    """The rows over all suites, and the rows per suite (suite by suite, efforts in their order)."""
    overall = [s for s in report.scores if s.suite == ALL]
    position = {name: i for i, name in enumerate(report.config["suites"])}
    per_suite = sorted((s for s in report.scores if s.suite != ALL), key=lambda s: position.get(s.suite, 0))
    return overall, per_suite


def _md_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines.extend("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows)
    return lines


def markdown(report: EvalReport, plots: Sequence[str] = ()) -> str:
    cfg = report.config
    overall, per_suite = _ordered(report)
    lines = [f"# unimodel eval: {cfg['model']}", "",
             f"`{cfg['url']}` · suites {', '.join(cfg['suites'])} · {cfg['samples']} tasks per suite (seed "
             f"{cfg['seed']}) · efforts {', '.join(cfg['efforts'])} · max_tokens {cfg['max_tokens']}, temperature "
             f"{cfg['temperature']} · started {report.started_at}, {report.wall_s:.1f} s", "",
             "Accuracy: solved / tasks (a failed request counts as not solved), 95 % Wilson interval. Tokens are "
             "the endpoint's `usage`, means per request; tokens / solved = all completion tokens / tasks solved. "
             "Latency and TTFT over the requests that did not fail.", "",
             "## All suites", ""]
    lines += _md_table(SCORE_COLUMNS, [_score_row(s) for s in overall])
    lines += ["", "## By suite", ""]
    lines += _md_table(SCORE_COLUMNS, [_score_row(s) for s in per_suite])
    everything = report.comparison(ALL)
    if everything is not None:
        lines += ["", f"## A/B: {everything.b} (B) against {everything.a} (A)", "",
                  f"**Verdict:** {everything.verdict}.", "",
                  "Paired by task; McNemar's exact test on the tasks only one effort solved; significant at "
                  "p < 0.05.", ""]
        lines += _md_table(AB_COLUMNS, [_ab_row(c) for c in report.comparisons])
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{title}]({name})" for name, title in PLOTS if name in plots]
    errors = Counter(r.error for r in report.results if r.error)
    if errors:
        lines += ["", "## Errors", ""]
        lines += [f"- {count} × {text}" for text, count in errors.most_common(10)]
    return "\n".join(lines) + "\n"


TERMINAL_COLUMNS = ("suite", "effort", "accuracy", "95% CI", "solved", "errors", "reasoning", "answer",
                    "tok/solved", "latency p50", "TTFT p50")


def _terminal_row(s: Score) -> list[str]:
    return [s.suite, s.effort, f"{s.accuracy * 100:.1f}%", f"{s.ci_low * 100:.0f}–{s.ci_high * 100:.0f}%",
            f"{s.solved}/{s.tasks}", str(s.errors), _num(s.mean_reasoning_tokens), _num(s.mean_answer_tokens),
            _num(s.tokens_per_solved), "—" if s.latency_s is None else f"{s.latency_s.p50:.2f}s",
            "—" if s.ttft_s is None else f"{s.ttft_s.p50:.2f}s"]


def render(report: EvalReport, console: Optional[Console] = None) -> None:
    """The report's main figures, in the terminal (report.md has them all)."""
    console = console or Console()
    overall, per_suite = _ordered(report)
    table = Table(title=f"unimodel eval: {report.config['model']} ({report.wall_s:.1f} s)")
    for column in TERMINAL_COLUMNS:
        table.add_column(column, justify="left" if column in ("suite", "effort") else "right")
    for i, s in enumerate(per_suite + overall):
        last_of_suite = i + 1 < len(per_suite) + len(overall) and (per_suite + overall)[i + 1].suite != s.suite
        table.add_row(*_terminal_row(s), style="bold" if s.suite == ALL else None, end_section=last_of_suite)
    console.print(table)
    everything = report.comparison(ALL)
    if everything is not None:
        console.print(f"A/B ({everything.b} against {everything.a}): {everything.verdict}")
    failed = sum(r.error is not None for r in report.results)
    if failed:
        console.print(f"[yellow]{failed} of {len(report.results)} requests failed (see report.md)[/yellow]")
