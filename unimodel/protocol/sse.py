"""Server-sent events framing for the chat stream (``data: {json}\\n\\n`` … ``data: [DONE]\\n\\n``)."""

from __future__ import annotations

from typing import Any

from unimodel.protocol.jsonbytes import dumps

DONE = b"data: [DONE]\n\n"


def frame(payload: dict[str, Any]) -> bytes:
    return b"data: " + dumps(payload) + b"\n\n"
