"""Streamed chat completions against a running server, one connection per stream, with the arrival time of
every SSE chunk that carries text and the token counts from the final usage chunk.

The client is aiohttp with orjson (the gateway's own upstream client): on a machine where the load generator
shares the cores with the server it measures, a lighter client leaves more of them to the server.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import aiohttp
import orjson


@dataclass
class StreamResult:
    started: float  # perf_counter when the request was sent
    arrivals: list[float] = field(default_factory=list)  # perf_counter of each chunk carrying text
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None

    def gaps_between(self, start: float, end: float) -> list[float]:
        """Inter-chunk gaps (seconds) that overlap [start, end] (a stall that ends after ``end`` counts)."""
        return [b - a for a, b in zip(self.arrivals, self.arrivals[1:]) if b >= start and a <= end]


async def stream_chat(base_url: str, model: str, content: str, max_tokens: int, timeout: float = 600) -> StreamResult:
    """One greedy streamed completion that generates exactly ``max_tokens`` (``ignore_eos``)."""
    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
            "temperature": 0.0, "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True},
            "reasoning_effort": "none"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout),
                                     connector=aiohttp.TCPConnector(limit=1)) as session:
        result = StreamResult(started=time.perf_counter())
        async with session.post(base_url.rstrip("/") + "/chat/completions", data=orjson.dumps(body),
                                headers={"Content-Type": "application/json"}) as response:
            if response.status != 200:
                raise SystemExit(f"{base_url}: HTTP {response.status}: {(await response.read())[:300]!r}")
            async for line in response.content:  # one SSE line at a time
                if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                    continue
                chunk = orjson.loads(line[6:])
                now = time.perf_counter()
                for choice in chunk.get("choices") or []:
                    delta = choice.get("delta") or {}
                    if delta.get("content") or delta.get("reasoning_content") or delta.get("reasoning"):
                        result.arrivals.append(now)
                    if choice.get("finish_reason"):
                        result.finish_reason = choice["finish_reason"]
                if chunk.get("usage"):
                    result.prompt_tokens = chunk["usage"]["prompt_tokens"]
                    result.completion_tokens = chunk["usage"]["completion_tokens"]
    if result.completion_tokens != max_tokens:
        raise SystemExit(f"asked for {max_tokens} tokens, the usage says {result.completion_tokens}")
    return result
