"""Turn the ``image_url`` parts of a request into PIL images for the local engine: ``data:`` URIs only.

Hand-written so that mistral_common never fetches or decodes on its own (it would follow any URL with no
limits). The gateway's image policy (:mod:`unimodel.gateway.images`) has already fetched every http(s) URL
and inlined it as a ``data:`` URI, so a URL reaching this engine is refused. Decoding uses the shared checks
of :mod:`unimodel.images.decode` (format, pixel cap before decode, byte cap), in a worker thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
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


def at_least_two_image_tokens(image: Any, config: Any) -> Any:
    """Upscale an image so small that it would become one image token.

    transformers' Mistral3 ``get_image_features`` squeezes the token axis away when an image yields exactly
    one merged patch, and then fails (a 500 from a 32x32 icon). Two tokens' worth of width avoids it.
    """
    vision = getattr(config, "vision_config", None)
    patch = int(getattr(vision, "patch_size", 16) or 16) * int(getattr(config, "spatial_merge_size", 1) or 1)
    width, height = image.size
    if width > patch or height > patch:
        return image
    return image.resize((2 * patch, max(height, 1)))


def pixel_inputs(images: Sequence[Any], loaded: Any) -> dict[str, Any]:
    """The model's image inputs for a prompt's images (CHW float arrays): one zero-padded batch and their
    sizes, on the model's device and dtype; none without images."""
    if not images:
        return {}
    import numpy as np
    import torch

    h = max(int(img.shape[1]) for img in images)
    w = max(int(img.shape[2]) for img in images)
    batch = np.zeros((len(images), 3, h, w), dtype=np.float32)
    for i, img in enumerate(images):
        batch[i, :, : img.shape[1], : img.shape[2]] = img
    return {
        "pixel_values": torch.from_numpy(batch).to(loaded.device, loaded.dtype),
        "image_sizes": torch.tensor([[int(i.shape[1]), int(i.shape[2])] for i in images], device=loaded.device),
    }
