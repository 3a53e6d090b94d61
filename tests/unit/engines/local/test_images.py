"""Images: the vision variant sees them, text-only models refuse them, URL fetching follows the rules."""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from unimodel.engines.base import GenerationRequest
from unimodel.engines.local import LocalEngine
from unimodel.engines.local.images import MAX_IMAGE_BYTES, resolve_images
from unimodel.errors import InvalidRequestError, UnsupportedFeatureError
from unimodel.models import ensure_tiny_random
from unimodel.protocol.events import ContentDelta, Event, Finish, Usage
from unimodel.protocol.openai import ChatCompletionRequest

from .conftest import start_engine

PUBLIC = "http://93.184.216.34"  # an IP literal: no DNS needed, and it is a global address


def png(color: str = "red", size: tuple[int, int] = (100, 60)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color=color).save(buf, format="PNG")
    return buf.getvalue()


def data_uri(color: str) -> str:
    return "data:image/png;base64," + base64.b64encode(png(color)).decode()


def image_request(url: str, max_tokens: int = 12) -> GenerationRequest:
    wire = ChatCompletionRequest(model="v", temperature=0.0, max_tokens=max_tokens, messages=[{
        "role": "user", "content": [{"type": "text", "text": "What is this?"},
                                    {"type": "image_url", "image_url": {"url": url}}]}])
    return GenerationRequest("r", "v", wire, max_tokens)


def text_request(content: str, max_tokens: int = 12) -> GenerationRequest:
    wire = ChatCompletionRequest(model="v", temperature=0.0, max_tokens=max_tokens,
                                 messages=[{"role": "user", "content": content}])
    return GenerationRequest("r", "v", wire, max_tokens)


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


async def test_image_urls_are_off_by_default(vision: LocalEngine) -> None:
    with pytest.raises(UnsupportedFeatureError, match="allow-image-urls") as err:
        await collect(vision, image_request(f"{PUBLIC}/cat.png"))
    assert err.value.param == "messages"


async def test_fetch_follows_the_rules() -> None:
    big = b"x" * (MAX_IMAGE_BYTES + 1)

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/ok.png":
            return httpx.Response(200, content=png())
        if request.url.path == "/redirect-private":
            return httpx.Response(302, headers={"location": "http://127.0.0.1/ok.png"})
        if request.url.path == "/redirect-ok":
            return httpx.Response(302, headers={"location": "/ok.png"})
        if request.url.path == "/big":
            return httpx.Response(200, content=big)
        if request.url.path == "/not-an-image":
            return httpx.Response(200, content=b"hello")
        return httpx.Response(404)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        got = await resolve_images([f"{PUBLIC}/ok.png", f"{PUBLIC}/redirect-ok"], allow_urls=True, client=client)
        assert all(img.size == (100, 60) for img in got.values())
        for path, match in [("/redirect-private", "non-public"), ("/big", "larger"),
                            ("/not-an-image", "not a readable image"), ("/missing", "status 404")]:
            with pytest.raises(InvalidRequestError, match=match):
                await resolve_images([f"{PUBLIC}{path}"], allow_urls=True, client=client)
        for url in ("http://127.0.0.1/x.png", "http://10.0.0.7/x.png", "http://[::1]/x.png", "ftp://x/y.png"):
            with pytest.raises(InvalidRequestError):
                await resolve_images([url], allow_urls=True, client=client)


async def test_bad_data_uri_is_a_400() -> None:
    with pytest.raises(InvalidRequestError, match="not a readable image"):
        await resolve_images(["data:image/png;base64," + base64.b64encode(b"nope").decode()], allow_urls=False)
