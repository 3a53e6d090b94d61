"""What the deploy examples ask of /metrics: the metric and label names in their PromQL, and the files.

A small reader, not a PromQL parser: strings, durations, grouping clauses and label matchers are taken out,
and every identifier left that is no function or keyword is a metric name. Stricter than it needs to be (an
unknown function reads as a missing metric, and the test names it), which is the safe side for a test.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"

FUNCTIONS = frozenset("""
    sum min max avg count stddev stdvar topk bottomk quantile count_values group
    rate irate increase delta idelta deriv predict_linear histogram_quantile resets changes
    abs absent absent_over_time ceil floor round clamp clamp_max clamp_min sqrt exp ln log2 log10
    vector scalar time timestamp label_replace label_join sort sort_desc
    avg_over_time min_over_time max_over_time sum_over_time count_over_time last_over_time quantile_over_time
    and or unless by without on ignoring group_left group_right bool offset inf nan
""".split())
#: labels Prometheus adds to every scraped series (the target's), not the app
TARGET_LABELS = frozenset({"job", "instance", "namespace", "pod"})
#: the suffixes a histogram's or a counter's samples add to its family's name
SUFFIXES = ("_bucket", "_sum", "_count", "_total", "_created")

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{([^{}]*)\}")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
_NUMBER_UNIT = re.compile(r"\b\d+(\.\d+)?([eE][+-]?\d+)?[smhdwy]?\b")


def parse(expr: str) -> tuple[set[str], dict[str, set[str]], set[str]]:
    """``(metric names, label names matched per metric, label names grouped by)`` of one expression."""
    text = _STRING.sub('""', expr)
    matched: dict[str, set[str]] = {}
    for m in re.finditer(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^{}]*)\}", text):
        matched.setdefault(m.group(1), set()).update(_MATCHER.findall(m.group(2)))
    grouped = {label.strip() for m in _GROUPING.finditer(text) for label in m.group(2).split(",") if label.strip()}
    text = _GROUPING.sub(" ", text)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _NUMBER_UNIT.sub(" ", text)
    metrics = {name for name in _IDENT.findall(text) if name not in FUNCTIONS}
    return metrics, matched, grouped


def family_of(name: str, families: dict[str, set[str]]) -> str | None:
    """The scraped family a PromQL name reads (``x_bucket`` reads histogram ``x``, ``y_total`` counter ``y``)."""
    if name in families:
        return name
    for suffix in SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in families:
            return name[: -len(suffix)]
    return None


def problems(expr: str, families: dict[str, set[str]]) -> list[str]:
    """What ``expr`` names that the scrape (family name → its label names) does not have."""
    metrics, matched, grouped = parse(expr)
    out = []
    labels: set[str] = set(TARGET_LABELS) | {"le"}
    for name in sorted(metrics):
        family = family_of(name, families)
        if family is None:
            out.append(f"metric {name} is not in /metrics")
            continue
        labels |= families[family]
        unknown = matched.get(name, set()) - families[family] - TARGET_LABELS - {"__name__"}
        out += [f"{name} has no label {label}" for label in sorted(unknown)]
    out += [f"no metric of the expression has the label {label}" for label in sorted(grouped - labels)]
    return out


def documents(relative: str) -> list[dict[str, Any]]:
    """The YAML documents of a file under ``deploy/``."""
    with open(DEPLOY / relative, encoding="utf-8") as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc is not None]


def alert_rules() -> Iterator[dict[str, Any]]:
    for group in documents("prometheus/alerts.yaml")[0]["groups"]:
        yield from group["rules"]


def scaled_object() -> dict[str, Any]:
    (doc,) = documents("keda/scaledobject.yaml")
    return doc


def queries() -> dict[str, str]:
    """Every PromQL expression of the deploy examples, by where it is."""
    out = {f"alert {rule['alert']}": rule["expr"] for rule in alert_rules()}
    for i, trigger in enumerate(scaled_object()["spec"]["triggers"]):
        out[f"KEDA trigger {trigger.get('name', i)}"] = trigger["metadata"]["query"]
    return out
