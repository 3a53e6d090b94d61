"""Which replica takes a request: the balanced score, or plain round robin.

**Balanced** (the default), among the usable replicas that are not saturated:

- *prefix*: the share of the prompt's leading blocks the replica was sent recently (:mod:`.prefix`), or 1 for
  the replica that served the request's session last (its ``prompt_cache_key``, the answer it continues, its
  end user) — but only on a replica holding at most ``slack`` more requests than the least busy one, so
  affinity never piles requests onto a replica that is already behind (SGLang's load thresholds);
- *load*: how few requests it holds (running and waiting), against the busiest and the least busy candidate;
- *kv*: how much of its KV cache is free.

The score is ``3·prefix + 2·load + 1·kv`` (llm-d's default weights favour the prefix the same way: a cache hit
saves a whole prefill, a slightly longer queue costs one step per request ahead). When no candidate holds any
of the prompt, the load alone decides: the least busy replica takes it. A replica's load is its last metrics
plus this gateway's own requests sent and ended since (:mod:`.replica`), so a burst does not pile onto the
replica that looked idle at the last read. When several are equally busy, nothing decides: two of them are
drawn at random and the one with more free KV (then fewer of ours in flight) takes it (power of two choices,
Mitzenmacher 2001), so gateways that share the same view do not all pick the same one. Measured on the
no-reuse workload of ``benchmarks/pool.py``, power of two choices over every candidate came out 1 to 7 %
below round robin (a random pair misses the least busy replica); the least busy one does not.

**Round robin** ignores load and prefixes: each usable replica in turn, as a Kubernetes Service does; it is
the baseline the balanced policy is measured against (``benchmarks/pool.py``).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Optional

from unimodel.engines.pool.replica import Replica

PREFIX_WEIGHT, LOAD_WEIGHT, KV_WEIGHT = 3.0, 2.0, 1.0


def choose_balanced(candidates: Sequence[Replica], blocks: Sequence[int], session: Optional[Replica],
                    slack: float, rng: random.Random) -> Replica:
    """The best of ``candidates`` (at least one) for a prompt of ``blocks`` whose session was last on
    ``session`` (or ``None``)."""
    if len(candidates) == 1:
        return candidates[0]
    busy = [r.busy() for r in candidates]
    least, most = min(busy), max(busy)
    spread = most - least
    prefixes = [0.0] * len(candidates)
    any_prefix = False
    if blocks or session is not None:
        for i, replica in enumerate(candidates):
            if busy[i] > least + slack:
                continue  # too far behind for affinity to count
            share = 1.0 if replica is session else (replica.prefix.match(blocks) / len(blocks) if blocks else 0.0)
            if share > 0.0:
                prefixes[i] = share
                any_prefix = True
    if not any_prefix:  # the load alone decides: the least busy, and between equals two drawn at random
        tied = [i for i in range(len(candidates)) if busy[i] < least + 1.0]
        if len(tied) == 1:
            return candidates[tied[0]]
        a, b = rng.sample(tied, 2)
        return candidates[a] if _lighter(candidates[a], busy[a], candidates[b], busy[b]) else candidates[b]
    best_i, best_score = 0, -1.0
    for i, replica in enumerate(candidates):
        load = 1.0 if spread <= 0 else 1.0 - (busy[i] - least) / spread
        score = PREFIX_WEIGHT * prefixes[i] + LOAD_WEIGHT * load + KV_WEIGHT * (1.0 - replica.kv_usage())
        if score > best_score:
            best_i, best_score = i, score
    return candidates[best_i]


def _lighter(a: Replica, busy_a: float, b: Replica, busy_b: float) -> bool:
    """``a`` holds fewer requests than ``b`` (then less KV in use, then fewer of ours in flight)."""
    return (busy_a, a.kv_usage(), a.inflight) <= (busy_b, b.kv_usage(), b.inflight)


class RoundRobin:
    """Each usable replica in turn."""

    def __init__(self) -> None:
        self._next = 0

    def choose(self, candidates: Sequence[Replica]) -> Replica:
        replica = candidates[self._next % len(candidates)]
        self._next += 1
        return replica
