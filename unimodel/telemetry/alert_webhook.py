"""Alert webhooks: a JSON POST per alert event, sent by one background task, never in a request's way.

:meth:`WebhookSender.submit` only puts the event in a bounded queue (``max_queue``) and returns: when the
queue is full the event is dropped and counted, with a warning at most once a minute. One worker task sends
the events in order (a firing before its resolution) through one ``aiohttp.ClientSession`` (the server's one
HTTP client library): each try is bounded by ``timeout_s`` in total (connect, send and the whole answer), a
network error, a timeout, 408, 429 or a 5xx is tried again ``retries`` times after exponential backoff, any
other answer ends it. Redirects are not followed; no proxy or credentials are taken from the environment, no
cookies kept; HTTPS is verified against certifi's CAs (:func:`unimodel.tls.client_context`).
The URLs come from the operator's config (``alerts[].webhook``, ``alert_webhook_url``), never from a request;
they are not logged, since webhook URLs often carry a token.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Optional

import aiohttp

from unimodel.tls import client_context

log = logging.getLogger("unimodel.alerts")

_RETRYABLE = {408, 425, 429}
_WARN_EVERY_S = 60.0


class WebhookSender:
    def __init__(self, *, timeout_s: float = 3.0, retries: int = 3, backoff_s: float = 0.5,
                 max_queue: int = 100, client: Optional[aiohttp.ClientSession] = None) -> None:
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self._queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue(max_queue)
        self._client = client
        self._own_client = client is None
        self._worker: Optional[asyncio.Task[None]] = None
        self._last_warning = -_WARN_EVERY_S
        self.delivered = 0
        self.failed = 0  # given up after every try
        self.dropped = 0  # never tried: the queue was full
        self.attempts = 0

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def submit(self, url: str, payload: dict[str, Any]) -> bool:
        """Queue one POST; ``False`` when the queue is full and the event was dropped. Never blocks."""
        try:
            self._queue.put_nowait((url, payload))
            return True
        except asyncio.QueueFull:
            self.dropped += 1
            now = time.monotonic()
            if now - self._last_warning >= _WARN_EVERY_S:
                self._last_warning = now
                log.warning("alert_webhook=dropped alert=%s dropped_total=%d reason=queue_full",
                            payload.get("alert"), self.dropped)
            return False

    async def start(self) -> None:
        if self._client is None:
            self._client = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=client_context(trust_env=False)),
                timeout=aiohttp.ClientTimeout(total=self.timeout_s), trust_env=False,
                cookie_jar=aiohttp.DummyCookieJar())
        self._worker = asyncio.create_task(self._work(), name="alert-webhooks")

    async def aclose(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None
        if self.pending:
            log.warning("alert_webhook=unsent events=%d reason=shutdown", self.pending)
        if self._client is not None and self._own_client:
            await self._client.close()
            self._client = None

    async def _work(self) -> None:
        while True:
            url, payload = await self._queue.get()
            try:
                await self._deliver(url, payload)
            except Exception:  # the worker outlives any one event
                log.exception("alert_webhook=error alert=%s", payload.get("alert"))

    async def _deliver(self, url: str, payload: dict[str, Any]) -> None:
        assert self._client is not None
        reason = ""
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))
            self.attempts += 1
            try:
                status = await asyncio.wait_for(self._post(url, payload), self.timeout_s)
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                reason = type(exc).__name__
                continue
            if status < 300:
                self.delivered += 1
                return
            reason = f"status_{status}"
            if status < 500 and status not in _RETRYABLE:
                break
        self.failed += 1
        log.warning("alert_webhook=failed alert=%s state=%s tries=%d reason=%s", payload.get("alert"),
                    payload.get("state"), attempt + 1, reason)

    async def _post(self, url: str, payload: dict[str, Any]) -> int:
        """One POST; its status (the answer's body is read, so the connection can be reused)."""
        assert self._client is not None
        async with self._client.post(url, json=payload, allow_redirects=False) as response:
            await response.read()
            return response.status
