"""Image limits, ``data:`` URI parsing and a decode that refuses bombs: the checks every engine shares.

Hand-written around Pillow because ``Image.open(...).load()`` on client bytes is unsafe as is: PIL's own
bomb check raises ``DecompressionBombError`` (a 500 if uncaught) only past ~179 million pixels and merely warns
past ~89 million, and ``Image.open`` with no ``formats`` tries every plugin (EPS would even start
Ghostscript). Here ``Image.open`` (lazy: it reads the header only) is limited to PNG/JPEG/WebP/GIF, the
declared size is checked against :attr:`ImageLimits.max_pixels` *before* ``load()`` decodes any pixel, and
every decoder failure becomes a 400 naming the part (``where``, e.g. ``messages[0].content[1]``), both in
the message and as ``param``.

Callers run :func:`decode_image` in a worker thread (``asyncio.to_thread``): decoding is CPU work.
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass
from typing import TYPE_CHECKING

from unimodel.errors import InvalidRequestError

if TYPE_CHECKING:
    from PIL.Image import Image

#: Pillow format name → the MIME type we report; the only formats accepted
ACCEPTED_FORMATS: dict[str, str] = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp",
                                    "GIF": "image/gif"}
_FORMAT_NAMES = "PNG, JPEG, WebP or GIF"


@dataclass(frozen=True)
class ImageLimits:
    """Caps applied to every image of a request, whichever engine serves it.

    ``max_pixels`` is 40 million: Mistral Small 4's vision encoder downsamples every image to at most
    1540 px a side (~2.4 MP), so more pixels only cost memory, while 40 MP admits default-mode photos of
    every common phone and camera (12-36 MP) and 8K frames (33 MP). One decoded RGBA image then stays under
    160 MB, and the cap is below PIL's own 89 MP warning threshold, so ours is the check that refuses.
    """

    max_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_images: int = 8

    def __post_init__(self) -> None:
        if self.max_bytes < 1 or self.max_pixels < 1 or self.max_images < 0:
            raise ValueError("image limits must be positive (max_images may be 0: no images at all)")


DEFAULT_LIMITS = ImageLimits()


def parse_data_uri(url: str, where: str, limits: ImageLimits = DEFAULT_LIMITS) -> tuple[str, bytes]:
    """``(declared mime, bytes)`` of a base64 ``data:`` URI; the size is checked before decoding the base64.

    The declared type must be empty or ``image/*``; whether the bytes really are an accepted image is
    :func:`decode_image`'s job (the bytes decide, not the label).
    """
    header, sep, payload = url.partition(",")
    if not sep or not header[:5].lower() == "data:":
        raise InvalidRequestError(f"{where}: an image data: URI must look like data:image/png;base64,...",
                                  param=where)
    params = [p.strip().lower() for p in header[5:].split(";")]
    mime, options = params[0], params[1:]
    if "base64" not in options:
        raise InvalidRequestError(f"{where}: an image data: URI must be base64-encoded "
                                  "(data:image/png;base64,...)", param=where)
    if mime and not mime.startswith("image/"):
        raise InvalidRequestError(f"{where}: a data: URI of type {mime!r} is not an image", param=where)
    # 4 base64 characters per 3 bytes; a few more for padding and stray whitespace
    if len(payload) > (limits.max_bytes + 2) // 3 * 4 + 16:
        raise InvalidRequestError(f"{where}: the image is larger than {limits.max_bytes} bytes", param=where)
    try:
        data = base64.b64decode(payload, validate=False)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequestError(f"{where}: the image data: URI is not valid base64 ({exc})",
                                  param=where) from exc
    if len(data) > limits.max_bytes:
        raise InvalidRequestError(f"{where}: the image is larger than {limits.max_bytes} bytes", param=where)
    if not data:
        raise InvalidRequestError(f"{where}: the image data: URI is empty", param=where)
    return mime, data


def sniff_image_mime(head: bytes) -> str | None:
    """The MIME type of an accepted format from its first 12 bytes, else ``None`` (a cheap early refusal)."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if len(head) >= 12 and head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "image/webp"
    return None


def decode_image(data: bytes, where: str, limits: ImageLimits = DEFAULT_LIMITS) -> Image:
    """A loaded PIL image, or a 400 naming ``where``; refuses over ``max_pixels`` before decoding a pixel."""
    from PIL import Image

    if len(data) > limits.max_bytes:
        raise InvalidRequestError(f"{where}: the image is larger than {limits.max_bytes} bytes", param=where)
    try:
        image = Image.open(io.BytesIO(data), formats=list(ACCEPTED_FORMATS))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # PIL's own check, reached first for sizes past its thresholds (the warning when warnings are errors)
        raise InvalidRequestError(f"{where}: the image declares more than {limits.max_pixels} pixels",
                                  param=where) from exc
    except Exception as exc:  # noqa: BLE001 - any failure to parse client bytes is the client's bad image
        raise InvalidRequestError(f"{where}: not a readable image ({_FORMAT_NAMES})", param=where) from exc
    width, height = image.size
    if width * height > limits.max_pixels:
        image.close()
        raise InvalidRequestError(
            f"{where}: the image is {width}x{height} = {width * height} pixels, more than the limit of "
            f"{limits.max_pixels}", param=where)
    try:
        image.load()
    except Exception as exc:  # noqa: BLE001 - decoders raise OSError, SyntaxError, ValueError, struct.error ...
        image.close()
        raise InvalidRequestError(f"{where}: not a readable image ({_FORMAT_NAMES}): the data is damaged or "
                                  "truncated", param=where) from exc
    return image


def image_mime(image: Image) -> str:
    """The MIME type of an image :func:`decode_image` returned."""
    return ACCEPTED_FORMATS[str(image.format)]


def validate_image(data: bytes, where: str, limits: ImageLimits = DEFAULT_LIMITS) -> str:
    """Decode ``data`` fully (a 400 if it is not an acceptable image), drop the pixels, return its MIME type.

    For callers that only pass the bytes on (the gateway): at most one decoded image is alive per call.
    """
    image = decode_image(data, where, limits)
    try:
        return image_mime(image)
    finally:
        image.close()
