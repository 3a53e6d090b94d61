"""The pool's parts without a network: reading vLLM's metrics, prompt blocks and the prefix table, the
admission queue's order, and the balanced choice."""

from __future__ import annotations

import asyncio
import random

import pytest

from unimodel.engines.base import GenerationRequest
from unimodel.engines.pool.admission import AdmissionQueue, PoolSaturatedError
from unimodel.engines.pool.choose import choose_balanced
from unimodel.engines.pool.load import ReplicaLoad, parse_vllm_metrics
from unimodel.engines.pool.prefix import AffinityTable, PrefixIndex, prompt_blocks
from unimodel.engines.pool.replica import Replica, Saturation
from unimodel.errors import OverloadedError
from unimodel.protocol.openai import Message, RawPrompt

PAGE = b"""# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_running{engine="1",model_name="m"} 2.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 4.0
vllm:num_requests_waiting{engine="1",model_name="m"} 1.0
vllm:num_requests_waiting_by_reason{engine="0",model_name="m",reason="capacity"} 99.0
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.5
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.001",model_name="m"} 0.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="m"} 12.5
"""


def test_metrics_sum_the_queues_and_take_the_fullest_cache() -> None:
    load = parse_vllm_metrics(PAGE, at=7.0)
    assert (load.waiting, load.running, load.kv_usage, load.at) == (5.0, 5.0, 0.5, 7.0)


def test_metrics_older_names_odd_labels_and_junk() -> None:
    page = (b'vllm:gpu_cache_usage_perc{model_name="a}b \\" c"} 0.75 1700000000\n'
            b"vllm:num_requests_waiting NaN\nvllm:num_requests_running -3\nvllm:num_requests_waiting{x=\"1\"} oops\n"
            b"vllm:kv_cache_usage_perc 1.5\n")
    load = parse_vllm_metrics(page, at=0.0)
    assert load.kv_usage == 1.0 and load.waiting is None and load.running is None
    assert not parse_vllm_metrics(b"llama_requests_processing 3\n", at=0.0).known


def _request(*texts: str, raw: str | None = None) -> GenerationRequest:
    messages = [Message(role="user" if i % 2 == 0 else "assistant", content=t) for i, t in enumerate(texts)]
    return GenerationRequest(completion_id="chatcmpl-1", served_model="m", messages=messages,
                             raw_prompt=RawPrompt(raw) if raw is not None else None)


def test_prompt_blocks_share_a_conversations_prefix() -> None:
    doc = "the shared document " * 100
    turn1 = prompt_blocks(_request(doc, ), 64, 1000)
    turn2 = prompt_blocks(_request(doc, "an answer", "another question"), 64, 1000)
    other = prompt_blocks(_request("something else " + doc), 64, 1000)
    full = len(doc.encode()) // 64  # blocks wholly inside the first message are the same in both turns
    assert turn2[:full - 1] == turn1[:full - 1]
    assert other[0] != turn1[0]
    assert len(prompt_blocks(_request(doc * 50), 64, 10)) == 10  # only the leading blocks count
    assert prompt_blocks(_request(raw="x" * 130), 64, 10).__len__() == 3


def test_prefix_index_matches_leading_blocks_and_forgets_the_oldest() -> None:
    index = PrefixIndex(capacity=4)
    index.add([1, 2, 3])
    assert index.match([1, 2, 3, 4]) == 3 and index.match([2, 3]) == 2 and index.match([9, 1]) == 0
    index.add([5, 6])  # 5 blocks for 4 places: 1, the oldest, goes
    assert index.match([1, 2]) == 0 and len(index) == 4
    table = AffinityTable(capacity=2)
    table.put("a", "r1"), table.put("b", "r2"), table.put("c", "r1")
    assert table.get("a") is None and table.get("c") == "r1"
    table.forget("r1")
    assert table.get("c") is None and table.get("b") == "r2"


async def test_admission_serves_lower_ranks_first_then_tenants_fairly() -> None:
    queue = AdmissionQueue(max_waiting=100, timeout_s=10)
    order: list[str] = []

    async def wait(label: str, rank: int, tenant: str) -> None:
        await queue.wait(rank, tenant)
        order.append(label)

    tasks = [asyncio.create_task(wait(f"heavy{i}", 1, "heavy")) for i in range(5)]
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(wait("light", 1, "light")))
    tasks.append(asyncio.create_task(wait("urgent", 0, "heavy")))
    await asyncio.sleep(0)
    while queue.admit_next():
        await asyncio.sleep(0)
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    # the interactive one first; the light tenant's one request right after the heavy tenant's first
    assert order[0] == "urgent"
    assert order.index("light") <= 2
    assert order[-1] == "heavy4"


async def test_admission_is_bounded_in_size_and_time_and_leaves_on_cancel() -> None:
    queue = AdmissionQueue(max_waiting=1, timeout_s=0.05)
    with pytest.raises(PoolSaturatedError) as info:
        await queue.wait(0, "a")
    assert info.value.status_code == 503 and info.value.code == "pool_saturated" and len(queue) == 0
    queue = AdmissionQueue(max_waiting=1, timeout_s=10)
    first = asyncio.create_task(queue.wait(0, "a"))
    await asyncio.sleep(0)
    with pytest.raises(OverloadedError) as full:
        await queue.wait(0, "b")
    assert full.value.code == "queue_full"
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert len(queue) == 0 and not queue.admit_next()  # the one that left is not admitted


class _Engine:
    def is_ready(self) -> bool:
        return True


class _Breaker:
    state = "closed"


def _replica(name: str, running: float = 0, waiting: float = 0, kv: float = 0.0) -> Replica:
    replica = Replica(name, f"http://{name}/v1", _Engine(), _Breaker(), PrefixIndex(1000))  # type: ignore[arg-type]
    replica.load = ReplicaLoad(waiting, running, kv, at=0.0)
    return replica


def test_the_prefix_wins_unless_its_replica_is_far_behind() -> None:
    rng = random.Random(1)
    a, b = _replica("a", running=2), _replica("b", running=1)
    a.prefix.add([1, 2, 3])
    assert choose_balanced([a, b], [1, 2, 3, 4], None, slack=4, rng=rng) is a
    a.load = ReplicaLoad(0, 9, 0.0, at=0.0)  # 8 more than b, beyond the slack: affinity does not count
    assert choose_balanced([a, b], [1, 2, 3, 4], None, slack=4, rng=rng) is b
    assert choose_balanced([a, b], [], b, slack=4, rng=rng) is b  # the session's replica


def test_without_a_prefix_the_lighter_of_two_takes_it() -> None:
    rng = random.Random(3)
    light, heavy = _replica("light", running=0), _replica("heavy", running=5)
    assert all(choose_balanced([light, heavy], [7], None, slack=4, rng=rng) is light for _ in range(20))


def test_saturation_counts_stale_metrics_as_full() -> None:
    limits = Saturation(max_waiting=4, max_kv_usage=0.9, stale_s=2.0)
    replica = _replica("r", waiting=2, kv=0.45)
    assert replica.saturation(now=1.0, limits=limits) == 0.5 and not replica.saturated(1.0, limits)
    assert replica.saturated(now=2.5, limits=limits)  # read 2.5 s ago: two reads missed
    replica.no_metrics = True  # a server without /metrics is judged by our own count
    assert not replica.saturated(now=100.0, limits=limits)
    assert _replica("full", kv=0.9).saturated(0.0, limits)
