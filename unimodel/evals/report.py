"""The evaluation as a Markdown report (``report.md``); the terminal's shorter view is ``console.py``.

It shows the same figures as ``results.json``: the suites with what each needs of the endpoint and what the
preflight request found, per effort over all suites, per suite and effort, the A/B verdict (or why there is
none), the plots, and the failures by effort and type.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

from unimodel.evals import profiles
from unimodel.evals.requirements import describe
from unimodel.evals.results import EvalReport
from unimodel.evals.scoring import ALL, Comparison, Score, Spread
from unimodel.evals.tasks import build_suites

PLOTS = (("accuracy.png", "accuracy per effort and suite"), ("tokens_per_solved.png", "tokens per solved task"))


def _num(value: Optional[float], digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _acc(s: Score) -> str:
    return f"{s.accuracy * 100:.1f}% [{s.ci_low * 100:.1f}, {s.ci_high * 100:.1f}]"


def _spread(value: Optional[Spread]) -> str:
    return "—" if value is None else f"{value.mean:.2f} / {value.p50:.2f} / {value.p95:.2f}"


SCORE_COLUMNS = ("effort", "suite", "accuracy (95% CI)", "solved", "errors", "cut at max_tokens", "reasoning tok",
                 "answer tok", "tokens / solved", "latency s mean/p50/p95", "TTFT s mean/p50/p95")
AB_COLUMNS = ("suite", "accuracy A", "accuracy B", "B − A", "A only", "B only", "A failed", "B failed",
              "p (McNemar exact)", "significant")


def _score_row(s: Score) -> list[str]:
    return [s.effort, s.suite, _acc(s), f"{s.solved}/{s.tasks}", str(s.errors), str(s.truncated),
            _num(s.mean_reasoning_tokens), _num(s.mean_answer_tokens), _num(s.tokens_per_solved),
            _spread(s.latency_s), _spread(s.ttft_s)]


def _ab_row(c: Comparison) -> list[str]:
    acc_a = c.a_solved / c.pairs if c.pairs else 0.0
    acc_b = c.b_solved / c.pairs if c.pairs else 0.0
    return [c.suite, f"{acc_a * 100:.1f}%", f"{acc_b * 100:.1f}%", f"{c.difference * 100:+.1f} pts",
            str(c.a_only), str(c.b_only), str(c.a_errors), str(c.b_errors),
            "—" if c.p_value is None else f"{c.p_value:.3g}",
            ("yes" if c.significant else "no") if c.decided else "no verdict"]


def _suites(report: EvalReport) -> list[str]:
    """Each suite: what it asks, what it needs of the endpoint, what the preflight request found."""
    checks = {c.suite: c for c in report.checks}
    names = [*report.config["suites"], *(c.suite for c in report.skipped)]
    rows = []
    for name, suite in build_suites(names).items():
        check = checks.get(name)
        found = "—" if check is None else ("accepted" if check.ok else f"skipped: answered {check.answer}")
        rows.append([name, suite.description, describe(suite.needs) if suite.needs else "—", found])
    return _md_table(("suite", "what it asks", "needs", "preflight request"), rows)


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
             f"{cfg['seed']}, {cfg.get('run', 'custom')} run) · efforts {', '.join(cfg['efforts'])} · max_tokens "
             f"{profiles.summary(cfg['max_tokens'])}, temperature {cfg['temperature']} · started "
             f"{report.started_at}, {report.wall_s:.1f} s", "",
             "Accuracy: solved / tasks (a failed request counts as not solved), 95 % Wilson interval. Tokens are "
             "the endpoint's `usage`, means per request; tokens / solved = all completion tokens / tasks solved. "
             "Cut at max_tokens: answers that ended with `finish_reason: length`, scored as they stand. "
             "Latency and TTFT over the requests that did not fail.", "",
             "## Suites", ""]
    lines += _suites(report)
    lines += ["", "## All suites", ""]
    lines += _md_table(SCORE_COLUMNS, [_score_row(s) for s in overall])
    lines += ["", "## By suite", ""]
    lines += _md_table(SCORE_COLUMNS, [_score_row(s) for s in per_suite])
    everything = report.comparison(ALL)
    if everything is not None:
        lines += ["", f"## A/B: {everything.b} (B) against {everything.a} (A)", "",
                  f"**Verdict:** {everything.verdict}.", "",
                  "Paired by task; McNemar's exact test on the tasks only one effort solved; significant at "
                  "p < 0.05. No verdict where every request of one effort failed (see Errors).", ""]
        lines += _md_table(AB_COLUMNS, [_ab_row(c) for c in report.comparisons])
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{title}]({name})" for name, title in PLOTS if name in plots]
    groups = report.errors
    if groups:
        lines += ["", "## Errors", "", "By effort and type, with one sample message each.", ""]
        lines += _md_table(("effort", "type", "requests", "suites", "sample"),
                           [[g.effort, g.type, str(g.count), ", ".join(g.suites), g.sample] for g in groups])
    return "\n".join(lines) + "\n"
