"""One image policy for every engine, applied before any engine sees a request.

Every ``image_url`` part is checked here: the number of images per request, ``data:`` URIs parsed and fully
decoded under :class:`~unimodel.images.decode.ImageLimits` (so a decompression bomb is a 400 here, not a 500
in an engine), and http(s) URLs either refused (the default; ``--allow-image-urls`` turns them on) or fetched
by the gateway itself with :class:`~unimodel.images.fetch.SafeImageFetcher` and passed on as ``data:`` URIs,
so no upstream ever fetches a client's URL. Decoding runs in worker threads, one image at a time per request (at most one
decoded image alive per request); fetches run concurrently under their own deadline.

The stage runs after the limits (a refused request never fetches or decodes a byte), and bounds the image work
of the whole server: at most ``max_in_flight`` requests fetch or decode at once (each holds one slot for all
its images); a request with images waits at most ``wait_s`` for a slot, then gets a 503 ``images_busy`` with
``Retry-After``, so a flood of large images costs a bounded amount of memory and CPU and never queues without
end. A request without images takes no slot.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import math
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol, TypeVar

from unimodel.errors import ImagesBusyError, InvalidRequestError, UnsupportedFeatureError
from unimodel.images.decode import ImageLimits, parse_data_uri, validate_image
from unimodel.images.fetch import SafeImageFetcher
from unimodel.protocol.openai import ImagePart, Message
from unimodel.service.pipeline import Call, Stage

_T = TypeVar("_T")


class ImageFetcher(Protocol):
    """What :func:`inline_images` needs of a fetcher (:class:`SafeImageFetcher`, or a fake in tests)."""

    async def fetch(self, url: str, where: str) -> tuple[str, bytes]: ...


@dataclass(frozen=True)
class ImagePolicy:
    """Whether image URLs are fetched (else refused), and the limits every image of a request is held to."""

    allow_urls: bool = False
    limits: ImageLimits = field(default_factory=ImageLimits)
    fetch_timeout_s: float = 10.0
    max_redirects: int = 3
    max_in_flight: int = 4  # requests fetching or decoding images at once, server-wide
    wait_s: float = 5.0  # the longest a request waits for one of those slots (then 503)

    def __post_init__(self) -> None:
        if self.max_in_flight < 1 or self.wait_s < 0:
            raise ValueError("max_in_flight must be >= 1 and wait_s >= 0")

    def new_fetcher(self) -> SafeImageFetcher:
        """A :class:`SafeImageFetcher` with this policy's limits, deadline and redirect cap."""
        return SafeImageFetcher(limits=self.limits, timeout_s=self.fetch_timeout_s,
                                max_redirects=self.max_redirects)


def _image_parts(messages: list[Message]) -> list[tuple[int, int, ImagePart]]:
    return [(i, j, part) for i, m in enumerate(messages) if isinstance(m.content, list)
            for j, part in enumerate(m.content) if isinstance(part, ImagePart)]


async def inline_images(messages: list[Message], policy: ImagePolicy,
                        fetcher: ImageFetcher | None = None) -> list[Message]:
    """``messages`` with every image checked and every http(s) image URL replaced by a ``data:`` URI.

    Returns new :class:`Message` objects where a URL was replaced and leaves the input untouched; when no
    part changes (no images, or only valid ``data:`` URIs) it returns ``messages`` itself. ``fetcher``
    defaults to ``policy.new_fetcher()``. Raises a 400 naming the part (``messages[i].content[j]``).
    """
    parts = _image_parts(messages)
    if not parts:
        return messages
    limits = policy.limits
    if len(parts) > limits.max_images:
        raise InvalidRequestError(f"the request has {len(parts)} images; at most {limits.max_images} are "
                                  "allowed per request", param="messages")
    to_fetch: dict[str, str] = {}  # url → where (the first part that names it)
    data_uris: dict[str, str] = {}
    for i, j, part in parts:
        url, where = part.image_url.url, f"messages[{i}].content[{j}]"
        scheme = url.split(":", 1)[0].strip().lower() if ":" in url else ""
        if scheme == "data":
            data_uris.setdefault(url, where)
        elif scheme in ("http", "https"):
            if not policy.allow_urls:
                raise UnsupportedFeatureError(
                    f"{where}: image URLs are turned off on this server (--allow-image-urls turns them on); send "
                    "the image as a data: URI", param=where)
            to_fetch.setdefault(url, where)
        else:
            raise InvalidRequestError(f"{where}: an image_url must be a data: URI or an http(s) URL", param=where)

    for url, where in data_uris.items():
        await asyncio.to_thread(_check_data_uri, url, where, limits)
    if not to_fetch:
        return messages

    active = fetcher if fetcher is not None else policy.new_fetcher()
    fetched = await _all_or_nothing([active.fetch(url, where) for url, where in to_fetch.items()])
    inlined: dict[str, str] = {}
    for (url, where), (_, data) in zip(to_fetch.items(), fetched):
        mime = await asyncio.to_thread(validate_image, data, where, limits)  # the bytes decide the type
        inlined[url] = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
    return _with_urls_replaced(messages, inlined)


