"""``--engine vllm``: launch ``vllm serve`` as a supervised child, then talk to it as an upstream.

The supervisor starts the child in its own process group, streams its output into our log with a prefix,
polls its ``/health`` until it answers, restarts it with exponential backoff when it dies (requests meanwhile
get 503 with ``Retry-After``), and on shutdown sends SIGTERM to the group, then SIGKILL after a grace period.
Requests go through an :class:`UpstreamEngine` pointed at the child. Written by hand: it is a small asyncio
process supervisor, and no library does this job without bringing its own daemon.

Hardening:

* The child's output is read in chunks and split into lines here, never with ``readline`` (which gives up on
  a line over its 64 KiB limit, after which nobody drains the pipe and vLLM blocks on its next write). A line
  over :data:`MAX_LOG_LINE` bytes is logged cut, with a marker saying how much was cut.
* The supervision task is watched: if it dies of a bug it is logged and run again with backoff, adopting the
  child if it still runs (a healthy vLLM is not restarted for our bug).
* No orphans. When the child (vLLM's API server) exits, what is left of its process group (its workers,
  holding GPU memory and our pipe) is killed. And on Linux the child asks the kernel for SIGTERM when its
  parent dies (``PR_SET_PDEATHSIG``), so even a SIGKILLed gateway leaves no vLLM behind. The kernel sends that
  signal when the *thread* that forked the child exits, not the process: we fork from the event loop's
  thread (``asyncio.create_subprocess_exec`` runs ``fork`` there, never in an executor), which lives as long as
  the engine, so the signal comes exactly when the gateway goes. A gateway that ran its loop in a short-lived
  thread would see vLLM stopped when that thread ends, never leaked.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Optional

import aiohttp

from unimodel.engines.base import Engine, GenerationRequest, PromptCount, StartProgress
from unimodel.engines.upstream import UpstreamEngine
from unimodel.errors import ServiceUnavailableError
from unimodel.protocol.events import Event
from unimodel.protocol.openai import ModelCard

log = logging.getLogger("unimodel.vllm")

READ_CHUNK = 65536  # bytes read from the child's output at a time
MAX_LOG_LINE = 16384  # bytes of one line of the child's output that reach our log
WAITING_LOG_EVERY_S = 30.0  # while vLLM starts: one "still starting" line this often (its own lines come between)
_PR_SET_PDEATHSIG = 1
_LINE_END = re.compile(rb"[\r\n]")  # progress bars end their lines with \r


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
        count_tokens: Optional[Callable[[str], int]] = None,
        health_check: Optional[Callable[[], Awaitable[bool]]] = None,
        upstream: Optional[UpstreamEngine] = None,
    ) -> None:
        self.argv = list(argv)
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        #: what requests go through: the server's (``engines/factory.py::upstream_engine``, with every upstream
        #: setting) when given, else one with the defaults and ``family``/``parse_mode``/``count_tokens``
        self.upstream = upstream if upstream is not None else UpstreamEngine(
            f"{self.base}/v1", served_model_name=served_model_name, family=family,  # type: ignore[arg-type]
            parse_mode=parse_mode, count_tokens=count_tokens)  # type: ignore[arg-type]
        self.served_model_name = served_model_name
        self.health_timeout_s = health_timeout_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.stop_grace_s = stop_grace_s
        self.env = env
        #: one probe of the child, polled every 0.25 s until it says True (default :meth:`probe_health`); an
        #: exception it raises is a failure of the supervision itself (logged, and the supervision run again)
        self.health_check: Callable[[], Awaitable[bool]] = health_check or self.probe_health
        self.restarts = 0
        self.supervisor_failures = 0
        self._proc: Optional[asyncio.subprocess.Process] = None
        self._pump: Optional[asyncio.Task[None]] = None
        self._ready = asyncio.Event()
        self._stopping = False
        self._supervisor: Optional[asyncio.Task[None]] = None
        self._next_start_at = 0.0
        self._phase = "launching"  # what start_progress says: launching, starting, waiting to restart
        self._phase_since = time.monotonic()

    @property
    def pid(self) -> Optional[int]:
        return self._proc.pid if self._proc else None

    async def start(self) -> None:
        await self.upstream.start()
        log.info("launching: %s", " ".join(self.argv))
        self._supervisor = asyncio.create_task(self._watch(), name="vllm-supervisor")

    async def wait_ready(self, timeout: float) -> None:
        await asyncio.wait_for(self._ready.wait(), timeout)

    def is_ready(self) -> bool:
        return self._ready.is_set()

    def start_progress(self) -> Optional[StartProgress]:
        """While vLLM is not serving: ``launching`` (the process is being started), ``starting`` (it runs and
        loads its model; its own log lines, prefixed ``[vllm]``, say how far), ``waiting to restart``."""
        if self._ready.is_set() or self._stopping or self._supervisor is None:
            return None
        return StartProgress("vLLM is starting", self._phase, time.monotonic() - self._phase_since)

    def _set_phase(self, phase: str) -> None:
        self._phase, self._phase_since = phase, time.monotonic()

    async def check_health(self) -> bool:
        return self.is_ready() and await self.upstream.probe()

    def models(self) -> list[ModelCard]:
        return self.upstream.models()

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        if not self._ready.is_set():
            wait = max(1.0, self._next_start_at - time.monotonic() + 5.0)
            raise ServiceUnavailableError("vLLM is starting or restarting; try again shortly",
                                          retry_after=wait)
        async for event in self.upstream.generate(request):
            yield event

    async def count_prompt(self, request: GenerationRequest, *, token_strs: bool = False) -> Optional[PromptCount]:
        self._check_serving()
        return await self.upstream.count_prompt(request, token_strs=token_strs)

    async def detokenize(self, model: str, tokens: list[int]) -> Optional[str]:
        self._check_serving()
        return await self.upstream.detokenize(model, tokens)

    def _check_serving(self) -> None:
        if not self._ready.is_set():
            wait = max(1.0, self._next_start_at - time.monotonic() + 5.0)
            raise ServiceUnavailableError("vLLM is starting or restarting; try again shortly", retry_after=wait)

    async def aclose(self) -> None:
        self._stopping = True
        await self._terminate()
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.gather(self._supervisor, return_exceptions=True)
        await self._terminate()  # a child launched while we were stopping
        await self._finish_pump()
        await self.upstream.aclose()

    # ---- supervision -------------------------------------------------------------------------------

    async def _watch(self) -> None:
        """Run the supervision; if it dies of an unexpected error, log it and run it again, with backoff."""
        backoff = self.backoff_initial_s
        while not self._stopping:
            started = time.monotonic()
            try:
                await self._supervise()
                return
            except Exception:
                if time.monotonic() - started > 300:
                    backoff = self.backoff_initial_s  # a rare failure after a long run: no long wait
                self.supervisor_failures += 1
                self._ready.clear()
                self._next_start_at = time.monotonic() + backoff
                log.exception("the vLLM supervisor failed (%d so far); restarting it in %.1fs",
                              self.supervisor_failures, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.backoff_max_s)

    async def _supervise(self) -> None:
        backoff = self.backoff_initial_s
        while not self._stopping:
            started = time.monotonic()
            proc = self._proc
            if proc is None or proc.returncode is not None:
                self._set_phase("launching")
                proc = await self._launch()
            else:
                log.info("supervising the running vLLM again (pid %d)", proc.pid)
            if proc is not None:
                if await self._wait_healthy(proc):
                    log.info("vLLM is ready on %s (pid %d)", self.base, proc.pid)
                    self._ready.set()
                    await self.upstream.probe()
                code = await proc.wait()
                self._ready.clear()
                _kill_group(proc.pid)  # its workers, if any outlived it
                await self._finish_pump()
                if self._stopping:
                    return
                log.warning("vLLM exited with code %s", code)
                if time.monotonic() - started > 300:
                    backoff = self.backoff_initial_s  # it ran a good while: start the backoff over
            self.restarts += 1
            self._next_start_at = time.monotonic() + backoff
            self._set_phase("waiting to restart")
            log.info("restarting vLLM in %.1fs (restart %d)", backoff, self.restarts)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.backoff_max_s)

    async def _launch(self) -> Optional[asyncio.subprocess.Process]:
        await self._finish_pump()
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT, start_new_session=True,
                env={**os.environ, **(self.env or {})}, preexec_fn=_die_with_parent(),
            )
        except OSError as exc:
            log.error("cannot launch %s: %s", self.argv[0], exc)
            return None
        self._proc = proc
        assert proc.stdout is not None
        self._pump = asyncio.create_task(_pump_logs(proc.stdout), name="vllm-log")
        return proc

    async def probe_health(self) -> bool:
        """One ``GET /health`` of the child: True when it answers 200 within 2 s. A session per probe: it
        runs a few times a second while vLLM starts, never per request."""
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0)) as session:
                async with session.get(f"{self.base}/health", allow_redirects=False) as response:
                    return response.status == 200
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return False

    async def _wait_healthy(self, proc: asyncio.subprocess.Process) -> bool:
        started = time.monotonic()
        self._set_phase("starting")
        deadline = started + self.health_timeout_s
        said = started
        while time.monotonic() < deadline and proc.returncode is None:
            if await self.health_check():
                log.info("vLLM answered /health after %.1f s", time.monotonic() - started)
                return True
            await asyncio.sleep(0.25)
            if time.monotonic() - said >= WAITING_LOG_EVERY_S:
                said = time.monotonic()
                log.info("vLLM is starting (pid %d): %.0f s so far, %.0f s left before it is stopped "
                         "as hung; its own [vllm] lines say how far it got", proc.pid,
                         said - started, deadline - said)
        if proc.returncode is None:
            log.error("vLLM did not become healthy in %.0fs; stopping it", self.health_timeout_s)
            await self._terminate()
        return False

    async def _finish_pump(self) -> None:
        """Wait for the reader of an exited child's output; cut it loose if something still holds the pipe."""
        pump, self._pump = self._pump, None
        if pump is None:
            return
        try:
            await asyncio.wait({pump}, timeout=5.0)
        except asyncio.CancelledError:
            pump.cancel()
            raise
        if not pump.done():
            log.warning("vLLM's output is still open after it exited; no longer reading it")
            pump.cancel()
        await asyncio.gather(pump, return_exceptions=True)

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
            _kill_group(proc.pid)
            await proc.wait()
        _kill_group(proc.pid)


