"""Run a real uvicorn server for the unimodel app on a free loopback port, in a background thread."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvicorn

from unimodel.config import Settings
from unimodel.engines.base import Engine
from unimodel.server.app import create_app
from unimodel.server.connections import uvicorn_options
from unimodel.server.run import connection_bounds

T = TypeVar("T")

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    def __init__(self, settings: Settings, engine: Engine, wait_ready: bool = True,
                 **uvicorn_kwargs: Any) -> None:
        self.port = free_port()
        self.engine = engine
        self.wait_ready = wait_ready
        self.app = create_app(settings, engine)
        # the connection bounds `unimodel serve` runs with (server/connections.py), from the same settings
        options = {**uvicorn_options(connection_bounds(settings)), **uvicorn_kwargs}
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                lifespan="on", **options)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 120) -> T:
        """Run ``coro`` on the server's event loop (where its engine lives: e.g. to read an engine's own events
        from a test's thread) and return what it returns."""
        loop = self.server.servers[0].get_loop()
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("unimodel test server did not start")
            time.sleep(0.01)
        if self.wait_ready:
            while not self.engine.is_ready():
                if self.app.state.start_error is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"engine did not start: {self.app.state.start_error}")
                time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
