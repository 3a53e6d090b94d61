"""The shared image checks: data: URI parsing, accepted formats, and the pixel cap before decode (bombs)."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import pytest
from PIL import Image

from unimodel.errors import InvalidRequestError
from unimodel.images.decode import (
    ImageLimits,
    decode_image,
    image_mime,
    parse_data_uri,
    sniff_image_mime,
    validate_image,
)

WHERE = "messages[0].content[1]"


def encoded(fmt: str, size: tuple[int, int] = (40, 30), mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color="red" if mode == "RGB" else 1).save(buf, format=fmt)
    return buf.getvalue()


def png_header_only(width: int, height: int, idat: bytes | None = None) -> bytes:
    """A PNG that declares ``width``x``height`` with (by default) an empty compressed stream: a few dozen bytes."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"") if idat is None else idat)
            + chunk(b"IEND", b""))


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


@pytest.mark.parametrize("fmt,mime", [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp"),
                                      ("GIF", "image/gif")])
def test_accepted_formats_decode(fmt: str, mime: str) -> None:
    data = encoded(fmt)
    image = decode_image(data, WHERE)
    assert image.size == (40, 30) and image_mime(image) == mime
    assert sniff_image_mime(data[:12]) == mime
    assert validate_image(data, WHERE) == mime


@pytest.mark.parametrize("fmt", ["BMP", "TIFF", "PPM", "ICO"])
def test_other_formats_are_refused(fmt: str) -> None:
    data = encoded(fmt, (16, 16))
    assert sniff_image_mime(data[:12]) is None
    with pytest.raises(InvalidRequestError, match="not a readable image") as err:
        decode_image(data, WHERE)
    assert err.value.param == WHERE and WHERE in err.value.message


@pytest.mark.parametrize("data", [b"", b"hello", b"<html></html>", encoded("PNG")[:60], encoded("JPEG")[:200]],
                         ids=["empty", "text", "html", "truncated-png", "truncated-jpeg"])
def test_unreadable_bytes_are_a_400(data: bytes) -> None:
    with pytest.raises(InvalidRequestError, match="not a readable image") as err:
        decode_image(data, WHERE)
    assert err.value.status_code == 400 and err.value.param == WHERE


def test_decompression_bomb_of_a_hundred_bytes_is_a_400() -> None:
    bomb = png_header_only(20000, 20000)  # 400 megapixels, past PIL's own DecompressionBombError threshold
    assert len(data_uri(bomb)) < 140
    with pytest.raises(InvalidRequestError, match="pixels") as err:
        decode_image(bomb, WHERE)
    assert err.value.status_code == 400 and err.value.param == WHERE and WHERE in err.value.message


@pytest.mark.parametrize("size", [(10000, 10000), (8000, 8000)], ids=["past-pil-warning", "under-pil-warning"])
def test_pixel_cap_below_pils_thresholds(size: tuple[int, int]) -> None:
    # 100 MP: PIL warns (an error under pytest), 64 MP: PIL is silent and only our 40 MP cap refuses it
    with pytest.raises(InvalidRequestError, match="pixels") as err:
        decode_image(png_header_only(*size), WHERE)
    assert err.value.param == WHERE


def test_pixel_cap_applies_before_any_pixel_is_decoded() -> None:
    damaged = png_header_only(100, 100, idat=b"not zlib at all")
    with pytest.raises(InvalidRequestError, match="damaged or truncated"):
        decode_image(damaged, WHERE)  # within the cap: load() runs and fails
    with pytest.raises(InvalidRequestError, match="10000 pixels, more than the limit of 9999"):
        decode_image(damaged, WHERE, ImageLimits(max_pixels=9999))  # over the cap: refused from the header


def test_byte_cap_on_raw_bytes() -> None:
    with pytest.raises(InvalidRequestError, match="larger than 100 bytes"):
        decode_image(encoded("PNG", (200, 200)) + b"\0" * 100, WHERE, ImageLimits(max_bytes=100))


def test_parse_data_uri() -> None:
    data = encoded("PNG")
    assert parse_data_uri(data_uri(data), WHERE) == ("image/png", data)
    assert parse_data_uri("DATA:Image/PNG;Base64," + base64.b64encode(data).decode(), WHERE) == ("image/png", data)
    assert parse_data_uri("data:;base64," + base64.b64encode(data).decode(), WHERE) == ("", data)
    assert parse_data_uri("data:image/png;name=x.png;base64," + base64.b64encode(data).decode(), WHERE)[1] == data


@pytest.mark.parametrize("uri,match", [
    ("data:image/png,rawbytes", "base64"),
    ("data:image/png;base64", "must look like"),
    ("http://x/y.png", "must look like"),
    ("data:text/plain;base64,aGVsbG8=", "not an image"),
    ("data:image/png;base64,a", "not valid base64"),
    ("data:image/png;base64,", "empty"),
])
def test_bad_data_uris_are_a_400(uri: str, match: str) -> None:
    with pytest.raises(InvalidRequestError, match=match) as err:
        parse_data_uri(uri, WHERE)
    assert err.value.param == WHERE and WHERE in err.value.message


def test_data_uri_size_is_checked_before_decoding_the_base64() -> None:
    limits = ImageLimits(max_bytes=3000)
    ok = "A" * 4000  # decodes to exactly 3000 bytes
    assert len(parse_data_uri("data:image/png;base64," + ok, WHERE, limits)[1]) == 3000
    # "!" is not base64: a refusal that names the size proves the payload was never decoded
    with pytest.raises(InvalidRequestError, match="larger than 3000 bytes"):
        parse_data_uri("data:image/png;base64," + "!" * 5000, WHERE, limits)
    with pytest.raises(InvalidRequestError, match="larger than 3000 bytes"):
        parse_data_uri("data:image/png;base64," + "A" * 4004, WHERE, limits)


def test_limits_are_validated() -> None:
    assert ImageLimits().max_pixels < Image.MAX_IMAGE_PIXELS  # our cap, not PIL's warning, refuses first
    with pytest.raises(ValueError):
        ImageLimits(max_bytes=0)
