"""Images: the vision variant sees them, and only data: URIs under the shared limits reach the engine.

Fetching image URLs is the gateway's job (tests/unit/images/test_fetch.py, tests/unit/gateway/test_images.py).
"""

from __future__ import annotations

import asyncio
import base64
import io
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from unimodel.engines.base import GenerationRequest
from tests.support.requests import gen_request
from unimodel.engines.local import LocalEngine
from unimodel.engines.local.images import resolve_images
from unimodel.errors import InvalidRequestError
from unimodel.images.decode import ImageLimits
from unimodel.models import ensure_tiny_random
from unimodel.protocol.events import ContentDelta, Event, Finish, Usage
from unimodel.protocol.openai import ChatCompletionRequest, Message

from .conftest import start_engine

PUBLIC = "http://93.184.216.34"  # an IP literal: nothing would need DNS, and it is a global address


def png(color: str = "red", size: tuple[int, int] = (100, 60)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color=color).save(buf, format="PNG")
    return buf.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A few dozen bytes of PNG declaring ``width``x``height`` pixels (a decompression bomb's header)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def data_uri(color: str) -> str:
    return "data:image/png;base64," + base64.b64encode(png(color)).decode()


def image_request(url: str, max_tokens: int = 12) -> GenerationRequest:
    wire = ChatCompletionRequest(model="v", temperature=0.0, max_tokens=max_tokens, messages=[{
        "role": "user", "content": [{"type": "text", "text": "What is this?"},
                                    {"type": "image_url", "image_url": {"url": url}}]}])
    return gen_request("r", "v", wire, max_tokens)


def text_request(content: str, max_tokens: int = 12) -> GenerationRequest:
    wire = ChatCompletionRequest(model="v", temperature=0.0, max_tokens=max_tokens,
                                 messages=[{"role": "user", "content": content}])
    return gen_request("r", "v", wire, max_tokens)


async def collect(engine: LocalEngine, req: GenerationRequest) -> list[Event]:
    return [e async for e in engine.generate(req)]


def text(events: list[Event]) -> str:
    return "".join(e.text for e in events if isinstance(e, ContentDelta))


@pytest.fixture(scope="module")
def vision(tiny_cache_dir: Path) -> Iterator[LocalEngine]:
    ensure_tiny_random("tiny-random-vision", tiny_cache_dir)
    eng = start_engine("tiny-random-vision", tiny_cache_dir, max_num_seqs=4)
    yield eng
    asyncio.run(eng.aclose())


async def test_vision_model_sees_the_image(vision: LocalEngine) -> None:
    assert vision.loaded.supports_images
    red = await collect(vision, image_request(data_uri("red")))
    blue = await collect(vision, image_request(data_uri("blue")))
    assert red[-1] == Finish("length") and isinstance(red[-2], Usage) and red[-2].completion_tokens == 12
    assert text(red) != text(blue)


async def test_image_and_text_requests_batch_as_if_alone(vision: LocalEngine) -> None:
    reqs = [image_request(data_uri("red")), text_request("hello"), image_request(data_uri("green")),
            text_request("another prompt")]
    alone = [text(await collect(vision, r)) for r in reqs]
    together = await asyncio.gather(*(collect(vision, r) for r in reqs))
    assert [text(e) for e in together] == alone


async def test_an_image_url_reaching_the_engine_is_a_400(vision: LocalEngine) -> None:
    with pytest.raises(InvalidRequestError, match="fetched by the gateway") as err:
        await collect(vision, image_request(f"{PUBLIC}/cat.png"))
    assert err.value.status_code == 400 and err.value.param == "messages[0].content[1]"


async def test_a_decompression_bomb_reaching_the_engine_is_a_400(vision: LocalEngine) -> None:
    bomb = "data:image/png;base64," + base64.b64encode(png_declaring(20000, 20000)).decode()
    with pytest.raises(InvalidRequestError, match="pixels") as err:
        await collect(vision, image_request(bomb))
    assert err.value.param == "messages[0].content[1]"


def user_images(*urls: str) -> list[Message]:
    return [Message.model_validate({"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": u}} for u in urls]})]


async def test_resolve_images_decodes_each_distinct_data_uri_once() -> None:
    red, blue = data_uri("red"), data_uri("blue")
    got = await resolve_images(user_images(red, blue, red))
    assert list(got) == [red, blue] and all(img.size == (100, 60) for img in got.values())


async def test_resolve_images_applies_the_shared_limits() -> None:
    with pytest.raises(InvalidRequestError, match="3 images; at most 2") as err:
        await resolve_images(user_images(data_uri("red"), data_uri("red"), data_uri("red")), ImageLimits(max_images=2))
    assert err.value.param == "messages"
    with pytest.raises(InvalidRequestError, match="larger than 100 bytes"):
        await resolve_images(user_images(data_uri("red")), ImageLimits(max_bytes=100))


async def test_bad_data_uri_is_a_400() -> None:
    with pytest.raises(InvalidRequestError, match="not a readable image") as err:
        await resolve_images(user_images(data_uri("red"), "data:image/png;base64," + base64.b64encode(b"no").decode()))
    assert err.value.param == "messages[0].content[1]"
