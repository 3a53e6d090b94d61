"""Turn ``image_url`` parts into PIL images: ``data:`` URIs always, http(s) URLs only when allowed.

Hand-written so that mistral_common never fetches on its own (it would follow any URL with no limits).
Fetching rules: ``--allow-image-urls`` off → 400; only http/https; every hop's host must resolve to public
addresses (no loopback, private, link-local or reserved ranges), redirects are followed by hand (at most 3)
and re-checked; a size limit and a total timeout apply; the bytes must decode as an image. A DNS answer can
change between our check and httpx's connect (rebinding); pin addresses in the gateway's fetcher if that
matters for a deployment.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import ipaddress
import socket
from typing import Any
from urllib.parse import urljoin, urlsplit

from unimodel.errors import InvalidRequestError, UnsupportedFeatureError

MAX_IMAGE_BYTES = 10 * 1024 * 1024
FETCH_TIMEOUT_S = 10.0
MAX_REDIRECTS = 3


def decode_image(data: bytes, where: str) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InvalidRequestError(f"{where} is not a readable image (PNG, JPEG, WebP or GIF)",
                                  param="messages") from exc
    return image


def decode_data_uri(url: str) -> Any:
    header, sep, payload = url.partition(",")
    if not sep or not header.startswith("data:") or ";base64" not in header:
        raise InvalidRequestError("an image data: URI must be base64 (data:image/png;base64,...)", param="messages")
    if len(payload) > MAX_IMAGE_BYTES * 4 // 3 + 4:
        raise InvalidRequestError(f"an image is larger than {MAX_IMAGE_BYTES} bytes", param="messages")
    try:
        data = base64.b64decode(payload, validate=False)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequestError(f"an image data: URI is not valid base64: {exc}", param="messages") from exc
    return decode_image(data, "an image data: URI")


async def _check_public(host: str) -> None:
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise InvalidRequestError(f"cannot resolve the image host {host!r}", param="messages") from exc
    for info in infos:
        addr = ipaddress.ip_address(info[4][0])
        if not addr.is_global:
            raise InvalidRequestError(f"image URLs may not point at non-public addresses ({host})", param="messages")


async def fetch_image(url: str, client: Any) -> Any:
    """GET ``url`` with ``client`` (an ``httpx.AsyncClient``) under the rules of the module docstring."""
    import httpx

    for _ in range(MAX_REDIRECTS + 1):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidRequestError("image URLs must be http(s) or data: URIs", param="messages")
        await _check_public(parts.hostname)
        try:
            async with client.stream("GET", url, follow_redirects=False, timeout=FETCH_TIMEOUT_S) as resp:
                if resp.status_code in (301, 302, 303, 307, 308) and "location" in resp.headers:
                    url = urljoin(url, resp.headers["location"])
                    continue
                if resp.status_code != 200:
                    raise InvalidRequestError(f"fetching an image failed with status {resp.status_code}",
                                              param="messages")
                data = bytearray()
                async for chunk in resp.aiter_bytes():
                    data += chunk
                    if len(data) > MAX_IMAGE_BYTES:
                        raise InvalidRequestError(f"an image is larger than {MAX_IMAGE_BYTES} bytes",
                                                  param="messages")
                return decode_image(bytes(data), "a fetched image")
        except httpx.HTTPError as exc:
            raise InvalidRequestError(f"fetching an image failed: {type(exc).__name__}", param="messages") from exc
    raise InvalidRequestError("too many redirects while fetching an image", param="messages")


async def resolve_images(urls: list[str], *, allow_urls: bool, client: Any | None = None) -> dict[str, Any]:
    """``{url: PIL image}`` for every distinct URL, decoding in a worker thread."""
    out: dict[str, Any] = {}
    for url in dict.fromkeys(urls):
        if url.startswith("data:"):
            out[url] = await asyncio.to_thread(decode_data_uri, url)
            continue
        if not allow_urls:
            raise UnsupportedFeatureError(
                "image URLs are turned off on this server (--allow-image-urls); send the image as a data: URI",
                param="messages",
            )
        if client is None:
            import httpx

            async with httpx.AsyncClient() as own:
                out[url] = await fetch_image(url, own)
        else:
            out[url] = await fetch_image(url, client)
    return out
