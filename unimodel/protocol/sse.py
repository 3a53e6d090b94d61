"""Server-sent events framing for the chat stream (``data: {json}\\n\\n`` … ``data: [DONE]\\n\\n``)."""

from __future__ import annotations

import json
from typing import Any

DONE = b"data: [DONE]\n\n"


def frame(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"
