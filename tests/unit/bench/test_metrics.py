"""Metrics on hand-made timing records, checked against figures computed by hand."""

from __future__ import annotations

import pytest

from unimodel.bench.client import RequestRecord
from unimodel.bench.metrics import SLOError, distribution, parse_slo, percentile, request_values, summarize


def rec(start: float, first: float | None, answer: float | None, last: float | None, end: float, *,
        chunks: int = 0, completion: int | None = None, reasoning: int | None = None,
        reasoning_chunks: int = 0, prompt: int | None = 10, error: str | None = None) -> RequestRecord:
    r = RequestRecord(index=0, kind="chat", effort=None, start=start, end=end, first_token=first,
                      first_answer=answer, last_token=last, chunk_times=[end] * chunks,
                      reasoning_chunks=reasoning_chunks, prompt_tokens=prompt,
                      usage_completion_tokens=completion, usage_reasoning_tokens=reasoning, error=error)
    return r


def test_percentile_is_nearest_rank_like_guidellm() -> None:
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 90) == 4.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 25) == 1.0
    assert percentile([float(i) for i in range(1, 101)], 99) == 99.0
    assert percentile([5.0], 99) == 5.0
    assert percentile([], 50) is None


def test_weighted_percentile_counts_each_value_by_its_weight() -> None:
    # 1.0 carries 3 of 4 units of weight: it is the median and p75, 10.0 is p90 and p99
    assert percentile([10.0, 1.0], 50, [1.0, 3.0]) == 1.0
    assert percentile([10.0, 1.0], 75, [1.0, 3.0]) == 1.0
    assert percentile([10.0, 1.0], 90, [1.0, 3.0]) == 10.0
    assert percentile([10.0, 1.0], 50, [1.0, 0.0]) == 10.0  # zero weight: left out


def test_distribution_reports_milliseconds_and_a_weighted_mean() -> None:
    d = distribution([0.010, 0.020], [1.0, 3.0])
    assert d.count == 2
    assert d.p50 == pytest.approx(20.0) and d.p99 == pytest.approx(20.0)
    assert d.mean == pytest.approx((10 * 1 + 20 * 3) / 4)
    assert d.min == pytest.approx(10.0) and d.max == pytest.approx(20.0)
    empty = distribution([])
    assert empty.count == 0 and empty.p50 is None and empty.mean is None


def test_one_request_follows_guidellm_definitions() -> None:
    # sent at 0, thinking from 0.1, answer from 0.3, last token at 0.5, [DONE] at 0.6; 5 tokens by usage
    values = request_values(rec(0.0, 0.1, 0.3, 0.5, 0.6, chunks=5, completion=5))
    assert values["ttft"] == pytest.approx((0.1, 1.0))
    assert values["ttfa"] == pytest.approx((0.3, 1.0))
    assert values["itl"] == pytest.approx(((0.5 - 0.1) / 4, 4.0))  # (last - first) / (out - 1), weight out - 1
    assert values["tpot"] == pytest.approx((0.5 / 5, 5.0))  # (last - start) / out, weight out
    assert values["e2e"] == pytest.approx((0.6, 1.0))


def test_a_request_without_answer_or_with_one_token_lacks_those_metrics() -> None:
    values = request_values(rec(0.0, 0.1, None, 0.1, 0.2, chunks=1, completion=1))
    assert "ttfa" not in values and "itl" not in values
    assert values["tpot"] == pytest.approx((0.1, 1.0))


