"""``--engine vllm``: launch ``vllm serve`` as a supervised child, then talk to it as an upstream.

The supervisor starts the child in its own process group, streams its output into our log with a prefix,
polls its ``/health`` until it answers, restarts it with exponential backoff when it dies (requests meanwhile
get 503 with ``Retry-After``), and on shutdown sends SIGTERM to the group, then SIGKILL after a grace period.
Requests go through an :class:`UpstreamEngine` pointed at the child. Written by hand: it is a small asyncio
process supervisor, and no library does this job without bringing its own daemon.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Sequence
from typing import Optional

import httpx

from unimodel.engines.base import Engine, GenerationRequest
from unimodel.engines.upstream import UpstreamEngine
from unimodel.errors import ServiceUnavailableError
from unimodel.protocol.events import Event
from unimodel.protocol.openai import ModelCard

log = logging.getLogger("unimodel.vllm")


def merge_args(planned: Sequence[str], overrides: Sequence[str]) -> list[str]:
    """Apply ``--vllm-arg`` overrides to a planned argv: a flag given again replaces the planned one.

    Overrides are ``--flag=value``, ``--flag value`` (as two items) or a bare ``--flag``.
    """
    def split(args: Sequence[str]) -> tuple[list[str], list[tuple[str, list[str]]]]:
        head: list[str] = []
        flags: list[tuple[str, list[str]]] = []
        for a in args:
            if a.startswith("--"):
                name, eq, value = a.partition("=")
                flags.append((name, [value] if eq else []))
            elif flags:
                flags[-1][1].append(a)
            else:
                head.append(a)
        return head, flags

    head, planned_flags = split(planned)
    _, override_flags = split(overrides)
    overridden = {name for name, _ in override_flags}
    out = list(head)
    for name, values in [f for f in planned_flags if f[0] not in overridden] + override_flags:
        out.append(name)
        out.extend(values)
    return out


class VllmEngine(Engine):
    kind = "vllm"

    def __init__(
        self,
        argv: Sequence[str],
        *,
        port: int,
        served_model_name: str,
        family: str = "mistral",
        parse_mode: str = "auto",
        health_timeout_s: float = 1800.0,
        backoff_initial_s: float = 2.0,
        backoff_max_s: float = 60.0,
        stop_grace_s: float = 30.0,
        env: Optional[dict[str, str]] = None,
    ) -> None:
        self.argv = list(argv)
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.upstream = UpstreamEngine(f"{self.base}/v1", served_model_name=served_model_name,
                                       family=family, parse_mode=parse_mode)  # type: ignore[arg-type]
        self.served_model_name = served_model_name
        self.health_timeout_s = health_timeout_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.stop_grace_s = stop_grace_s
        self.env = env
        self.restarts = 0
        self._proc: Optional[asyncio.subprocess.Process] = None
        self._ready = asyncio.Event()
        self._stopping = False
        self._supervisor: Optional[asyncio.Task[None]] = None
        self._next_start_at = 0.0

    @property
    def pid(self) -> Optional[int]:
        return self._proc.pid if self._proc else None

    async def start(self) -> None:
        await self.upstream.start()
        log.info("launching: %s", " ".join(self.argv))
        self._supervisor = asyncio.create_task(self._supervise(), name="vllm-supervisor")

    async def wait_ready(self, timeout: float) -> None:
        await asyncio.wait_for(self._ready.wait(), timeout)

    def is_ready(self) -> bool:
        return self._ready.is_set()

    def models(self) -> list[ModelCard]:
        return self.upstream.models()

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        if not self._ready.is_set():
            wait = max(1.0, self._next_start_at - time.monotonic() + 5.0)
            raise ServiceUnavailableError("vLLM is starting or restarting; try again shortly",
                                          retry_after=wait)
        async for event in self.upstream.generate(request):
            yield event

    async def aclose(self) -> None:
        self._stopping = True
        await self._terminate()
        if self._supervisor is not None:
            self._supervisor.cancel()
            try:
                await self._supervisor
            except asyncio.CancelledError:
                pass
        await self.upstream.aclose()

    # ---- supervision -------------------------------------------------------------------------------

    async def _supervise(self) -> None:
        backoff = self.backoff_initial_s
        while not self._stopping:
            started = time.monotonic()
            try:
                self._proc = await asyncio.create_subprocess_exec(
                    *self.argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True, env={**os.environ, **(self.env or {})},
                )
            except OSError as exc:
                log.error("cannot launch %s: %s", self.argv[0], exc)
                self._proc = None
            if self._proc is not None:
                pump = asyncio.create_task(self._pump_logs(self._proc))
                if await self._wait_healthy(self._proc):
                    log.info("vLLM is ready on %s (pid %d)", self.base, self._proc.pid)
                    self._ready.set()
                    await self.upstream.probe()
                code = await self._proc.wait()
                self._ready.clear()
                await pump
                if self._stopping:
                    return
                log.warning("vLLM exited with code %s", code)
                if time.monotonic() - started > 300:
                    backoff = self.backoff_initial_s  # it ran a good while: start the backoff over
            self.restarts += 1
            self._next_start_at = time.monotonic() + backoff
            log.info("restarting vLLM in %.1fs (restart %d)", backoff, self.restarts)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.backoff_max_s)

    async def _wait_healthy(self, proc: asyncio.subprocess.Process) -> bool:
        deadline = time.monotonic() + self.health_timeout_s
        async with httpx.AsyncClient(timeout=2.0) as client:
            while time.monotonic() < deadline and proc.returncode is None:
                try:
                    if (await client.get(f"{self.base}/health")).status_code == 200:
                        return True
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.25)
        if proc.returncode is None:
            log.error("vLLM did not become healthy in %.0fs; stopping it", self.health_timeout_s)
            await self._terminate()
        return False

    async def _pump_logs(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            log.info("[vllm] %s", raw.decode(errors="replace").rstrip())

    async def _terminate(self) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            await asyncio.wait_for(proc.wait(), self.stop_grace_s)
        except asyncio.TimeoutError:
            log.warning("vLLM did not stop in %.0fs; killing it", self.stop_grace_s)
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            await proc.wait()
