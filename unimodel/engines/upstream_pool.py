"""The upstream client's transport: httpx's own, with a cheaper idle-connection check.

Each time httpcore's pool hands out or takes back a connection it asks every idle connection whether its
socket is readable (a server that closed it). httpcore's anyio stream answers by looking the raw socket up
through anyio's typed attributes, which builds a dict of attribute getters on every call: with 32 idle
connections that lookup, not the ``poll``, took about a tenth of the gateway's CPU under load (py-spy, see
``benchmarks/gateway_overhead.py``). The stream here finds the socket once, at connect, and asks ``poll``
directly. Written by hand because no transport option does this; everything else is httpx's and httpcore's.
"""

from __future__ import annotations

import select
import socket
import ssl
import typing

import httpcore
import httpx


def is_readable(sock: socket.socket | None) -> bool:
    """Whether a ``recv`` would return at once (data, or the ``b""`` of a closed peer); as httpcore's."""
    fd = None if sock is None else sock.fileno()
    if fd is None or fd < 0:
        return True  # gone: the next read is the end
    if not hasattr(select, "poll"):
        return bool(select.select([fd], [], [], 0)[0])
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


class _SocketStream(httpcore.AsyncNetworkStream):
    def __init__(self, stream: httpcore.AsyncNetworkStream) -> None:
        self._stream = stream
        self._sock: socket.socket | None = stream.get_extra_info("socket")

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._stream.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._stream.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                        timeout: float | None = None) -> httpcore.AsyncNetworkStream:
        return _SocketStream(await self._stream.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> typing.Any:
        if info == "is_readable":
            return is_readable(self._sock)
        return self._stream.get_extra_info(info)


class SocketCachingBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, its streams wrapped in :class:`_SocketStream`."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: typing.Iterable[typing.Any] | None = None) -> httpcore.AsyncNetworkStream:
        return _SocketStream(await self._inner.connect_tcp(host, port, timeout, local_address, socket_options))

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: typing.Iterable[typing.Any] | None = None
                                  ) -> httpcore.AsyncNetworkStream:
        return _SocketStream(await self._inner.connect_unix_socket(path, timeout, socket_options))

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def upstream_transport(limits: httpx.Limits) -> httpx.AsyncHTTPTransport:
    """httpx's transport (its TLS context, its pool) with :class:`SocketCachingBackend` as the pool's backend.

    httpx does not take a network backend, so it is set on the pool it built; should a future httpcore name
    that attribute differently, the transport is left exactly as httpx made it."""
    transport = httpx.AsyncHTTPTransport(limits=limits)
    pool = getattr(transport, "_pool", None)
    if isinstance(pool, httpcore.AsyncConnectionPool) and hasattr(pool, "_network_backend"):
        pool._network_backend = SocketCachingBackend()
    return transport
