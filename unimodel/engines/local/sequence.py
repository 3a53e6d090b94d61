"""One generation as the scheduler sees it (:class:`SequenceRequest`), and the types around it.

Its own module, below the scheduler and its parts (:mod:`.batch`, :mod:`.chunked_prefill`) and the engine's
:mod:`.mailbox`, so that they all name these types without importing the scheduler (no import cycle). torch and
the sampling parameters are named in annotations only: importing this module imports no torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    import torch

    from unimodel.engines.local.sampling import SamplingParams

StopReason = Literal["stop", "length"]


class LogitsHook(Protocol):
    """Per-request logic run on a row's logits (float32, 1-D, vocab) before sampling; may edit them in place."""

    def __call__(self, generated: Sequence[int], logits: torch.Tensor) -> None: ...


TokenLogprobs = tuple[float, list[tuple[int, float]]]
"""One generated token's log probability and its likeliest alternatives as (id, log probability)."""

Sink = Callable[[list[int], "StopReason | None", "BaseException | None"], None]
"""Receives (new tokens, finish reason or None, error or None) from the worker thread."""


@dataclass(eq=False)
class SequenceRequest:
    """One generation as the scheduler sees it: prompt ids, sampling, where results go, and its progress."""

    prompt_ids: list[int]
    params: SamplingParams
    sink: Sink
    prefill_inputs: dict[str, Any] = field(default_factory=dict)  # e.g. pixel_values, image_sizes
    hooks: list[LogitsHook] = field(default_factory=list)
    #: called once at the end of each step in which ``sink`` received something (e.g. to wake an event loop
    #: once for all of its sequences instead of once per sequence)
    flush: Callable[[], None] | None = None
    generated: list[int] = field(default_factory=list)
    #: the client asked for logprobs with this many alternatives (0..20); None: not asked, nothing computed
    top_logprobs: int | None = None
    #: per generated token, when asked: (its logprob, [(id, logprob) of the likeliest ``top_logprobs``]), raw
    #: (before any hook, temperature or truncation). The worker thread appends entry i before it delivers token
    #: i, so a receiver that got token i may read entry i
    logprobs: list[TokenLogprobs] = field(default_factory=list)
    admitted: bool = False  # taken off the queue into a slot (set by the worker thread)
    cancelled: bool = False
    done: bool = False
    generator: torch.Generator | None = None
