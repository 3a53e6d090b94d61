"""The scheduler on tiny-random: chunked prefill (same greedy tokens, running rows keep decoding) and the KV
memory budget (admits what fits, queues the rest until rows finish, refuses what can never fit)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.requests import gen_request

from unimodel.engines.local import LocalEngine
from unimodel.engines.local.engine import _cache_factory
from unimodel.engines.local.kv_budget import GB, KvBudget
from unimodel.engines.local.sampling import SamplingParams
from unimodel.engines.local.scheduler import BatchScheduler
from unimodel.engines.local.sequence import SequenceRequest, StopReason
from unimodel.errors import InvalidRequestError
from unimodel.protocol.events import Usage
from unimodel.protocol.openai import ChatCompletionRequest

TIMEOUT = 60.0


class Log:
    """Every delivery, in order, across sequences (the worker thread appends)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int, StopReason | None]] = []  # (name, token, reason)
        self.lock = threading.Lock()
        self.finished: dict[str, threading.Event] = {}

    def seq(self, name: str, prompt: list[int], max_new: int) -> SequenceRequest:
        self.finished[name] = threading.Event()

        def sink(tokens: list[int], reason: StopReason | None, error: BaseException | None) -> None:
            assert error is None, error
            with self.lock:
                self.events += [(name, t, reason) for t in tokens]
            if reason is not None:
                self.finished[name].set()

        return SequenceRequest(list(prompt), SamplingParams(max_new_tokens=max_new, temperature=0.0), sink)

    def tokens(self, name: str) -> list[int]:
        with self.lock:
            return [t for n, t, _ in self.events if n == name]

    def index_of_first(self, name: str) -> int:
        return next(i for i, (n, _, _) in enumerate(self.events) if n == name)

    def index_of_finish(self, name: str) -> int:
        return next(i for i, (n, _, r) in enumerate(self.events) if n == name and r is not None)

    def wait(self, *names: str) -> None:
        for name in names:
            assert self.finished[name].wait(TIMEOUT), f"{name} did not finish"


@pytest.fixture
def make_scheduler(engine: LocalEngine) -> Iterator[Any]:
    """Schedulers of their own around the session engine's model (its own scheduler stays idle)."""
    started: list[BatchScheduler] = []

    def make(**kwargs: Any) -> BatchScheduler:
        loaded = engine.loaded
        kwargs = {"max_num_seqs": 4, "max_queue": 8, "max_model_len": 1024, **kwargs}
        sched = BatchScheduler(loaded.model, device=loaded.device, new_cache=_cache_factory(loaded), **kwargs)
        sched.start()
        started.append(sched)
        return sched

    yield make
    for sched in started:
        sched.stop(TIMEOUT)


PROMPT = [(7 * i) % 900 + 20 for i in range(300)]  # 300 ids of the tiny vocabulary


def test_chunked_prefill_gives_the_same_greedy_tokens(make_scheduler: Any) -> None:
    outputs = []
    for chunk in (4096, 64, 37):
        log = Log()
        make_scheduler(max_prefill_tokens=chunk).submit(log.seq("long", PROMPT, 12))
        log.wait("long")
        outputs.append(log.tokens("long"))
    assert len(outputs[0]) == 12 and outputs[1] == outputs[0] and outputs[2] == outputs[0]


def test_running_rows_keep_decoding_while_a_long_prompt_is_prefilled(make_scheduler: Any) -> None:
    sched = make_scheduler(max_prefill_tokens=20)  # 300 tokens: 15 chunks
    log = Log()
    sched.submit(log.seq("short", PROMPT[:10], 200))
    sched.submit(log.seq("long", PROMPT, 4))
    log.wait("long", "short")
    first_long = log.index_of_first("long")
    # one decode step of the running row after every chunk: 15 chunks → at least 14 of its tokens in between
    assert log.index_of_first("short") == 0 and first_long >= 14
    assert log.tokens("long") == _alone(make_scheduler, PROMPT, 4)


def _alone(make_scheduler: Any, prompt: list[int], max_new: int) -> list[int]:
    log = Log()
    make_scheduler(max_prefill_tokens=4096).submit(log.seq("alone", prompt, max_new))
    log.wait("alone")
    return log.tokens("alone")


