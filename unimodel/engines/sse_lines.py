"""Split an upstream's SSE byte stream into lines, without decoding it.

The upstream's answer arrives in chunks of any size, and a line may span chunks: what follows the last line
ending waits for the next chunk. Lines end with ``\\n``, ``\\r\\n`` or a lone ``\\r`` (the three endings of the
SSE spec); nothing else ends a line, so a JSON string holding a raw U+2028 stays in its frame. The wait is
bounded: an upstream that sends more than ``max_line_bytes`` without ending the line is an
:class:`~unimodel.errors.UpstreamError`, not unbounded memory.

Written by hand: aiohttp's ``StreamReader.readline()`` costs an await per line and knows only ``\\n``; here each
chunk is split at once with ``bytes.split`` (the common chunk, ``data: {...}\\n\\n``, is one call).
"""

from __future__ import annotations

from unimodel.errors import UpstreamError

MAX_LINE_BYTES = 8 * 1024 * 1024


class SseLineSplitter:
    __slots__ = ("_pending", "_pending_bytes", "_after_cr", "_max")

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self._pending: list[bytes] = []  # the unfinished line, in the pieces it came in (joined once, at its end)
        self._pending_bytes = 0
        self._after_cr = False  # the last chunk ended with \r: a \n starting the next one ends no further line
        self._max = max_line_bytes

    def feed(self, chunk: bytes) -> list[bytes]:
        """The lines that ``chunk`` completes, without their endings."""
        if self._after_cr:
            self._after_cr = False
            if chunk.startswith(b"\n"):
                chunk = chunk[1:]
        if b"\r" in chunk:
            self._after_cr = chunk.endswith(b"\r")
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if b"\n" not in chunk:
            if chunk:
                self._keep(chunk)
            return []
        lines = chunk.split(b"\n")
        if self._pending:
            self._pending.append(lines[0])
            lines[0] = b"".join(self._pending)
            self._pending.clear()
            self._pending_bytes = 0
        tail = lines.pop()
        if tail:
            self._keep(tail)
        return lines

    def close(self) -> list[bytes]:
        """The last line, when the stream ended without ending it."""
        line = b"".join(self._pending)
        self._pending.clear()
        self._pending_bytes = 0
        return [line] if line else []

    def _keep(self, piece: bytes) -> None:
        self._pending.append(piece)
        self._pending_bytes += len(piece)
        if self._pending_bytes > self._max:
            raise UpstreamError(f"the upstream sent a stream line over {self._max} bytes")
