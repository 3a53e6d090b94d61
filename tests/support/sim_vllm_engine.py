"""The engine of the simulated vLLM replica (``sim_vllm.py``): a scheduler and a paged KV cache with prefix
caching, modelled on vLLM v1's, with made-up timings, so that a pool of replicas can be measured on a machine
without GPUs.

What is modelled, and how it follows vLLM:

- **Tokens.** The rendered prompt is each message's role and text content concatenated in order (no
  separators); a token is 4 characters of it (the last may be shorter). The answer is ``max_tokens`` words
  (``ignore_eos``: always that many), one word a token.
- **KV cache** (vLLM's ``BlockPool``). ``num_blocks`` blocks of ``block_size`` tokens. Each full block of the
  prompt is named by a chained hash (its tokens and the previous block's hash), so a block is reused only
  after the same prefix. A request looks its prompt's blocks up in order and stops at the first miss; at
  most ``(prompt_tokens - 1) // block_size`` blocks hit, as vLLM always recomputes the last prompt token.
  Unreferenced blocks sit in a free queue, least recently used first; allocating takes the front one and
  forgets its hash (eviction). A finished request's blocks go back to the queue's end, its last block first
  (so a prefix's tail is evicted before its head, as vLLM does); blocks without a hash go to the front.
  ``kv_cache_usage_perc`` is ``1 - free/num_blocks``; cached blocks nobody uses count as free, as in vLLM.
- **Simplification.** A request holds blocks for its prompt *and* its ``max_tokens`` from admission (vLLM
  allocates as it decodes and may preempt): nothing is ever preempted here. Only prompt blocks are cached:
  vLLM caches the blocks of the generated answer too, so a multi-turn prompt hits a little more there.
- **Scheduler** (vLLM's ``Scheduler.schedule``). At most ``max_num_seqs`` requests run; the others wait,
  first come first served, or by ``priority`` (lower first, then arrival) under the ``priority`` policy. The
  head of the queue is admitted when a slot and its blocks are free; it blocks those behind it otherwise.
  Each step has a budget of ``max_num_batched_tokens``: every decoding request takes one token, prefills take
  the rest in chunks (chunked prefill). A step lasts ``decode_ms + prefill tokens × prefill_ms_per_token``;
  a request's first token comes out in the step its prefill ends, then one token a step.
- **Counters** as vLLM's ``/metrics`` has them: prefix cache queries and hits in tokens (counted at
  admission), prompt and generation tokens, finished requests, time to first token and end-to-end latency.

Written by hand because it *is* the thing being simulated; nothing here does I/O besides ``asyncio.sleep``.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

CHARS_PER_TOKEN = 4
WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo",
         "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango")
DONE = None  # what a request's queue gets after its last token


def render(messages: list[dict[str, Any]]) -> str:
    """The prompt the simulator tokenizes: role and text content of each message, in order."""
    out: list[str] = []
    for message in messages:
        out.append(str(message.get("role", "")))
        content = message.get("content")
        if isinstance(content, str):
            out.append(content)
        elif isinstance(content, list):
            out.extend(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return "".join(out)


def tokenize(text: str) -> list[str]:
    return [text[i:i + CHARS_PER_TOKEN] for i in range(0, len(text), CHARS_PER_TOKEN)]


def word(i: int) -> str:
    """The ``i``-th token of every answer (deterministic)."""
    return ("" if i == 0 else " ") + WORDS[i % len(WORDS)]


@dataclass
class SimConfig:
    model: str = "sim-model"
    max_model_len: int = 32768
    max_num_seqs: int = 8
    max_num_batched_tokens: int = 8192
    max_num_queued_reqs: Optional[int] = None  # vLLM's --max-num-queued-reqs: waiting + running, else 503
    scheduling_policy: Literal["fcfs", "priority"] = "fcfs"
    block_size: int = 16
    num_blocks: int = 4096
    prefill_ms_per_token: float = 0.05
    decode_ms: float = 10.0


@dataclass
class SimRequest:
    prompt_tokens: list[str]
    max_tokens: int
    priority: int = 0
    arrival: float = field(default_factory=time.monotonic)
    tokens: "asyncio.Queue[Optional[str]]" = field(default_factory=asyncio.Queue)
    cached_tokens: int = 0
    prefill_left: int = 0
    generated: int = 0
    blocks: list[int] = field(default_factory=list)
    first_token_at: Optional[float] = None
    finished: bool = False


class KvCache:
    """vLLM's block pool, reduced to what prefix caching needs: hashes, reference counts, the LRU free queue."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        self.num_blocks, self.block_size = num_blocks, block_size
        self.free: OrderedDict[int, None] = OrderedDict((b, None) for b in range(num_blocks))
        self.refs = [0] * num_blocks
        self.hash_of: dict[int, int] = {}
        self.block_of: dict[int, int] = {}

    def chain(self, tokens: list[str]) -> list[int]:
        """The chained hashes of the full blocks that may hit (the last prompt token is always computed)."""
        hashes, parent, bs = [], 0, self.block_size
        for i in range((len(tokens) - 1) // bs):
            parent = hash((parent, tuple(tokens[i * bs:(i + 1) * bs])))
            hashes.append(parent)
        return hashes

    def allocate(self, request: SimRequest) -> bool:
        """Take the request's cached prefix and fresh blocks for the rest of its length; False if they don't fit."""
        hashes = self.chain(request.prompt_tokens)
        hits: list[int] = []
        for h in hashes:
            block = self.block_of.get(h)
            if block is None:
                break
            hits.append(block)
        total = -(-(len(request.prompt_tokens) + request.max_tokens) // self.block_size)
        fresh = total - len(hits)
        if fresh > len(self.free) - sum(1 for b in hits if self.refs[b] == 0):
            return False
        for block in hits:
            if self.refs[block] == 0:
                del self.free[block]
            self.refs[block] += 1
        new: list[int] = []
        for _ in range(fresh):
            block, _ = self.free.popitem(last=False)  # the least recently used: evict what it held
            old = self.hash_of.pop(block, None)
            if old is not None:
                del self.block_of[old]
            self.refs[block] = 1
            new.append(block)
        for h, block in zip(hashes[len(hits):], new):  # name the prompt's new full blocks (cached from now on)
            self.hash_of[block], self.block_of[h] = h, block
        request.blocks = hits + new
        request.cached_tokens = len(hits) * self.block_size
        return True

    def release(self, request: SimRequest) -> None:
        for block in reversed(request.blocks):
            self.refs[block] -= 1
            if self.refs[block] == 0:
                self.free[block] = None
                if block not in self.hash_of:
                    self.free.move_to_end(block, last=False)  # holds nothing worth keeping: reused first
        request.blocks = []

    def usage(self) -> float:
        return 1.0 - len(self.free) / self.num_blocks


class QueueFull(Exception):
    """More requests in flight than ``max_num_queued_reqs``: vLLM answers 503."""


class SimEngine:
    """The scheduler loop; ``submit`` a request, read its tokens from ``request.tokens`` until ``DONE``."""

    def __init__(self, config: SimConfig, stats: Any) -> None:
        self.config = config
        self.stats = stats  # sim_vllm.Stats: the Prometheus counters and histograms
        self.kv = KvCache(config.num_blocks, config.block_size)
        self.running: list[SimRequest] = []
        self._fifo: deque[SimRequest] = deque()
        self._heap: list[tuple[int, int, SimRequest]] = []
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._task: Optional[asyncio.Task[None]] = None
        self.tokens_sent = 0

    @property
    def num_waiting(self) -> int:
        return len(self._fifo) + len(self._heap)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def submit(self, request: SimRequest) -> None:
        limit = self.config.max_num_queued_reqs
        if limit is not None and len(self.running) + self.num_waiting >= limit:
            raise QueueFull()
        if self.config.scheduling_policy == "priority":
            heapq.heappush(self._heap, (request.priority, next(self._seq), request))
        else:
            self._fifo.append(request)
        self._wake.set()

    def abort(self, request: SimRequest) -> None:
        """The client left (or the request ended): free its slot and blocks."""
        if request.finished:
            return
        request.finished = True
        if request in self.running:
            self.running.remove(request)
            self.kv.release(request)
        elif request in self._fifo:
            self._fifo.remove(request)
        else:
            self._heap = [item for item in self._heap if item[2] is not request]
            heapq.heapify(self._heap)

    def _head(self) -> Optional[SimRequest]:
        while self._fifo and self._fifo[0].finished:
            self._fifo.popleft()
        while self._heap and self._heap[0][2].finished:
            heapq.heappop(self._heap)
        return self._fifo[0] if self._fifo else (self._heap[0][2] if self._heap else None)

    def _admit(self) -> None:
        while len(self.running) < self.config.max_num_seqs:
            head = self._head()
            if head is None or not self.kv.allocate(head):
                return  # the head waits for blocks, and everyone behind it (vLLM's FCFS/priority queue)
            if self._fifo:
                self._fifo.popleft()
            else:
                heapq.heappop(self._heap)
            head.prefill_left = len(head.prompt_tokens) - head.cached_tokens
            self.stats.admitted(head)
            self.running.append(head)

    async def _loop(self) -> None:
        cfg = self.config
        while True:
            self._admit()
            if not self.running:
                self._wake.clear()
                await self._wake.wait()
                continue
            budget, prefill_tokens, stepped = cfg.max_num_batched_tokens, 0, []
            for request in self.running:  # decodes first, one token each, then chunks of prefill
                if request.prefill_left == 0:
                    budget -= 1
                    stepped.append(request)
            for request in self.running:
                if request.prefill_left > 0 and budget > 0:
                    chunk = min(request.prefill_left, budget)
                    budget -= chunk
                    prefill_tokens += chunk
                    request.prefill_left -= chunk
                    if request.prefill_left == 0:
                        stepped.append(request)
            await asyncio.sleep((cfg.decode_ms + prefill_tokens * cfg.prefill_ms_per_token) / 1000)
            now = time.monotonic()
            for request in stepped:
                if request.finished:  # aborted during the step
                    continue
                if request.first_token_at is None:
                    request.first_token_at = now
                request.tokens.put_nowait(word(request.generated))
                request.generated += 1
                self.tokens_sent += 1
                if request.generated >= request.max_tokens:
                    request.finished = True
                    self.running.remove(request)
                    self.kv.release(request)
                    self.stats.finished(request, now)
                    request.tokens.put_nowait(DONE)