async def _pump_logs(stream: asyncio.StreamReader) -> None:
    """Copy the child's output into our log until it closes. Reads whatever is there, so the pipe never
    fills, whatever the length of a line."""
    lines = LineSplitter(MAX_LOG_LINE)
    try:
        while chunk := await stream.read(READ_CHUNK):
            for line in lines.feed(chunk):
                log.info("[vllm] %s", line)
        for line in lines.flush():
            log.info("[vllm] %s", line)
    except Exception:  # reading a pipe should never fail; if it does, say so rather than die silently
        log.exception("reading vLLM's output failed")


class LineSplitter:
    """Bytes in, complete lines out (a newline or a carriage return ends one; blank lines are dropped), each
    cut at ``limit`` bytes with a marker saying how much was cut. Holds at most ``limit`` bytes, whatever comes
    in."""

    def __init__(self, limit: int = MAX_LOG_LINE) -> None:
        self.limit = limit
        self._head = bytearray()
        self._cut = 0

    def feed(self, chunk: bytes) -> list[str]:
        out: list[str] = []
        start = 0
        for end in _LINE_END.finditer(chunk):
            self._take(chunk[start:end.start()])
            out.append(self._line())
            start = end.end()
        self._take(chunk[start:])
        return [line for line in out if line]

    def flush(self) -> list[str]:
        line = self._line()
        return [line] if line else []

    def _take(self, piece: bytes) -> None:
        room = self.limit - len(self._head)
        self._head += piece[:room]
        self._cut += max(0, len(piece) - room)

    def _line(self) -> str:
        text = self._head.decode(errors="replace").rstrip()
        if self._cut:
            text += f" ... [line cut: {self._cut} more bytes]"
        self._head.clear()
        self._cut = 0
        return text


def _kill_group(pgid: int) -> None:
    """SIGKILL what is left of a child's process group (its workers), if anything."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _die_with_parent() -> Optional[Callable[[], None]]:
    """A ``preexec_fn`` that makes the child get SIGTERM when the thread that forks it exits (Linux only;
    see the module's notes). ``prctl`` is looked up here, before the fork, so the child only calls it."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the gateway died before prctl took effect: nobody would signal us
            os._exit(1)

    return preexec
