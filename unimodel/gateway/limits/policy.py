"""What limits apply to one call: which buckets it draws from, and how much it takes from each.

A call draws from up to six buckets and one concurrency counter, all scoped to its API key:

* the key's requests and tokens per window (the key's own ``rpm``/``tpm`` from the config file, else the
  server's ``--rpm``/``--tpm``);
* the end user's (the request's ``user`` field, scoped to the key, so one tenant's user ids never share a
  bucket with another's): ``--user-rpm``/``--user-tpm``. They have their own defaults, off unless set: the
  key's own limit would be no limit at all per user, since the key's bucket already holds every user of it;
* the high-reasoning quota (``high_reasoning_rpm``/``_tpm`` per key, else ``--high-reasoning-rpm``/``-tpm``),
  drawn only by requests charged at or above ``--high-reasoning-effort`` (none < minimal < low < medium <
  high), so a request with ``reasoning_effort: "none"`` passes when that quota is spent. The level charged is
  the one the model runs at (:attr:`~unimodel.formats.reasoning.AppliedReasoning.charged`): ``low`` with a
  ``thinking_budget`` beyond ``low``'s is charged as the level whose budget covers it;
* in-flight requests per key (``max_concurrent``, else ``--max-concurrent``).

Two plans, taken at two points of the pipeline: :func:`request_plan` (the key's requests and its in-flight
slot) needs nothing of the body, so it is taken before the body is read or parsed; :func:`token_plan` (the
user's and the high-reasoning requests, and every token limit) needs the validated request.

Token buckets take a reservation at admission: an estimate of the prompt (``service/usage_estimate.py``) plus
the request's ``max_tokens``, else the server's ``default_max_tokens``, else ``--limits-token-reservation``
(times ``n``, the choices it asks for: each writes its own answer, the prompt counts once),
clamped to the bucket's size (a request estimated beyond a bucket needs it full; an explicit ``max_tokens``
larger than a bucket is a 400: no wait would ever let it in). The stage settles it with the usage when the
request ends. A key's own limit of 0 refuses that kind of request outright (a 429 without ``Retry-After``,
marked ``x-should-retry: false`` by the stage): e.g. ``high_reasoning_rpm: 0`` keeps a key to low efforts.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Optional

from unimodel.errors import InvalidRequestError, RateLimitError
from unimodel.protocol.effort import EFFORTS, Effort, effort_rank
from unimodel.service.context import Caller

if TYPE_CHECKING:
    from unimodel.engines.base import GenerationRequest

Unit = Literal["requests", "tokens"]
Scope = Literal["key", "user", "high reasoning"]

_OF: dict[Scope, str] = {"key": "", "user": " per user", "high reasoning": " for high reasoning"}
_PLAIN_NAME = re.compile(r"[A-Za-z0-9._:\-]{1,64}")


@dataclass(frozen=True, slots=True)
class LimitDefaults:
    """The server's limits for every key without its own (``None``: no limit), and how they are counted."""

    rpm: Optional[int] = None
    tpm: Optional[int] = None
    user_rpm: Optional[int] = None
    user_tpm: Optional[int] = None
    high_reasoning_rpm: Optional[int] = None
    high_reasoning_tpm: Optional[int] = None
    max_concurrent: Optional[int] = None
    high_reasoning_effort: Effort = "high"
    window_s: float = 60.0
    token_reservation: int = 4096

    def __post_init__(self) -> None:
        if self.high_reasoning_effort not in EFFORTS:
            raise ValueError(f"unknown reasoning effort '{self.high_reasoning_effort}'")
        if self.window_s <= 0:
            raise ValueError("the rate-limit window must be positive")


@dataclass(frozen=True, slots=True)
class Bucket:
    """One limit a call draws from: ``limit`` units per window, of which the call takes ``cost``.

    ``id`` names the bucket in the store; every id of one key shares the ``{key}`` hash tag, so a Redis
    Cluster keeps a call's buckets in one slot (one script touches them all).
    """

    id: str
    unit: Unit
    scope: Scope
    limit: int
    cost: int


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything one call takes: its buckets (requests first), and a concurrency slot when capped. ``key`` is
    the key's name, for messages."""

    key: str
    buckets: tuple[Bucket, ...]
    window_s: float
    concurrency_id: Optional[str] = None
    max_concurrent: int = 0

    @property
    def has_tokens(self) -> bool:
        return any(b.unit == "tokens" for b in self.buckets)


