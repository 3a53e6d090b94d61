"""Turn the ``image_url`` parts of a request into PIL images for the local engine: ``data:`` URIs only.

Hand-written so that mistral_common never fetches or decodes on its own (it would follow any URL with no
limits). The gateway's image policy (:mod:`unimodel.gateway.images`) has already fetched every http(s) URL
and inlined it as a ``data:`` URI, so a URL reaching this engine is refused. Decoding uses the shared checks
of :mod:`unimodel.images.decode` (format, pixel cap before decode, byte cap), in a worker thread.
"""

from __future__ import annotations

import asyncio
from typing import Any

from unimodel.errors import InvalidRequestError
from unimodel.images.decode import DEFAULT_LIMITS, ImageLimits, decode_image, parse_data_uri
from unimodel.protocol.openai import ImagePart, Message


def _decode_data_uri(url: str, where: str, limits: ImageLimits) -> Any:
    _, data = parse_data_uri(url, where, limits)
    return decode_image(data, where, limits)


async def resolve_images(messages: list[Message], limits: ImageLimits = DEFAULT_LIMITS) -> dict[str, Any]:
    """``{url: PIL image}`` for every distinct image URL of ``messages``, decoding in a worker thread."""
    located = [(p.image_url.url, f"messages[{i}].content[{j}]") for i, m in enumerate(messages)
               if isinstance(m.content, list) for j, p in enumerate(m.content) if isinstance(p, ImagePart)]
    if len(located) > limits.max_images:
        raise InvalidRequestError(f"the request has {len(located)} images; at most {limits.max_images} are "
                                  "allowed per request", param="messages")
    out: dict[str, Any] = {}
    for url, where in located:
        if url in out:
            continue
        if not url[:5].lower() == "data:":
            raise InvalidRequestError(
                f"{where}: the local engine accepts images as data: URIs only; image URLs are fetched by the "
                "gateway (--allow-image-urls)", param=where)
        out[url] = await asyncio.to_thread(_decode_data_uri, url, where, limits)
    return out
