"""What one replica's ``/metrics`` says about its load: requests waiting and running, and KV-cache use.

vLLM exports Prometheus text: ``vllm:num_requests_waiting``, ``vllm:num_requests_running`` and
``vllm:kv_cache_usage_perc`` (a share, 0 to 1; vLLM before v1 called it ``vllm:gpu_cache_usage_perc``), one
sample per engine (a data-parallel server has several, each labelled ``engine="N"``). Waiting and running are
summed over them; KV use is the highest of them, since a request lands on one engine and the fullest one is
the one that preempts first.

Read by hand rather than with ``prometheus_client``'s parser: a vLLM ``/metrics`` page is hundreds of histogram
bucket lines, which the library's parser turns into objects every second for every replica; here each line is
only tested for the three prefixes we need (bytes, no decoding of the rest), and the page is capped in size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

MAX_METRICS_BYTES = 8 * 1024 * 1024  # a replica's page beyond this is not read (a real vLLM's is ~100 KiB)

_WAITING = b"vllm:num_requests_waiting"
_RUNNING = b"vllm:num_requests_running"
_KV = (b"vllm:kv_cache_usage_perc", b"vllm:gpu_cache_usage_perc")


@dataclass(frozen=True, slots=True)
class ReplicaLoad:
    """One scrape: ``waiting`` and ``running`` requests (``None``: the page did not say), ``kv_usage`` (0 to 1,
    ``None``: not said), and ``at`` (the monotonic time it was read)."""

    waiting: Optional[float]
    running: Optional[float]
    kv_usage: Optional[float]
    at: float

    @property
    def known(self) -> bool:
        """The page said anything we read (a server that exports none of vLLM's gauges is no vLLM)."""
        return self.waiting is not None or self.running is not None or self.kv_usage is not None


def parse_vllm_metrics(page: bytes, at: float) -> ReplicaLoad:
    """The load in a vLLM ``/metrics`` page (Prometheus text format). Samples that are not finite numbers, or
    negative, are ignored; a share above 1 is read as 1."""
    waiting: Optional[float] = None
    running: Optional[float] = None
    kv: Optional[float] = None
    for line in page.split(b"\n"):
        if not line.startswith(b"vllm:"):
            continue
        if _is(line, _WAITING):
            value = _value(line, len(_WAITING))
            if value is not None:
                waiting = value if waiting is None else waiting + value
        elif _is(line, _RUNNING):
            value = _value(line, len(_RUNNING))
            if value is not None:
                running = value if running is None else running + value
        else:
            for name in _KV:
                if _is(line, name):
                    value = _value(line, len(name))
                    if value is not None:
                        value = min(1.0, value)
                        kv = value if kv is None else max(kv, value)
                    break
    return ReplicaLoad(waiting, running, kv, at)


def _is(line: bytes, name: bytes) -> bool:
    """``line`` is a sample of exactly the metric ``name`` (not of one whose name starts with it)."""
    if not line.startswith(name):
        return False
    rest = line[len(name):len(name) + 1]
    return rest in (b"{", b" ", b"\t")


def _value(line: bytes, start: int) -> Optional[float]:
    """The sample's value: the first field after the labels (a timestamp may follow it)."""
    rest = line[start:]
    if rest.startswith(b"{"):
        close = _labels_end(rest)
        if close < 0:
            return None
        rest = rest[close + 1:]
    fields = rest.split()
    if not fields:
        return None
    try:
        value = float(fields[0])
    except ValueError:
        return None
    if not math.isfinite(value) or value < 0:
        return None
    return value


def _labels_end(rest: bytes) -> int:
    """The index of the ``}`` closing the label set at the start of ``rest`` (quoted values may hold one)."""
    quoted = escaped = False
    for i in range(1, len(rest)):
        c = rest[i]
        if escaped:
            escaped = False
        elif c == 0x5C:  # backslash
            escaped = quoted
        elif c == 0x22:  # double quote
            quoted = not quoted
        elif c == 0x7D and not quoted:  # }
            return i
    return -1
