"""PNG plots of an evaluation: accuracy with its interval, and tokens per solved task, per effort and suite.

matplotlib is optional (the ``bench`` extra) and imported only here, when plots are drawn; figures are made
with the object API (``Figure``, Agg canvas), so nothing global such as pyplot's backend is touched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from unimodel.evals.results import EvalReport
from unimodel.evals.scoring import ALL, Score


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _grouped(ax: Any, report: EvalReport, value: Any, error: Any = None) -> None:
    efforts = report.config["efforts"]
    groups = [*report.config["suites"], ALL]
    width = 0.8 / len(efforts)
    for i, effort in enumerate(efforts):
        scores: list[Score] = [report.score(effort, g) for g in groups]
        xs = [g + (i - (len(efforts) - 1) / 2) * width for g in range(len(groups))]
        heights = [value(s) for s in scores]
        errors = None if error is None else [[max(0.0, h - lo) for h, (lo, _) in zip(heights, map(error, scores))],
                                             [max(0.0, hi - h) for h, (_, hi) in zip(heights, map(error, scores))]]
        ax.bar(xs, heights, width, yerr=errors, capsize=3, label=effort)
    ax.set_xticks(range(len(groups)), groups)
    ax.legend(title="reasoning effort", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)


def write_plots(report: EvalReport, out: Path) -> list[str]:
    """``accuracy.png`` and ``tokens_per_solved.png`` in ``out`` (the second only when something was solved:
    without data it would be an empty chart); returns the file names written. Axes start at zero."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 4.5), layout="constrained")
    ax = fig.add_subplot()
    _grouped(ax, report, lambda s: s.accuracy * 100, lambda s: (s.ci_low * 100, s.ci_high * 100))
    ax.set_ylim(0, 100)
    ax.set_ylabel("accuracy, % (95% Wilson interval)")
    ax.set_title(f"{report.config['model']}: accuracy by reasoning effort")
    fig.savefig(out / "accuracy.png", dpi=120)

    fig = Figure(figsize=(9, 4.5), layout="constrained")
    ax = fig.add_subplot()
    if not any(s.tokens_per_solved for s in report.scores):
        return ["accuracy.png"]
    _grouped(ax, report, lambda s: s.tokens_per_solved or 0.0)
    ax.set_ylim(bottom=0)
    ax.set_ylabel("completion tokens per solved task (0: none solved)")
    ax.set_title(f"{report.config['model']}: tokens per solved task by reasoning effort")
    fig.savefig(out / "tokens_per_solved.png", dpi=120)
    return ["accuracy.png", "tokens_per_solved.png"]
