"""The per-request context: who asked, by which route, and how the request went.

One :class:`RequestContext` is made when a request arrives and travels with it through every pipeline stage;
stages record what they decided in its typed fields (the caller, the route, the reasoning applied, the upstream
that answered …) and the service records how it ended (times, usage, finish reason, status, error type). The end-of-request observers
read it once, when the request is over (``service/observer.py``).
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from typing import Literal, Optional

from unimodel.formats.reasoning import AppliedReasoning
from unimodel.images.decode import ImageLimits
from unimodel.protocol.events import Usage

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


def new_request_id() -> str:
    """The server's own id of a request: always made here, never a client's (so it is unique: the completion
    id, the request log's ``request_id`` and the log lines are the server's to trust). 128 random bits as 32
    hex digits, the form of ``uuid4().hex`` at a quarter of its cost (it is made for every request)."""
    return os.urandom(16).hex()


def client_request_id_from(header: Optional[str]) -> Optional[str]:
    """The client's ``X-Request-Id`` when it is a sane token (letters, digits, ``._:-``, ≤128), else ``None``.
    It is only a correlation label: any client may send any value, another key's included."""
    if header and _REQUEST_ID.fullmatch(header):
        return header
    return None


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling and what their key allows (set by the auth stage; ``None`` limits mean no limit).

    ``name`` is the key's name (never the key); ``routes``/``allowed_tools`` of ``None`` allow everything.
    ``priority``: the inclusive range of request ``priority`` values the key may send to an upstream (``None``:
    the server's setting decides). ``priority_class``: the priority class its requests get when they name none
    (``None``: the server's default class); ``priority_classes``: the classes it may name in
    ``X-Unimodel-Priority`` (``None``: all of the server's).
    """

    name: str = "anonymous"
    routes: Optional[frozenset[str]] = None
    rpm: Optional[int] = None
    tpm: Optional[int] = None
    high_reasoning_rpm: Optional[int] = None
    high_reasoning_tpm: Optional[int] = None
    max_concurrent: Optional[int] = None
    max_tokens_cap: Optional[int] = None
    allowed_tools: Optional[frozenset[str]] = None
    priority: Optional[tuple[int, int]] = None
    priority_class: Optional[str] = None
    priority_classes: Optional[frozenset[str]] = None


ANONYMOUS = Caller()


@dataclass(frozen=True, slots=True)
class RouteChoice:
    """The route a request took, as the stages after the route stage need it (set by the route stage).

    ``upstreams``: the upstream names to try, in order (``None``: the server's chain); the timeouts (``None``:
    the server's); ``image_limits``: the route's caps on images, tighter than the server's (``None``: the
    server's); ``max_tokens_cap``: the lower of the route's and the key's caps (the validate stage clamps the
    server's default to it).
    """

    name: str
    upstreams: Optional[tuple[str, ...]] = None
    connect_timeout_s: Optional[float] = None
    first_token_timeout_s: Optional[float] = None
    total_timeout_s: Optional[float] = None
    image_limits: Optional[ImageLimits] = None
    max_tokens_cap: Optional[int] = None


#: what the limits stage did with a request, for the observers (``None``: no limit applied)
LimitsOutcome = Literal["refused", "unchecked"]
#: what the idempotency stage did (``None``: no ``Idempotency-Key``)
IdempotencyOutcome = Literal["first", "replayed", "unavailable"]


@dataclass(slots=True, eq=False)
class RequestContext:
    """Everything known about one request, filled in as it goes; read by observers at its end.

    ``request_id`` is the server's own id of the request, unique (never the client's); the response's id is
    :attr:`completion_id`, made from it. ``client_request_id`` is the client's sane ``X-Request-Id``, if it sent
    one: a label for correlation only (logged beside ours, echoed), never an identity. Times are
    ``time.perf_counter()`` readings (``received_at`` is also kept as wall-clock ``received_wall``). ``status``
    is the HTTP status of a refusal, of a failure mid-stream (the error's status, although the stream had
    already answered 200), or 499 when the client left; 200 otherwise.
    What the stages decided is in typed fields: the caller (auth), the route (route), the applied reasoning
    (validate; ``thinking_truncated`` when a budget cut it), the ``priority_class`` it runs in (validate: the
    ``X-Unimodel-Priority`` header, else the key's or the server's default), ``limits`` and ``idempotency``
    outcomes, the ``upstream`` that answered and the ``retries`` it took (resilience). ``tool_names``,
    ``image_count`` and ``output_bytes`` (UTF-8 bytes of text the engine produced: thinking, answer and tool
    calls; ``reasoning_bytes`` of it thinking) are the service's; ``usage`` is the engine's count, or the
    service's estimate (``estimated``) for a request that ended without one after the engine was asked;
    ``prompt_text``/``answer_text`` only with the request log's ``--log-prompts`` (raw: the request log redacts
    them before they touch disk).
    """

    request_id: str
    client_request_id: Optional[str] = None
    received_at: float = field(default_factory=time.perf_counter)
    received_wall: float = field(default_factory=time.time)
    key_name: Optional[str] = None
    caller: Caller = ANONYMOUS
    user: Optional[str] = None
    route: Optional[str] = None
    priority_class: Optional[str] = None
    model: Optional[str] = None
    stream: bool = False
    first_token_at: Optional[float] = None
    first_answer_at: Optional[float] = None
    finished_at: Optional[float] = None
    usage: Optional[Usage] = None
    finish_reason: Optional[str] = None
    status: int = 200
    error_type: Optional[str] = None
    error_message: Optional[str] = None
    reasoning: Optional[AppliedReasoning] = None
    thinking_truncated: bool = False
    limits: Optional[LimitsOutcome] = None
    idempotency: Optional[IdempotencyOutcome] = None
    upstream: Optional[str] = None
    retries: Optional[int] = None
    tool_names: list[str] = field(default_factory=list)
    output_bytes: int = 0
    reasoning_bytes: int = 0
    image_count: Optional[int] = None
    prompt_text: Optional[str] = None
    answer_text: Optional[str] = None
    observed: bool = False

    @property
    def effort(self) -> Optional[str]:
        """The reasoning effort applied (``None``: refused before validation)."""
        return None if self.reasoning is None else self.reasoning.effort

    @property
    def completion_id(self) -> str:
        return "chatcmpl-" + self.request_id

    def ms_since_arrival(self, at: Optional[float]) -> Optional[float]:
        return None if at is None else round((at - self.received_at) * 1000.0, 3)

    @property
    def ttft_ms(self) -> Optional[float]:
        return self.ms_since_arrival(self.first_token_at)

    @property
    def latency_ms(self) -> Optional[float]:
        return self.ms_since_arrival(self.finished_at)
