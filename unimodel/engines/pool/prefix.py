"""Prefix affinity: which replica most likely holds a prompt's leading blocks in its KV cache.

vLLM caches the KV of every full block of tokens it has seen, keyed by the chain of blocks before it, so a
prompt that starts like one a replica served recently prefills only its new part there. The gateway has no
tokenizer for an upstream, so it approximates the engine's blocks on the prompt's own bytes, as SGLang's
cache-aware router and llm-d's approximate prefix scorer do: the request (its tools, then each message in
order, as JSON; a raw prompt as its text) is cut into blocks of ``block_bytes`` (256 bytes is about 64 tokens),
each block's hash chained to the previous one, so equal hashes mean equal prompts up to there. Only the first
``max_blocks`` blocks count: prefix reuse is about the leading part, and the cost per request stays bounded
whatever the prompt's size. Python's own ``hash`` is used (SipHash, randomised per process, never stored
nor sent anywhere): each gateway process keeps its own tables.

:class:`PrefixIndex` is one replica's table: the block hashes of the prompts sent to it, most recently used
last, at most ``capacity`` of them (the oldest forgotten first, as the replica's own cache evicts its least
recently used blocks). :class:`AffinityTable` maps a session (a ``prompt_cache_key``, a completion id, an end
user) to the replica that served it last, bounded the same way.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from unimodel.engines.base import GenerationRequest


def prompt_blocks(request: GenerationRequest, block_bytes: int, max_blocks: int) -> list[int]:
    """The chained hashes of the first ``max_blocks`` full blocks of the request's prompt (a shorter prompt's
    last partial block counts too: it is all there is)."""
    limit = block_bytes * max_blocks
    parts: list[bytes] = []
    size = 0
    if request.raw_prompt is not None:
        parts.append(request.raw_prompt.text.encode("utf-8", "surrogatepass")[:limit])
    else:
        if request.tools:
            for tool in request.tools:
                piece = tool.model_dump_json(exclude_none=True).encode()
                parts.append(piece)
                size += len(piece)
                if size >= limit:
                    break
        if size < limit:
            for message in request.messages:
                piece = message.model_dump_json(exclude_none=True).encode()
                parts.append(piece)
                size += len(piece)
                if size >= limit:
                    break
    data = b"\x1e".join(parts)[:limit]
    hashes: list[int] = []
    previous = 0
    for start in range(0, len(data), block_bytes):
        previous = hash((previous, data[start:start + block_bytes]))
        hashes.append(previous)
    return hashes


class PrefixIndex:
    """One replica's recently sent prompt blocks (an LRU of block hashes)."""

    __slots__ = ("capacity", "_blocks")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def match(self, blocks: Sequence[int]) -> int:
        """How many of ``blocks``, from the first, this replica has seen (stops at the first it has not)."""
        seen = self._blocks
        n = 0
        for block in blocks:
            if block not in seen:
                break
            n += 1
        return n

    def add(self, blocks: Sequence[int]) -> None:
        """The replica was sent a prompt with these blocks: they become its most recent."""
        seen = self._blocks
        for block in blocks:
            if block in seen:
                seen.move_to_end(block)
            else:
                seen[block] = None
        while len(seen) > self.capacity:
            seen.popitem(last=False)

    def clear(self) -> None:
        self._blocks.clear()


class AffinityTable:
    """Session → the replica (its name) that served it last; the least recently used forgotten first."""

    __slots__ = ("capacity", "_by_key")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._by_key: OrderedDict[str, str] = OrderedDict()

    def __len__(self) -> int:
        return len(self._by_key)

    def get(self, key: Optional[str]) -> Optional[str]:
        return None if key is None else self._by_key.get(key)

    def put(self, key: str, replica: str) -> None:
        table = self._by_key
        table[key] = replica
        table.move_to_end(key)
        if len(table) > self.capacity:
            table.popitem(last=False)

    def forget(self, replica: str) -> None:
        """A replica left the pool: its sessions go wherever the score sends them next."""
        for key in [k for k, v in self._by_key.items() if v == replica]:
            del self._by_key[key]
