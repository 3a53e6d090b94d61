"""The engine contract: what the service layer needs from anything that generates.

Every engine (in-process, OpenAI-compatible upstream, supervised vLLM) implements :class:`Engine` and passes
the same contract suite in ``tests/contract``. Engines only ever see a :class:`GenerationRequest`, the
validated form of a wire request, never raw JSON.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal, Optional

from unimodel.protocol.events import Event
from unimodel.protocol.openai import ChatCompletionRequest, Message, ModelCard

ModelEffort = Literal["none", "high"]


@dataclass(frozen=True)
class GenerationRequest:
    """A validated chat request, resolved against the served model.

    ``wire`` keeps the client's request (with its pass-through extras) for engines that forward it.
    ``effort`` is the level the client asked for (or the served model's default); ``model_effort`` is what
    the model itself is told (Mistral knows ``none`` and ``high``; ``None``: tell it nothing).
    ``thinking_budget`` (tokens, ``None`` = unbounded) is enforced by the engine: at the budget the thinking
    is closed and the model goes on to answer.
    """

    request_id: str
    served_model: str
    wire: ChatCompletionRequest
    max_tokens: Optional[int]
    effort: str = "none"
    model_effort: Optional[ModelEffort] = None
    thinking_budget: Optional[int] = None
    include_reasoning: bool = True
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def messages(self) -> list[Message]:
        return self.wire.messages


class Engine(abc.ABC):
    """An async text generator behind one or more served model names."""

    #: short label used in logs and metrics ("local", "upstream", "vllm")
    kind: str = "engine"

    @abc.abstractmethod
    async def start(self) -> None:
        """Acquire resources (load a model, open a pool, launch a child). Returns when started, not ready."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release everything; in-flight generations end."""

    @abc.abstractmethod
    def is_ready(self) -> bool:
        """True when a request sent now would be served."""

    @abc.abstractmethod
    def models(self) -> list[ModelCard]:
        """The served model names (the first is the default)."""

    @abc.abstractmethod
    def generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        """Yield neutral events for one request, ending with exactly one ``Finish``.

        Raises a :class:`unimodel.errors.UnimodelError` before the first event for a request it refuses, or
        during iteration for a failure mid-way. Closing the iterator (client gone) cancels the work.
        """