def test_summary_counts_throughput_tokens_and_errors() -> None:
    records = [
        rec(0.0, 0.1, 0.2, 0.9, 1.0, chunks=10, completion=10, reasoning=4),
        rec(0.5, 0.7, 0.8, 1.9, 2.0, chunks=20, completion=20, reasoning=6),
        rec(1.0, None, None, None, 1.1, error="http_503"),
        rec(1.2, None, None, None, 1.3, error="timeout"),
        rec(1.4, None, None, None, 1.5, error="http_503"),
    ]
    s = summarize(records)
    assert (s.completed, s.errors, s.incomplete) == (2, 3, 0)
    assert s.errors_by_type == {"http_503": 2, "timeout": 1}
    assert s.duration_s == pytest.approx(2.0)  # first send 0.0 to last end 2.0
    assert s.throughput.requests_per_s == pytest.approx(1.0)
    assert s.throughput.output_tokens_per_s == pytest.approx(15.0)
    assert s.ttft.p50 == pytest.approx(100.0) and s.ttft.p99 == pytest.approx(200.0)
    assert s.ttfa.p50 == pytest.approx(200.0) and s.ttfa.p90 == pytest.approx(300.0)
    assert s.e2e.p50 == pytest.approx(1000.0) and s.e2e.p95 == pytest.approx(1500.0)
    # itl: (0.8/9 weight 9) and (1.2/19 weight 19): the per-token mean is the summed time over the tokens
    assert s.itl.mean == pytest.approx(1e3 * (0.8 + 1.2) / (9 + 19))
    assert s.tokens.output_total == 30 and s.tokens.reasoning_total == 10 and s.tokens.answer_total == 20
    assert s.tokens.prompt_mean == pytest.approx(10.0)
    assert (s.tokens.source, s.tokens.reasoning_source) == ("usage", "usage")
    assert s.mean_concurrency == pytest.approx((1.0 + 1.5 + 0.1 + 0.1 + 0.1) / 2.0)
    assert s.slo is None and s.throughput.goodput_requests_per_s is None


def test_tokens_are_counted_from_chunks_when_the_server_reports_no_usage() -> None:
    counted = rec(0.0, 0.1, 0.2, 0.5, 0.6, chunks=7, reasoning_chunks=3)
    assert counted.output_tokens == 7 and counted.reasoning_tokens == 3 and counted.answer_tokens == 4
    assert counted.output_tokens_source == "counted"
    s = summarize([counted, rec(0.0, 0.1, 0.2, 0.5, 0.6, chunks=7, completion=9, reasoning=2)])
    assert s.tokens.source == "mixed" and s.tokens.output_total == 16


def test_goodput_counts_requests_within_every_slo() -> None:
    records = [
        rec(0.0, 0.1, 0.2, 0.9, 1.0, chunks=10, completion=10),  # within both
        rec(0.0, 0.6, 0.7, 0.9, 1.0, chunks=10, completion=10),  # ttft too slow
        rec(0.0, 0.1, None, 0.9, 1.0, chunks=10, completion=10),  # never answered: fails the ttfa limit
        rec(0.0, None, None, None, 1.0, error="http_500"),
    ]
    s = summarize(records, {"ttft": 0.5, "ttfa": 0.5})
    assert s.slo is not None
    assert s.slo.good == 1 and s.slo.good_fraction == pytest.approx(0.25)
    assert s.slo.limits_ms == {"ttft": 500.0, "ttfa": 500.0}
    assert s.throughput.goodput_requests_per_s == pytest.approx(1.0)


def test_summary_of_nothing_is_zeros() -> None:
    s = summarize([])
    assert (s.completed, s.errors, s.duration_s, s.throughput.requests_per_s) == (0, 0, 0.0, 0.0)
    assert s.ttft.count == 0 and s.tokens.source == "none"


def test_parse_slo_takes_units() -> None:
    assert parse_slo("ttft=500ms,e2e=10s") == {"ttft": 0.5, "e2e": 10.0}
    assert parse_slo("itl=20") == pytest.approx({"itl": 0.02})  # a bare number is milliseconds
    assert parse_slo(" TTFA = 1.5s , tpot=1m") == {"ttfa": 1.5, "tpot": 60.0}
    for bad in ("latency=1s", "ttft", "ttft=fast", "ttft=-1s", "ttft=0ms"):
        with pytest.raises(SLOError):
            parse_slo(bad)