def _check_data_uri(url: str, where: str, limits: ImageLimits) -> None:
    _, data = parse_data_uri(url, where, limits)
    validate_image(data, where, limits)


async def _all_or_nothing(calls: list[Awaitable[_T]]) -> list[_T]:
    """Run ``calls`` concurrently; on the first failure cancel the rest and raise that failure."""
    tasks = [asyncio.ensure_future(c) for c in calls]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _with_urls_replaced(messages: list[Message], inlined: dict[str, str]) -> list[Message]:
    out: list[Message] = []
    for message in messages:
        if not isinstance(message.content, list) or not any(
                isinstance(p, ImagePart) and p.image_url.url in inlined for p in message.content):
            out.append(message)
            continue
        content = [
            p.model_copy(update={"image_url": p.image_url.model_copy(update={"url": inlined[p.image_url.url]})})
            if isinstance(p, ImagePart) and p.image_url.url in inlined else p
            for p in message.content
        ]
        out.append(message.model_copy(update={"content": content}))
    return out


class ImagePolicyStage(Stage):
    """The pipeline stage: every request's images go through :func:`inline_images` before any engine."""

    name = "images"

    def __init__(self, policy: ImagePolicy, fetcher: ImageFetcher | None = None) -> None:
        self.policy = policy
        self.fetcher = fetcher or policy.new_fetcher()
        self._for_route: dict[str, ImagePolicy] = {}  # the policy with a route's caps, made once per route
        self._slots: Optional[asyncio.Semaphore] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self.in_flight = 0  # requests fetching or decoding now
        self.busy = 0  # requests refused for want of a slot

    def status(self) -> dict[str, Any]:
        return {"in_flight": self.in_flight, "max_in_flight": self.policy.max_in_flight, "busy": self.busy}

    async def enter(self, call: Call) -> None:
        request = call.require_engine_request()
        if not _image_parts(request.messages):
            return
        policy = self.policy
        if call.route is not None and call.route.image_limits is not None:  # a route's tighter caps
            policy = self._for_route.get(call.route.name) or self._tighten(call.route.name, call.route.image_limits)
        slots = self._slots_now()
        if slots.locked():
            try:  # in this task (no wait_for task): a cancellation never leaks a slot (Semaphore.acquire)
                async with asyncio.timeout(self.policy.wait_s):
                    await slots.acquire()
            except TimeoutError:
                self.busy += 1
                raise ImagesBusyError("The server is busy with other requests' images; please retry shortly.",
                                      retry_after=max(1, math.ceil(self.policy.wait_s))) from None
        else:
            await slots.acquire()  # a free slot: taken at once, without suspending
        self.in_flight += 1
        try:
            messages = await inline_images(request.messages, policy, self.fetcher)
        finally:
            self.in_flight -= 1
            slots.release()
        if messages is not request.messages:
            call.engine_request = dataclasses.replace(request, messages=messages)

    def _slots_now(self) -> asyncio.Semaphore:
        """The slots, made for the running event loop (a semaphore belongs to the loop it first waits on)."""
        loop = asyncio.get_running_loop()
        if self._slots is None or self._loop is not loop:
            self._slots, self._loop = asyncio.Semaphore(self.policy.max_in_flight), loop
        return self._slots

    def _tighten(self, route: str, limits: ImageLimits) -> ImagePolicy:
        policy = self._for_route[route] = dataclasses.replace(self.policy, limits=limits)
        return policy
