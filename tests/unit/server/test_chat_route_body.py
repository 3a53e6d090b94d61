"""The chat route reads the body only when the parse stage asks: a refusal before it reads nothing; the
disconnect watcher owns ``receive`` only once the body is read (never two reads at once); a client that
leaves while its body is read is a 499."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

from tests.support.fake_engine import InMemoryEngine
from unimodel.engines.base import GenerationRequest
from unimodel.gateway.auth import ApiKeyAuth
from unimodel.protocol.events import ContentDelta, Event, Finish
from unimodel.server.routes.chat import ApiEndpoint
from unimodel.service.chat import ChatService
from unimodel.service.context import RequestContext
from unimodel.service.observer import Observers
from unimodel.service.parse import ParseStage
from unimodel.service.pipeline import Pipeline
from unimodel.service.validate import ValidateStage

BODY = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()


class Answers(InMemoryEngine):
    kind = "answers"

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        yield ContentDelta("ok")
        yield Finish("stop")


class Seen:
    def __init__(self) -> None:
        self.contexts: list[RequestContext] = []

    def request_finished(self, ctx: RequestContext) -> None:
        self.contexts.append(ctx)


class Client:
    """``receive`` over scripted messages (then silence), counting calls and the most at once; ``send``
    keeps what the server wrote."""

    def __init__(self, messages: list[dict[str, Any]]) -> None:
        self.messages = messages
        self.calls = self.now = self.most = 0
        self.sent: list[dict[str, Any]] = []

    async def receive(self) -> dict[str, Any]:
        self.calls += 1
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            await asyncio.sleep(0.001)
            if self.messages:
                return self.messages.pop(0)
            await asyncio.sleep(3600)
            return {"type": "http.disconnect"}
        finally:
            self.now -= 1

    async def send(self, message: Any) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int:
        return int(self.sent[0]["status"])


async def run(client: Client, headers: list[tuple[bytes, bytes]]) -> Seen:
    engine, seen = Answers(), Seen()
    pipeline = Pipeline([ApiKeyAuth(["sk-x"]), ParseStage(), ValidateStage(engine.models)])
    service = ChatService(engine, pipeline, Observers([seen]))
    scope = {"type": "http", "app": SimpleNamespace(state=SimpleNamespace(chat=service)), "headers": headers}
    await asyncio.wait_for(ApiEndpoint()(scope, client.receive, client.send), 10)
    assert service.in_flight == 0
    return seen


KEY = [(b"authorization", b"Bearer sk-x")]


async def test_a_refusal_by_auth_reads_nothing() -> None:
    client = Client([{"type": "http.request", "body": BODY, "more_body": False}])
    seen = await run(client, [(b"authorization", b"Bearer wrong")])
    assert client.status == 401 and client.calls == 0
    assert [c.status for c in seen.contexts] == [401]


async def test_a_body_in_pieces_is_read_once_and_only_then_watched() -> None:
    pieces = [BODY[:10], BODY[10:20], BODY[20:]]
    client = Client([{"type": "http.request", "body": p, "more_body": i < 2} for i, p in enumerate(pieces)])
    seen = await run(client, KEY)
    assert client.status == 200 and json.loads(client.sent[1]["body"])["choices"][0]["message"]["content"] == "ok"
    assert client.most == 1  # the watcher began once the body was read: never two receives at once
    assert [c.status for c in seen.contexts] == [200]


async def test_a_client_leaving_while_its_body_is_read_is_a_499() -> None:
    client = Client([{"type": "http.request", "body": BODY[:10], "more_body": True}, {"type": "http.disconnect"}])
    seen = await run(client, KEY)
    assert client.calls == 2 and client.most == 1
    assert [(c.status, c.error_type) for c in seen.contexts] == [(499, "client_closed")]
