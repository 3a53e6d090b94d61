"""Each API key's share of the upstream connection pool: no key holds more than ``per_key`` upstream requests.

The upstream engine's pool (``--upstream-max-connections``, per process) serves every key, and a request holds
one of its connections from its start to the end of its answer — also while its client reads slowly, up to
``--stream-write-timeout-s`` of no progress. Without a cap one key's requests (slow readers, stalled streams, or
just many) can hold the whole pool, and every other key's request waits for a free connection until its
connect timeout: a 504. With the cap a key holds at most ``per_key`` connections (``--upstream-key-share`` of
the pool, at least one), so the rest of the pool stays for the others; a request past its key's share is
refused at once, 429 ``upstream_share_exceeded`` with ``Retry-After``, before any upstream is called.

It counts requests from this stage's ``enter`` (just before the resilience stage calls an upstream) to their
``exit`` (after the engine stream is closed): a request takes one pooled connection at a time (retries and
fallbacks one after another; a request with ``n`` choices counts ``n``, at most the key's share, since each
choice is its own upstream request), and each extra upstream has a pool of the same size, so the count bounds
what a key holds in every pool. In memory, per process, as the pools are (each worker of ``--workers N`` has its own).
It is one key's bound, not a fair scheduler: several keys together can still fill the pool (the per-key
``max_concurrent`` limits bound that, across replicas). ``compose.py`` adds the stage only in front of an
upstream pool and with two or more keys (with one, or none, there is no other key to keep room for).
"""

from __future__ import annotations

from typing import Optional

from unimodel.errors import UpstreamShareError
from unimodel.service.pipeline import Call, Stage, StageState

_HELD: StageState[tuple[str, int]] = StageState("upstream_share")  # the key, and the connections counted


class UpstreamShareStage(Stage):
    name = "upstream_share"

    def __init__(self, per_key: int) -> None:
        if per_key < 1:
            raise ValueError("per_key must be ≥ 1")
        self.per_key = per_key
        self._held: dict[str, int] = {}  # key name → requests holding an upstream connection (or about to)

    def held(self, key: str) -> int:
        return self._held.get(key, 0)

    async def enter(self, call: Call) -> None:
        key = call.ctx.key_name or "anonymous"
        held = self._held.get(key, 0)
        # a request with n choices holds n connections at once (the choices stage), at most the key's share
        request = call.engine_request
        cost = 1 if request is None or request.n <= 1 else min(request.n, self.per_key)
        if held + cost > self.per_key:
            raise UpstreamShareError(
                f"This API key already has {held} requests in flight to the upstream, its share of the "
                "server's upstream connections; retry when one has finished.", retry_after=1)
        self._held[key] = held + cost
        call.put(_HELD, (key, cost))

    async def exit(self, call: Call, error: Optional[BaseException]) -> None:
        held = call.pop(_HELD)
        if held is None:
            return
        key, cost = held
        left = self._held.get(key, 0) - cost
        if left > 0:
            self._held[key] = left
        else:
            self._held.pop(key, None)


def per_key_share(pool: int, share: float) -> int:
    """Connections one key may hold of a pool of ``pool``: ``share`` of it, rounded down, at least one."""
    return max(1, int(pool * share))
