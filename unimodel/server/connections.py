"""What one client connection may hold: header bytes, header time, idle time, open connections, stalled writes.

uvicorn runs this server with its httptools protocol (``uvicorn[standard]`` brings httptools, and uvicorn's
``auto`` picks it). On its own that protocol bounds none of these: the parser keeps a header line growing as
long as bytes come (20 sockets of 60 MiB took the server to 1.4 GB), nothing times a request head (the
keep-alive timer is armed only after a first response, and any byte cancels it), every accepted socket is kept
(20,000 half-sent heads exhausted the file descriptors), and a write to a client that stopped reading waits
forever (its request, its upstream connection and its limits slot with it). uvicorn's own knobs do not reach
these: ``limit_concurrency`` answers 503 once a request head is complete (a socket that never completes one is
never counted against it), and ``h11_max_incomplete_event_size`` is the h11 protocol's, not httptools'. So
:class:`BoundedHttpToolsProtocol` is a small subclass of uvicorn's protocol, written by hand because no server
option covers it:

* **header bytes**: the bytes of a request head are counted as they arrive; past ``max_header_bytes`` the
  client gets 431 and the connection is closed, so a connection never holds more than the cap and one read;
* **header time**: from the moment a connection opens, or its last response ends, it has ``header_timeout_s``
  to send a whole head (a trickle of bytes does not extend it); then it is closed (408 if it had begun one);
* **idle time**: uvicorn's keep-alive timer (``keep_alive_timeout_s``) closes a connection idle between
  requests;
* **open connections**: past ``max_connections`` (per process) a new connection closes the longest-idle one (a
  connection with no request in flight: idle, or still sending its head), as nginx reuses its idle keep-alive
  connections; only when every connection has a request in flight is the new one refused, with 503. So
  half-sent heads cannot lock out a new client, and the process never nears its file descriptor limit;
* **stalled writes**: any byte the kernel does not take at once pauses the writer (write buffer limits of
  zero: the socket buffers are the buffer), and a pause in which little moves for ``write_timeout_s`` (the
  client took less than 1 KiB of what was waiting, counting what the kernel holds for it) drops the
  connection, closing or not; a slow reader that takes more in each period is left alone (what it can hold is
  bounded elsewhere: by the request's total timeout, and by its key's share of the upstream pool). An app that
  opts in (:func:`~unimodel.server.writes.raise_on_failed_writes`, the chat route) gets
  :class:`~unimodel.errors.ClientWriteTimeoutError` from the ``send`` that waited, so it can end its request as
  such (499 ``client_write_timeout``: engine stream closed, stages released, logged); it may also give a
  deadline, past which a waiting ``send`` raises the error it names (the request's total timeout). Other apps,
  and an app that was not waiting in a ``send`` when the pause ran out (it was waiting on its engine), see an
  ordinary disconnect (``send`` returns, ``receive`` says ``http.disconnect``). :mod:`unimodel.server.writes`
  holds the flow control and the progress measure.

Everything is per connection and costs nothing per request but a timer armed when a connection becomes idle
(as uvicorn's own keep-alive timer is) and a few attribute writes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import weakref
from dataclasses import dataclass
from typing import Any, Optional

from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from unimodel.errors import (
    RequestHeadersTooLargeError,
    RequestTimeoutError,
    TooManyConnectionsError,
    UnimodelError,
)
from unimodel.protocol.jsonbytes import dumps
from unimodel.server.writes import MIN_PROGRESS_BYTES, WriteFlow, unsent

log = logging.getLogger("unimodel.connections")


@dataclass(frozen=True)
class ConnectionBounds:
    """The bounds of :class:`BoundedHttpToolsProtocol` (``server/run.py`` makes them from the settings)."""

    max_connections: int = 1024
    max_header_bytes: int = 32 * 1024
    header_timeout_s: float = 10.0
    keep_alive_timeout_s: float = 5.0
    write_timeout_s: float = 30.0


def uvicorn_options(bounds: ConnectionBounds) -> dict[str, Any]:
    """The ``uvicorn.Config``/``uvicorn.run`` options that put ``bounds`` in force (picklable, for workers).
    WebSockets are off: no route uses them, and an upgraded connection would leave these bounds behind."""
    _check_uvicorn()
    return {"http": functools.partial(BoundedHttpToolsProtocol, bounds=bounds), "ws": "none",
            "timeout_keep_alive": bounds.keep_alive_timeout_s}


def _check_uvicorn() -> None:
    """The subclass hooks into uvicorn's httptools protocol (its parser callbacks, its flow control): a uvicorn
    that renamed them would leave the server unbounded, so it is refused at start-up instead."""
    missing = [name for name in ("on_headers_complete", "on_message_complete", "on_response_complete",
                                 "timeout_keep_alive_handler", "pause_writing", "resume_writing", "data_received")
               if not hasattr(HttpToolsProtocol, name)]
    if missing or not hasattr(FlowControl(_NoTransport()), "_is_writable_event"):  # type: ignore[arg-type]
        import uvicorn

        raise RuntimeError(f"uvicorn {uvicorn.__version__} changed the protocol server/connections.py extends "
                           f"({', '.join(missing) or 'FlowControl'}); pin uvicorn to a version it knows (0.54)")


class _NoTransport:
    pass


# ---- the protocol -------------------------------------------------------------------------------------------

def _canned(error: UnimodelError) -> bytes:
    """A whole HTTP response for a refusal made before any app sees the request, then the connection closes."""
    body = dumps(error.to_dict())
    head = (f"HTTP/1.1 {error.status_code} {_REASONS[error.status_code]}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n")
    head += "".join(f"{name.lower()}: {value}\r\n" for name, value in error.headers().items())
    return head.encode("latin-1") + b"\r\n" + body


_REASONS = {408: "Request Timeout", 431: "Request Header Fields Too Large", 503: "Service Unavailable"}


class _Refusals:
    """Connections refused for want of an idle one to close: logged at most once every ``every_s``, with the
    count since (a flood must not flood the log too)."""

    every_s = 10.0

    def __init__(self) -> None:
        self.count = 0
        self.logged_at: Optional[float] = None

    def note(self, now: float, cap: int) -> None:
        self.count += 1
        if self.logged_at is None or now - self.logged_at >= self.every_s:
            log.warning("refused %d connection(s) with 503: all %d connections have a request in flight "
                        "(--max-connections)", self.count, cap)
            self.count, self.logged_at = 0, now


_REFUSALS = _Refusals()

#: the idle connections of each server (no request in flight), oldest first: the ones a new connection may close
_IDLE: "weakref.WeakKeyDictionary[Any, dict[BoundedHttpToolsProtocol, None]]" = weakref.WeakKeyDictionary()


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the bounds of :class:`ConnectionBounds` (the module docstring says
    what each does and why it is hand-written)."""

    def __init__(self, config: Any, server_state: Any, app_state: dict[str, Any],
                 _loop: Optional[asyncio.AbstractEventLoop] = None, *,
                 bounds: ConnectionBounds = ConnectionBounds()) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.bounds = bounds
        idle = _IDLE.get(server_state)
        if idle is None:
            idle = _IDLE[server_state] = {}
        self._idle = idle
        self._in_head = True  # the bytes arriving are a request head's
        self._head_bytes = 0  # … this many of them so far
        self._heads = 0  # heads complete on this connection
        self._head_timer: Optional[asyncio.TimerHandle] = None
        self._stall_timer: Optional[asyncio.TimerHandle] = None
        self._unsent = 0  # bytes the client had yet to take when the stall timer was (re-)armed

    # -- the connection ------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.flow = WriteFlow(transport, self.drop, self.bounds.write_timeout_s)
        transport.set_write_buffer_limits(high=0)  # pause at any unsent byte: the kernel's buffers are the buffer
        if len(self.connections) > self.bounds.max_connections and not self._close_longest_idle():
            _REFUSALS.note(self.loop.time(), self.bounds.max_connections)
            self._refuse(TooManyConnectionsError("The server has too many open connections; retry shortly.",
                                                 retry_after=1))
            return
        self._become_idle()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._idle.pop(self, None)
        self._cancel_head_timer()
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        super().connection_lost(exc)

    def _close_longest_idle(self) -> bool:
        oldest = next(iter(self._idle), None)
        if oldest is None:
            return False
        oldest._close_idle()
        return True

    def _close_idle(self) -> None:
        self._idle.pop(self, None)
        self._cancel_head_timer()
        if self.transport.get_write_buffer_size():
            self.transport.abort()  # a client that does not read would keep a closing connection open
        else:
            self.transport.close()

    def _become_idle(self) -> None:
        """No request in flight: the next request's head has ``header_timeout_s`` to arrive (the rest of a body
        nobody reads, after an early answer, does not extend it)."""
        self._idle.pop(self, None)
        self._idle[self] = None  # at the end: the most recently idle
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.bounds.header_timeout_s, self._head_timed_out)

    def timeout_keep_alive_handler(self) -> None:
        self._idle.pop(self, None)
        super().timeout_keep_alive_handler()

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        self._idle.pop(self, None)
        if self._head_bytes:  # it began a request: say why it ends; an idle connection just closes
            self._refuse(RequestTimeoutError(
                f"The request head did not arrive within {self.bounds.header_timeout_s:g} s."))
        else:
            self.transport.close()

    def _refuse(self, error: UnimodelError) -> None:
        self._in_head = False
        self._idle.pop(self, None)
        self._cancel_head_timer()
        if self.cycle is not None and not self.cycle.response_complete:
            self.drop()  # a response is under way on it: no room for another
            return
        self.transport.write(_canned(error))
        self.transport.close()

    def drop(self) -> None:
        """End the connection now: unsent bytes are discarded, a request in flight sees a disconnect."""
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True  # what connection_lost will say; sends write nothing from now on
        self.transport.abort()

    # -- reading -------------------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            room = self.bounds.max_header_bytes - self._head_bytes
            if len(data) > room:
                heads = self._heads
                if room > 0:
                    super().data_received(data[:room])  # the head may end within the room left
                if self.transport.is_closing():
                    return
                if self._heads == heads:
                    self._refuse(RequestHeadersTooLargeError(
                        f"The request head is larger than {self.bounds.max_header_bytes} bytes."))
                    return
                data = data[room:]  # the head ended: what follows is its body (or the next request)
            else:
                self._head_bytes += len(data)
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._heads += 1
        self._idle.pop(self, None)
        self._cancel_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head, self._head_bytes = True, 0  # what comes next is the next request's head

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
            self._become_idle()  # (a pipelined request, already started, keeps it busy)

    # -- writing -------------------------------------------------------------------------------------------

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._stall_timer is None and not self._stalled:
            self._unsent = unsent(self.transport)
            self._stall_timer = self.loop.call_later(self.bounds.write_timeout_s, self._write_stalled)

    def resume_writing(self) -> None:
        if self._stalled:
            return  # too late: it is being dropped
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        super().resume_writing()

    @property
    def _stalled(self) -> bool:
        flow = self.flow
        return isinstance(flow, WriteFlow) and flow.stalled

    def _write_stalled(self) -> None:
        self._stall_timer = None
        left = unsent(self.transport)
        if self._unsent - left >= min(MIN_PROGRESS_BYTES, self._unsent):  # a slow reader, not a stalled one
            self._unsent = left
            self._stall_timer = self.loop.call_later(self.bounds.write_timeout_s, self._write_stalled)
            return
        flow = self.flow
        assert isinstance(flow, WriteFlow)
        flow.stalled = True
        if flow.waiting:
            flow.wake()  # the waiting send drops the connection itself, then fails (or returns)
        else:
            self.drop()


# ---- the process's file descriptors -------------------------------------------------------------------------

def fit_to_fd_limit(bounds: ConnectionBounds, reserve: int) -> ConnectionBounds:
    """``bounds`` with room for ``max_connections`` client sockets plus ``reserve`` other descriptors (upstream
    pools, the request log, Redis): the soft ``RLIMIT_NOFILE`` is raised toward the hard one as far as needed;
    where even the hard limit is too low, ``max_connections`` is lowered to fit (logged), so that the accept
    loop never meets ``EMFILE``. Called once at start-up, before the workers fork."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Unix
        return bounds
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = bounds.max_connections + reserve
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            log.warning("could not raise the open-file limit from %d to %d", soft, target)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return bounds
    fitted = max(1, soft - reserve)
    log.warning("--max-connections %d lowered to %d: the open-file limit is %d (raise it with ulimit -n)",
                bounds.max_connections, fitted, soft)
    return dataclasses.replace(bounds, max_connections=fitted)
