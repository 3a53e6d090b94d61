"""Writes to a client that stopped reading: how a waiting ``send`` fails, and how progress is measured.

uvicorn's flow control makes an app's ``send`` wait (``FlowControl.drain``) while the transport is paused, for
as long as the client does not read: forever, for one that stopped. :mod:`unimodel.server.connections` pauses
at any unsent byte and drops a connection whose pause sees too little progress; this module holds the pieces
of that which touch the app and the socket (hand-written: neither uvicorn nor Starlette bounds a ``send``):

* :class:`WriteFlow`, uvicorn's flow control whose ``drain`` can fail: once the connection is found stalled,
  or past a deadline the app gave;
* :func:`raise_on_failed_writes`, the app's opt-in (the chat route's): then a failed ``drain`` raises
  :class:`~unimodel.errors.ClientWriteTimeoutError` (or the deadline's own error) out of the ``send`` that
  waited, so the app can end its request as such; without it a ``send`` returns quietly, as on any disconnect.
  A context variable, because ``drain`` runs in the app's own task (a key in the scope could be lost to a
  middleware's copy of it);
* :func:`unsent`, what the client has yet to take, counting what the kernel holds for it (its socket buffers
  can hold megabytes that drain while the transport's own buffer does not move).
"""

from __future__ import annotations

import asyncio
import contextvars
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

from uvicorn.protocols.http.flow_control import FlowControl

from unimodel.errors import ClientWriteTimeoutError, UnimodelError

#: what a client must take of its pending bytes in each write timeout to count as reading (or all of them)
MIN_PROGRESS_BYTES = 1024


@dataclass(frozen=True, slots=True)
class WritePolicy:
    """How the app's ``send`` fails: :class:`~unimodel.errors.ClientWriteTimeoutError` for a stalled client,
    and ``past_deadline()`` for a send still waiting at ``deadline`` (event-loop time)."""

    deadline: Optional[float] = None
    past_deadline: Optional[Callable[[], UnimodelError]] = None


_WRITES: contextvars.ContextVar[Optional[WritePolicy]] = contextvars.ContextVar("unimodel_writes", default=None)
_RAISE = WritePolicy()


def raise_on_failed_writes(deadline: Optional[float] = None,
                           past_deadline: Optional[Callable[[], UnimodelError]] = None) -> None:
    """From now on in this task (one request's), a ``send`` that waits on a stalled client raises
    :class:`~unimodel.errors.ClientWriteTimeoutError`, and one still waiting at ``deadline`` raises
    ``past_deadline()``; either way the connection is dropped. Without this call a send fails silently, as on
    any disconnect. Under another HTTP protocol it changes nothing."""
    _WRITES.set(_RAISE if deadline is None else WritePolicy(deadline, past_deadline))


class WriteFlow(FlowControl):
    """uvicorn's flow control, whose ``drain`` (where a ``send`` waits for a paused transport) can fail.
    ``drop`` ends the connection; ``write_timeout_s`` is for the error's message."""

    def __init__(self, transport: asyncio.Transport, drop: Callable[[], None], write_timeout_s: float) -> None:
        super().__init__(transport)
        self._drop = drop
        self._write_timeout_s = write_timeout_s
        self.waiting = 0  # sends waiting in drain
        self.stalled = False

    async def drain(self) -> None:
        policy = _WRITES.get()
        self.waiting += 1
        try:
            if policy is None or policy.deadline is None:
                await self._is_writable_event.wait()
            else:
                remaining = policy.deadline - asyncio.get_running_loop().time()
                try:
                    await asyncio.wait_for(self._is_writable_event.wait(), max(0.0, remaining))
                except asyncio.TimeoutError:
                    self._drop()
                    if policy.past_deadline is not None:
                        raise policy.past_deadline() from None
                    raise ClientWriteTimeoutError("the answer's time ran out while the client was not reading") \
                        from None
        finally:
            self.waiting -= 1
        if self.stalled:
            self._drop()
            if policy is not None:
                raise ClientWriteTimeoutError(
                    f"the client stopped reading (it took less than {MIN_PROGRESS_BYTES} bytes in "
                    f"{self._write_timeout_s:g} s); the answer was ended")

    def wake(self) -> None:
        """Let waiting sends see the stall (the transport stays paused: nothing more is written)."""
        self._is_writable_event.set()


def unsent(transport: asyncio.Transport) -> int:
    """Bytes the client has yet to take: the transport's buffer, and what the kernel still holds for it (sent
    but not acknowledged, or not sent: Linux's ``SIOCOUTQ``; elsewhere only the transport's buffer counts). Read
    only when a stall timer fires."""
    pending = transport.get_write_buffer_size()
    sock = transport.get_extra_info("socket")
    if _SIOCOUTQ is not None and sock is not None:
        try:
            pending += struct.unpack("i", fcntl.ioctl(sock.fileno(), _SIOCOUTQ, b"\0\0\0\0"))[0]
        except (OSError, ValueError):
            pass
    return pending


if sys.platform.startswith("linux"):
    import fcntl
    import termios

    _SIOCOUTQ: Optional[int] = termios.TIOCOUTQ  # the same request as SIOCOUTQ, on a socket
else:  # pragma: no cover
    _SIOCOUTQ = None
