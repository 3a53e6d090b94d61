"""Closed and open loops against the scripted upstream: every request is counted on the upstream's side."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Iterator

import pytest

from tests.support.scripted_upstream import Script, ScriptedUpstream
from unimodel.bench.client import Target
from unimodel.bench.loadgen import LoadPlan, RunState, run_closed, run_open, saturated, sweep_levels
from unimodel.bench.metrics import summarize
from unimodel.bench.runner import Bench, BenchSpec, run_bench
from unimodel.bench.workloads import build_workload

SCRIPTS = {
    "think": Script(mode="parsed", reasoning="Let me think about it.", content="The answer is 4.", chunk_chars=4),
    "flaky": Script(mode="parsed", content="ok then", fail_first=3, fail_status=503),
    "fails": Script(error_status=429, error_message="slow down"),
    "error-frame": Script(mode="parsed", content="abcdefghijkl" * 3, error_frame_after=3),
    "drops": Script(mode="parsed", content="abcdefghijkl" * 3, drop_after_frames=3),
    "slow": Script(mode="parsed", content="abcd" * 10, chunk_chars=2, frame_delay_s=0.03),  # ~0.6 s a request
}


@pytest.fixture()
def upstream() -> Iterator[ScriptedUpstream]:
    with ScriptedUpstream(SCRIPTS) as up:
        yield up


def state(label: str = "run", effort: str | None = None) -> RunState:
    return RunState(label=label, effort=effort, mode="closed")


async def test_closed_loop_sends_exactly_what_it_reports(upstream: ScriptedUpstream) -> None:
    run = state(effort="high")
    plan = LoadPlan(concurrency=4, requests=20, warmup=3)
    await run_closed(Target(upstream.base_url), build_workload("chat"), "think", plan, run)
    s = summarize(run.records)
    assert s.completed + s.errors == 20 and s.errors == 0
    assert len(upstream.requests) == 20 + 3  # the warm-up is sent, not measured
    assert sorted(r.index for r in run.records) == list(range(3, 23))
    assert all(body["reasoning_effort"] == "high" and body["stream"] for body in upstream.requests)
    assert run.finished and run.in_flight == 0
    assert s.tokens.reasoning_total > 0 and s.tokens.source == "usage"
    assert s.ttfa.p50 >= s.ttft.p50  # the answer comes after the thinking


async def test_a_run_leaves_the_workload_as_it_was(upstream: ScriptedUpstream) -> None:
    workload = build_workload("mixed")  # nested messages, image parts and tools, shared by every request
    before = copy.deepcopy(workload.items)
    run = state(effort="high")
    await run_closed(Target(upstream.base_url), workload, "think", LoadPlan(concurrency=2, requests=8), run)
    assert summarize(run.records).completed == 8
    assert workload.items == before


async def test_errors_are_counted_by_type_and_never_stop_the_run(upstream: ScriptedUpstream) -> None:
    target, chat = Target(upstream.base_url), build_workload("chat")
    counts = {}
    for model in ("flaky", "fails", "error-frame", "drops"):
        run = state(model)
        await run_closed(target, chat, model, LoadPlan(concurrency=1, requests=6), run)
        counts[model] = summarize(run.records)
        assert upstream.calls(model) == counts[model].completed + counts[model].errors == 6
    assert counts["flaky"].errors_by_type == {"http_503": 3} and counts["flaky"].completed == 3
    assert counts["fails"].errors_by_type == {"http_429": 6}
    assert counts["error-frame"].errors_by_type == {"stream_error": 6}
    assert counts["drops"].errors_by_type == {"connection_dropped": 6}


async def test_open_loop_roughly_keeps_its_rate(upstream: ScriptedUpstream) -> None:
    run = RunState(label="open", effort=None, mode="open", rate=40.0)
    plan = LoadPlan(mode="open", rate=40.0, duration_s=1.0, seed=3)
    await run_open(Target(upstream.base_url), build_workload("chat"), "think", plan, run)
    # Poisson arrivals at 40/s for 1 s: 40 expected (the seed fixes the draw); counts only, no timing asserts
    assert 25 <= len(run.records) <= 55
    assert len(upstream.requests) == len(run.records) and summarize(run.records).errors == 0
    assert all(r.scheduled is not None for r in run.records)


async def test_open_loop_with_a_request_count(upstream: ScriptedUpstream) -> None:
    run = RunState(label="open", effort=None, mode="open", rate=200.0)
    await run_open(Target(upstream.base_url), build_workload("chat"), "think",
                   LoadPlan(mode="open", rate=200.0, requests=15, warmup=2), run)
    assert len(run.records) == 15 and len(upstream.requests) == 17


async def test_a_stopped_run_keeps_what_it_measured(upstream: ScriptedUpstream) -> None:
    bench = Bench(BenchSpec(target=Target(upstream.base_url), model="slow", workload=build_workload("chat"),
                            plan=LoadPlan(concurrency=3, requests=1000)))
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(run_bench(bench), timeout=2.0)  # as Ctrl-C does: the run is cancelled
    run = bench.runs[0]
    assert not run.finished and run.records  # some finished, three were in flight
    assert run.in_flight == 3
    assert all(r.ok for r in run.records)


async def test_sweep_runs_rising_concurrency_per_effort(upstream: ScriptedUpstream) -> None:
    bench = Bench(BenchSpec(target=Target(upstream.base_url), model="think", workload=build_workload("chat"),
                            plan=LoadPlan(requests=8), efforts=("none", "high"), sweep=True, max_concurrency=4))
    await run_bench(bench)
    for effort in ("none", "high"):
        levels = [r.concurrency for r in bench.runs if r.effort == effort]
        assert levels and levels == [1, 2, 4][: len(levels)]
    assert len(upstream.requests) == 8 * len(bench.runs)


def test_sweep_levels_and_saturation() -> None:
    assert sweep_levels(1) == [1]
    assert sweep_levels(8) == [1, 2, 4, 8]
    assert sweep_levels(12) == [1, 2, 4, 8, 12]
    assert not saturated([10.0], [0.0])
    assert not saturated([10.0, 19.0], [0.0, 0.0])
    assert saturated([10.0, 19.0, 19.5], [0.0, 0.0, 0.0])  # +3 % over the best: saturated
    assert saturated([10.0, 19.0, 15.0], [0.0, 0.0, 0.0])
    assert saturated([10.0, 30.0], [0.0, 0.6])  # most requests failing