def store_name(name: str) -> str:
    """A key name as it appears in store ids: itself when plain, else a digest (no braces, no odd bytes)."""
    if _PLAIN_NAME.fullmatch(name):
        return name
    return "h" + hashlib.blake2b(name.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()


def _user_id(user: str) -> str:
    return hashlib.blake2b(user.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()


def is_high_reasoning(effort: str, threshold: str) -> bool:
    """Whether a call charged at ``effort`` draws from the high-reasoning quota."""
    return effort_rank(effort) >= effort_rank(threshold)


def _pick(own: Optional[int], default: Optional[int]) -> Optional[int]:
    return own if own is not None else default


def request_plan(key_name: Optional[str], caller: Caller, defaults: LimitDefaults) -> Optional[Plan]:
    """What a call takes before its body is read: a request from the key's ``rpm`` and an in-flight slot
    (``None``: neither applies). A key's ``rpm`` or ``tpm`` of 0 refuses it here."""
    rpm = _pick(caller.rpm, defaults.rpm)
    max_concurrent = _pick(caller.max_concurrent, defaults.max_concurrent)
    name = key_name or caller.name
    _refuse_zero(name, defaults, ((rpm, "requests"), (_pick(caller.tpm, defaults.tpm), "tokens")))
    if rpm is None and max_concurrent is None:
        return None
    tag = _tag(name)
    buckets = (Bucket(f"{tag}:rpm", "requests", "key", rpm, 1),) if rpm is not None else ()
    return Plan(name, buckets, defaults.window_s, f"{tag}:inflight" if max_concurrent is not None else None,
                max_concurrent or 0)


def token_plan(key_name: Optional[str], caller: Caller, user: Optional[str], request: "GenerationRequest",
               defaults: LimitDefaults, *, effort: str, prompt_tokens: Callable[[], int]) -> Optional[Plan]:
    """What a validated call takes: a request from the end user's and the high-reasoning ``rpm``, and its
    tokens (``prompt_tokens()``, an estimate asked only when a token limit applies, plus what it may write) from
    every token limit (``None``: none applies, the common fast path). ``effort`` is the level it is charged at
    (:attr:`~unimodel.formats.reasoning.AppliedReasoning.charged`)."""
    tpm = _pick(caller.tpm, defaults.tpm)
    high = is_high_reasoning(effort, defaults.high_reasoning_effort)
    hrpm = _pick(caller.high_reasoning_rpm, defaults.high_reasoning_rpm) if high else None
    htpm = _pick(caller.high_reasoning_tpm, defaults.high_reasoning_tpm) if high else None
    urpm = defaults.user_rpm if user else None
    utpm = defaults.user_tpm if user else None
    if tpm is None and hrpm is None and htpm is None and urpm is None and utpm is None:
        return None

    name = key_name or caller.name
    _refuse_zero(name, defaults, ((urpm, "requests per user"), (utpm, "tokens per user"),
                                  (hrpm, "high-reasoning requests"), (htpm, "high-reasoning tokens")))
    tag = _tag(name)
    user_tag = f"{tag}:u:{_user_id(user)}" if user else ""
    output, explicit = _reservation(request, defaults)
    requests: list[tuple[Optional[int], str, Scope]] = [
        (urpm, f"{user_tag}:rpm", "user"), (hrpm, f"{tag}:hr:rpm", "high reasoning")]
    tokens: list[tuple[Optional[int], str, Scope]] = [
        (tpm, f"{tag}:tpm", "key"), (utpm, f"{user_tag}:tpm", "user"), (htpm, f"{tag}:hr:tpm", "high reasoning")]
    buckets = [Bucket(bucket_id, "requests", scope, limit, 1) for limit, bucket_id, scope in requests
               if limit is not None]
    prompt = prompt_tokens() if tpm is not None or utpm is not None or htpm is not None else 0
    for limit, bucket_id, scope in tokens:
        if limit is None:
            continue
        if explicit and output > limit:
            asked = f"max_tokens ({output})" if request.n == 1 else \
                f"max_tokens × n ({request.max_tokens} × {request.n} = {output})"
            raise InvalidRequestError(
                f"{asked} is more than key '{name}' may use: its limit is {limit} tokens per "
                f"{per_window(defaults.window_s)}{_OF[scope]}; send a smaller max_tokens"
                + (" or n" if request.n > 1 else "")
                + (" or a lower reasoning_effort" if scope == "high reasoning" else "") + ".", param="max_tokens")
        # an estimate beyond the bucket waits for a full one; the real usage settles the rest as a debt
        buckets.append(Bucket(bucket_id, "tokens", scope, limit, min(prompt + output, limit)))
    return Plan(name, tuple(buckets), defaults.window_s)


def _refuse_zero(name: str, defaults: LimitDefaults, limits: Iterable[tuple[Optional[int], str]]) -> None:
    for limit, what in limits:
        if limit == 0:  # a key's own 0: this kind of request is not for it; no wait would help
            raise RateLimitError(
                f"Key '{name}' has no quota for {what}"
                + (f"; send a reasoning_effort below '{defaults.high_reasoning_effort}'" if "high" in what else "")
                + ".")


def _tag(name: str) -> str:
    return "{" + store_name(name) + "}"


def _reservation(request: "GenerationRequest", defaults: LimitDefaults) -> tuple[int, bool]:
    """Output tokens to reserve (for every one of its ``n`` choices), and whether the client asked for that many
    itself."""
    if request.max_tokens is not None:
        return request.max_tokens * request.n, True
    if request.default_max_tokens is not None:
        return request.default_max_tokens * request.n, False
    return defaults.token_reservation * request.n, False


def per_window(window_s: float) -> str:
    return "minute" if window_s == 60 else f"{window_s:g} s"


def describe(bucket: Bucket, window_s: float) -> str:
    """``requests per minute for high reasoning``: what a refusal names."""
    return f"{bucket.unit} per {per_window(window_s)}{_OF[bucket.scope]}"