def test_a_budget_for_two_requests_admits_two_and_the_third_waits_for_one_to_finish(make_scheduler: Any) -> None:
    need = 40 + 24  # prompt + max new tokens: one row's reservation
    sched = make_scheduler(kv_budget=KvBudget(2 * need + need // 2, bytes_per_token=320))
    log = Log()
    for name in ("a", "b", "c"):
        sched.submit(log.seq(name, PROMPT[:40], 24))
    log.wait("a", "b", "c")
    assert [len(log.tokens(n)) for n in "abc"] == [24, 24, 24]
    assert log.index_of_first("b") < log.index_of_finish("a")  # a and b ran side by side
    assert log.index_of_first("c") > min(log.index_of_finish("a"), log.index_of_finish("b"))


def test_the_budget_counts_the_longest_row_for_every_row(make_scheduler: Any) -> None:
    """Left-padded rows all take the longest row's length: a short row beside a long one costs as much."""
    sched = make_scheduler(kv_budget=KvBudget(250, bytes_per_token=320))
    log = Log()
    sched.submit(log.seq("long", PROMPT[:100], 20))  # reserves 120; two such rows would need 240
    sched.submit(log.seq("short", PROMPT[:10], 10))  # 20 alone, but 2 × 120 = 240 beside the long one: fits
    sched.submit(log.seq("third", PROMPT[:10], 10))  # 3 × 120 = 360: waits for one of them
    log.wait("long", "short", "third")
    assert log.index_of_first("short") < log.index_of_finish("long")
    assert log.index_of_first("third") > min(log.index_of_finish("long"), log.index_of_finish("short"))


def test_a_request_bigger_than_the_whole_budget_is_refused(make_scheduler: Any) -> None:
    sched = make_scheduler(kv_budget=KvBudget(100, bytes_per_token=320))
    log = Log()
    with pytest.raises(InvalidRequestError, match="KV cache budget holds 100") as err:
        sched.submit(log.seq("big", PROMPT[:60], 41))
    assert err.value.param == "max_tokens"
    sched.submit(log.seq("fits", PROMPT[:60], 40))
    log.wait("fits")
    assert len(log.tokens("fits")) == 40


def test_bytes_per_token_are_measured_from_what_the_cache_stores(engine: LocalEngine) -> None:
    """Mistral4's MLA cache holds the compressed latent: (kv_lora_rank + qk_rope_head_dim) × layers × 4 bytes."""
    text = getattr(engine.loaded.config, "text_config", None) or engine.loaded.config
    expected = (text.kv_lora_rank + text.qk_rope_head_dim) * text.num_hidden_layers * 4  # float32
    assert engine.scheduler.kv_budget.bytes_per_token == expected
    assert engine.scheduler.kv_budget.tokens is None  # no --kv-memory-gb on CPU: no budget


async def test_the_engine_refuses_a_request_bigger_than_its_kv_memory_budget(tiny_cache_dir: Path,
                                                                           engine: LocalEngine) -> None:
    per_token = engine.scheduler.kv_budget.bytes_per_token
    small = LocalEngine("tiny-random", cache_dir=tiny_cache_dir, dtype="float32", device="cpu",
                        kv_memory_gb=100.5 * per_token / GB, max_model_len=1024)
    await small.start()
    try:
        assert small.scheduler.kv_budget.tokens == 100
        wire = ChatCompletionRequest(model="tiny-random", messages=[{"role": "user", "content": "Hello"}],
                                     max_tokens=200, temperature=0.0)
        with pytest.raises(InvalidRequestError, match="--kv-memory-gb"):
            [e async for e in small.generate(gen_request(completion_id="r", served_model="tiny-random", wire=wire,
                                                         max_tokens=200))]
        ok = [e async for e in small.generate(gen_request(completion_id="r", served_model="tiny-random",
                                                          wire=wire.model_copy(update={"max_tokens": 8}),
                                                          max_tokens=8))]
        assert any(isinstance(e, Usage) and e.completion_tokens == 8 for e in ok)
        # no max_tokens: the default is clamped to what the budget leaves beside the prompt, never a 400
        unasked = wire.model_copy(update={"max_tokens": None, "ignore_eos": True})
        events = [e async for e in small.generate(gen_request(completion_id="r", served_model="tiny-random",
                                                              wire=unasked))]
        usage = next(e for e in events if isinstance(e, Usage))
        assert usage.prompt_tokens + usage.completion_tokens == 100
    finally:
        await small.aclose()
