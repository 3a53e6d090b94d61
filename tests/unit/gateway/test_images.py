"""The gateway's image policy: counts, data: URIs validated, URLs fetched and inlined (or refused), bombs a 400."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from typing import Any

import pytest
from PIL import Image

from unimodel.errors import InvalidRequestError, UnsupportedFeatureError
from unimodel.gateway.images import ImagePolicy, inline_images
from unimodel.images.decode import ImageLimits
from unimodel.images.fetch import SafeImageFetcher
from unimodel.protocol.openai import Message

ON = ImagePolicy(allow_urls=True)
OFF = ImagePolicy(allow_urls=False)


def png(color: str = "red", size: tuple[int, int] = (20, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color=color).save(buf, format="PNG")
    return buf.getvalue()


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def user(*urls: str, text: str = "look", detail: str | None = None) -> Message:
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}]
    for url in urls:
        image: dict[str, Any] = {"url": url}
        if detail:
            image["detail"] = detail
        parts.append({"type": "image_url", "image_url": image})
    return Message.model_validate({"role": "user", "content": parts})


class FakeFetcher:
    def __init__(self, bodies: dict[str, bytes] | None = None) -> None:
        self.bodies = bodies or {}
        self.calls: list[tuple[str, str]] = []

    async def fetch(self, url: str, where: str) -> tuple[str, bytes]:
        self.calls.append((url, where))
        return "image/png", self.bodies.get(url, png())


async def test_no_images_returns_the_input_itself() -> None:
    messages = [Message(role="system", content="be brief"), user(text="hi")]
    fetcher = FakeFetcher()
    assert await inline_images(messages, OFF, fetcher) is messages
    assert fetcher.calls == []


async def test_valid_data_uris_pass_through_unchanged() -> None:
    messages = [user(data_uri(png()), data_uri(png("blue"), "image/jpg"))]
    assert await inline_images(messages, OFF, FakeFetcher()) is messages


async def test_urls_are_fetched_and_inlined_as_data_uris() -> None:
    url, other = "https://images.example/cat.png", "http://images.example/dog.png"
    messages = [Message(role="system", content="s"), user(url, data_uri(png()), url, other, detail="low")]
    before = [m.model_dump() for m in messages]
    fetcher = FakeFetcher({other: png("green")})
    out = await inline_images(messages, ON, fetcher)
    assert [m.model_dump() for m in messages] == before  # the input is untouched
    assert out is not messages and out[0] is messages[0]
    parts = out[1].content
    assert isinstance(parts, list)
    assert parts[1].image_url.url == data_uri(png()) == parts[3].image_url.url  # type: ignore[union-attr]
    assert parts[4].image_url.url == data_uri(png("green"))  # type: ignore[union-attr]
    assert parts[2] is messages[1].content[2]  # type: ignore[index]
    assert all(p.image_url.detail == "low" for p in parts[1:])  # type: ignore[union-attr]
    assert fetcher.calls == [(url, "messages[1].content[1]"), (other, "messages[1].content[4]")]  # once per URL


async def test_urls_are_refused_when_turned_off() -> None:
    fetcher = FakeFetcher()
    with pytest.raises(UnsupportedFeatureError, match="turned off on this server") as err:
        await inline_images([user(data_uri(png()), "https://images.example/cat.png")], OFF, fetcher)
    assert err.value.status_code == 400 and err.value.param == "messages[0].content[2]"
    assert fetcher.calls == []


async def test_too_many_images_are_refused_before_any_work() -> None:
    fetcher = FakeFetcher()
    policy = ImagePolicy(allow_urls=True, limits=ImageLimits(max_images=2))
    with pytest.raises(InvalidRequestError, match="3 images; at most 2") as err:
        await inline_images([user("http://a.example/1.png", "http://a.example/2.png"),
                             user("http://a.example/3.png")], policy, fetcher)
    assert err.value.param == "messages" and fetcher.calls == []


async def test_a_decompression_bomb_data_uri_is_a_400_naming_the_part() -> None:
    bomb = data_uri(bomb_png())
    assert len(bomb) < 140  # a hundred-odd bytes declaring 20000x20000
    with pytest.raises(InvalidRequestError, match="pixels") as err:
        await inline_images([user(bomb)], OFF, FakeFetcher())
    assert err.value.status_code == 400 and err.value.param == "messages[0].content[1]"
    assert "messages[0].content[1]" in err.value.message


async def test_a_fetched_bomb_or_non_image_is_a_400() -> None:
    for body, match in [(bomb_png(8000, 8000), "pixels"), (b"GIF89a but not really", "not a readable image")]:
        fetcher = FakeFetcher({"http://x.example/a.png": body})
        with pytest.raises(InvalidRequestError, match=match) as err:
            await inline_images([user("http://x.example/a.png")], ON, fetcher)
        assert err.value.param == "messages[0].content[1]"


@pytest.mark.parametrize("url,match", [
    ("file:///etc/passwd", "data: URI or an http"), ("ftp://x.example/a.png", "data: URI or an http"),
    ("cat.png", "data: URI or an http"), ("data:image/png,raw", "base64"),
    ("data:image/png;base64," + base64.b64encode(b"not an image").decode(), "not a readable image"),
])
async def test_bad_image_urls_are_a_400(url: str, match: str) -> None:
    with pytest.raises(InvalidRequestError, match=match) as err:
        await inline_images([user(data_uri(png())), user(url)], ON, FakeFetcher())
    assert err.value.param == "messages[1].content[1]"


async def test_byte_cap_on_data_uris() -> None:
    policy = ImagePolicy(limits=ImageLimits(max_bytes=100))
    with pytest.raises(InvalidRequestError, match="larger than 100 bytes"):
        await inline_images([user(data_uri(png(size=(64, 64)) + b"\0" * 100))], policy, FakeFetcher())


async def test_the_policys_own_fetcher_refuses_private_addresses() -> None:
    policy = ImagePolicy(allow_urls=True, fetch_timeout_s=2.0, max_redirects=1)
    fetcher = policy.new_fetcher()
    assert isinstance(fetcher, SafeImageFetcher)
    assert (fetcher.timeout_s, fetcher.max_redirects, fetcher.limits) == (2.0, 1, policy.limits)
    for url in ("http://169.254.169.254/latest/meta-data/", "http://[::1]/", "http://2130706433/"):
        with pytest.raises(InvalidRequestError, match="non-public") as err:
            await inline_images([user(url)], policy)  # no fetcher given: the policy builds one
        assert err.value.param == "messages[0].content[1]"


async def test_one_failed_fetch_cancels_the_others() -> None:
    import asyncio

    started: list[str] = []
    cancelled: list[str] = []

    class Slow:
        async def fetch(self, url: str, where: str) -> tuple[str, bytes]:
            started.append(url)
            if "bad" in url:
                raise InvalidRequestError(f"{where}: nope", param=where)
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.append(url)
                raise
            return "image/png", png()

    with pytest.raises(InvalidRequestError, match="nope"):
        await asyncio.wait_for(inline_images([user("http://a.example/slow.png", "http://a.example/bad.png")], ON,
                                             Slow()), 5)
    assert cancelled == ["http://a.example/slow.png"]


async def test_image_slots_are_bounded_and_a_cancelled_waiter_leaks_none() -> None:
    import asyncio

    from unimodel.engines.base import GenerationRequest
    from unimodel.errors import ImagesBusyError
    from unimodel.gateway.images import ImagePolicyStage
    from unimodel.service.context import RequestContext
    from unimodel.service.pipeline import Call

    gate = asyncio.Event()

    class Held(FakeFetcher):
        async def fetch(self, url: str, where: str) -> tuple[str, bytes]:
            await gate.wait()
            return await super().fetch(url, where)

    async def nothing() -> bytes:
        return b""

    def call(*urls: str) -> Call:
        c = Call(RequestContext("r"), {}, nothing)
        c.engine_request = GenerationRequest(completion_id="c", served_model="m", messages=[user(*urls)])
        return c

    stage = ImagePolicyStage(ImagePolicy(allow_urls=True, max_in_flight=1, wait_s=0.05), Held())
    await stage.enter(call())  # no images: no slot taken, nothing waits
    first = asyncio.ensure_future(stage.enter(call("https://example.com/a.png")))
    await asyncio.sleep(0.01)
    assert stage.status()["in_flight"] == 1
    with pytest.raises(ImagesBusyError) as busy:
        await stage.enter(call("https://example.com/b.png"))
    assert busy.value.status_code == 503 and busy.value.retry_after == 1 and stage.status()["busy"] == 1
    waiter = asyncio.ensure_future(stage.enter(call("https://example.com/c.png")))
    await asyncio.sleep(0.01)
    waiter.cancel()  # a client that leaves while it waits
    gate.set()
    await first
    await asyncio.gather(waiter, return_exceptions=True)
    assert stage.status()["in_flight"] == 0
    await asyncio.wait_for(stage.enter(call("https://example.com/d.png")), 1)  # the one slot is free again
