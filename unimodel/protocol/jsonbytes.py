"""Compact UTF-8 JSON bytes for the hot path (SSE frames, chat responses), by orjson.

orjson writes the same bytes as ``json.dumps(obj, ensure_ascii=False, separators=(",", ":"))`` for what the
gateway sends (str keys, str/int/bool/None/list/dict values; a float may be spelled differently, ``1e-05`` as
``0.00001``, the same number), several times faster. What orjson refuses (a lone surrogate in a model's text,
an int beyond 64 bits) falls back to the standard library with ASCII escapes, so it still encodes.
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def dumps(obj: Any) -> bytes:
    try:
        return orjson.dumps(obj)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return json.dumps(obj, separators=(",", ":")).encode()
