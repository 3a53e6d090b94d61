"""The base of the tests' in-memory engines: always ready, one served model ``m``; subclasses write ``generate``."""

from __future__ import annotations

from unimodel.engines.base import Engine
from unimodel.protocol.openai import ModelCard


class InMemoryEngine(Engine):
    """Nothing to start or close; serves ``m`` with a context of ``max_model_len`` tokens."""

    kind = "in-memory"
    max_model_len: int | None = 100_000

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    def is_ready(self) -> bool:
        return True

    def models(self) -> list[ModelCard]:
        return [ModelCard(id="m", max_model_len=self.max_model_len)]
