"""Synthetic finished requests and a clock that tests move, for the window and alert tests."""

from __future__ import annotations

from typing import Optional

from unimodel.protocol.events import Usage
from unimodel.formats.reasoning import AppliedReasoning
from unimodel.service.context import RequestContext


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def finished(*, status: int = 200, error_type: Optional[str] = None, latency_ms: Optional[float] = 100.0,
             ttft_ms: Optional[float] = 20.0, prompt: Optional[int] = 10, completion: int = 5, reasoning: int = 0,
             effort: Optional[str] = "none", key: Optional[str] = "team-a", route: Optional[str] = "default",
             user: Optional[str] = None) -> RequestContext:
    """A finished request as the chat service leaves it for the observers (times relative to arrival)."""
    ctx = RequestContext("req", received_at=0.0, key_name=key, route=route, user=user, status=status,
                         error_type=error_type)
    ctx.finished_at = None if latency_ms is None else latency_ms / 1000.0
    ctx.first_token_at = None if ttft_ms is None else ttft_ms / 1000.0
    if prompt is not None:
        ctx.usage = Usage(prompt_tokens=prompt, completion_tokens=completion, reasoning_tokens=reasoning)
    if effort is not None:
        ctx.reasoning = AppliedReasoning(effort, None, None)
    return ctx
