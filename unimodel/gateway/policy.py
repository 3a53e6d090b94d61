"""What an operator writes in the config file about keys and routes: the ``keys:`` records and the ``routes:``
mapping, as pydantic models, and the shipped routes they are merged over.

Only the schema lives here (pydantic and the standard library), so that :mod:`unimodel.config` can type its
settings with it and refuse a bad file at start-up with the setting's path; the stages that apply it are
:mod:`unimodel.gateway.auth` and :mod:`unimodel.gateway.routes`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from unimodel.gateway.keyhash import KEY_PREFIX, PREFIX_CHARS, parse_hash
from unimodel.protocol.effort import Effort, effort_rank
from unimodel.service.context import Caller
# re-exported for the settings, which import no module of the service
from unimodel.service.priority import DEFAULT_PRIORITY_CLASS as DEFAULT_PRIORITY_CLASS
from unimodel.service.priority import DEFAULT_PRIORITY_CLASSES as DEFAULT_PRIORITY_CLASSES

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
ToolName = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")]
Temperature = Annotated[float, Field(ge=0.0, le=2.0)]

#: names the plain ``--api-key`` keys get (``key-`` and 8 hex digits: ``gateway/keys.py::plain_key_name``; the
#: ``key-N`` of older versions stays reserved, so an old log's names never meet a named key) and the caller
#: without keys
RESERVED_KEY_NAME = r"^(key-\d+|key-[0-9a-f]{8}|anonymous)$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


INT64 = 2**63
#: the most priority classes a server (and so a key) may have
MAX_PRIORITY_CLASSES = 64


class PriorityRange(_Strict):
    """The request ``priority`` values a key may send (vLLM's priority scheduling serves lower values first),
    both ends included."""

    min: int = Field(default=0, ge=-INT64, le=INT64 - 1)
    max: int = Field(default=0, ge=-INT64, le=INT64 - 1)

    @model_validator(mode="after")
    def _ordered(self) -> "PriorityRange":
        if self.min > self.max:
            raise ValueError("priority min is above max")
        return self


class KeyPolicy(_Strict):
    """One named key: its hash (never the key), and what it may do (``None``: the server's default, or no
    limit). ``rpm``/``tpm`` and the high-reasoning pair are read by the limits stage; ``routes`` and
    ``allowed_tools`` (``None``: all) and ``max_tokens_cap`` by the route stage; ``priority`` (the request
    priorities it may send to an upstream; ``None``: as ``--allow-priority`` says), ``priority_class`` (the class
    its requests get when they name none; ``None``: the server's ``default_priority_class``) and
    ``priority_classes`` (those it may name in ``X-Unimodel-Priority``; ``None``: all) by the validate stage.
    That the classes exist is the settings' check (they know the server's classes)."""

    name: Name
    key_hash: str
    prefix: Optional[str] = Field(default=None, pattern=rf"^{KEY_PREFIX}[A-Za-z0-9_-]{{{PREFIX_CHARS}}}$")
    routes: Optional[list[Name]] = Field(default=None, min_length=1)
    rpm: Optional[int] = Field(default=None, ge=0)
    tpm: Optional[int] = Field(default=None, ge=0)
    high_reasoning_rpm: Optional[int] = Field(default=None, ge=0)
    high_reasoning_tpm: Optional[int] = Field(default=None, ge=0)
    max_concurrent: Optional[int] = Field(default=None, ge=1)
    max_tokens_cap: Optional[int] = Field(default=None, ge=1)
    allowed_tools: Optional[list[ToolName]] = None
    priority: Optional[PriorityRange] = None
    priority_class: Optional[Name] = None
    priority_classes: Optional[list[Name]] = Field(default=None, min_length=1, max_length=MAX_PRIORITY_CLASSES)
    revoked: bool = False

    @field_validator("key_hash")
    @classmethod
    def _parseable(cls, v: str) -> str:
        parse_hash(v)
        return v.strip()

    @model_validator(mode="after")
    def _own_class_allowed(self) -> "KeyPolicy":
        classes = self.priority_classes
        if self.priority_class is not None and classes is not None and self.priority_class not in classes:
            raise ValueError(f"priority_class '{self.priority_class}' is not among its priority_classes")
        return self

    def caller(self) -> Caller:
        return Caller(
            name=self.name, routes=None if self.routes is None else frozenset(self.routes), rpm=self.rpm,
            tpm=self.tpm, high_reasoning_rpm=self.high_reasoning_rpm, high_reasoning_tpm=self.high_reasoning_tpm,
            max_concurrent=self.max_concurrent, max_tokens_cap=self.max_tokens_cap,
            allowed_tools=None if self.allowed_tools is None else frozenset(self.allowed_tools),
            priority=None if self.priority is None else (self.priority.min, self.priority.max),
            priority_class=self.priority_class,
            priority_classes=None if self.priority_classes is None else frozenset(self.priority_classes))


def check_key_names(keys: list[KeyPolicy]) -> None:
    """Names are unique and none is one the plain keys or the keyless caller get."""
    seen: set[str] = set()
    for key in keys:
        if re.fullmatch(RESERVED_KEY_NAME, key.name):
            raise ValueError(f"the key name '{key.name}' is reserved (key-N and key- with 8 hex digits name the "
                             "--api-key keys)")
        if key.name in seen:
            raise ValueError(f"two keys are named '{key.name}'")
        seen.add(key.name)


def check_priority_classes(classes: Mapping[str, int], default: str, keys: Sequence[KeyPolicy]) -> None:
    """The server's priority classes are named like keys and routes, at most :data:`MAX_PRIORITY_CLASSES`, each
    ranked within vLLM's 64-bit ``priority``; the default class is one of them; every key names only classes that
    exist, and may use the class its requests get when they name none. ``ValueError`` says what is wrong."""
    if not classes:
        raise ValueError("priority_classes needs at least one class")
    if len(classes) > MAX_PRIORITY_CLASSES:
        raise ValueError(f"at most {MAX_PRIORITY_CLASSES} priority classes")
    for name, rank in classes.items():
        if not _valid_name(name):
            raise ValueError(f"the priority class name '{name[:64]}' must be letters, digits and ._- (at most 64)")
        if not -INT64 <= rank < INT64:
            raise ValueError(f"the priority class '{name}' has a rank outside vLLM's 64-bit priority")
    known = ", ".join(classes)
    if default not in classes:
        raise ValueError(f"default_priority_class '{default[:64]}' is not a priority class (classes: {known})")
    for key in keys:
        named = [key.priority_class] if key.priority_class is not None else []
        missing = [c for c in [*named, *(key.priority_classes or ())] if c not in classes]
        if missing:
            raise ValueError(f"the key '{key.name}' names the priority class '{missing[0]}', which does not exist "
                             f"(classes: {known})")
        own = key.priority_class or default
        if key.priority_classes is not None and own not in key.priority_classes:
            raise ValueError(f"the key '{key.name}' may not use '{own}', the class its requests get by default: set "
                             "its priority_class to one of its priority_classes")


class RouteTimeouts(_Strict):
    """Deadlines for one route's engine call, in seconds (``None``: the server's default); the resilience
    stage applies them."""

    connect_s: Optional[float] = Field(default=None, gt=0, le=3600)
    first_token_s: Optional[float] = Field(default=None, gt=0, le=86400)
    total_s: Optional[float] = Field(default=None, gt=0, le=86400)


class RoutePolicy(_Strict):
    """A named route's defaults and caps. A value the client sent explicitly beyond a cap is refused with a
    400 naming the field; a default is clamped to the caps. ``tools``: ``all``, ``none``, or the tool names
    allowed. ``upstreams``: upstream names in the order to try (``None``: the server's chain)."""

    name: str = "default"
    default_reasoning_effort: Optional[Effort] = None
    max_reasoning_effort: Optional[Effort] = None
    max_tokens: Optional[int] = Field(default=None, ge=1)
    default_temperature: Optional[Temperature] = None
    min_temperature: Optional[Temperature] = None
    max_temperature: Optional[Temperature] = None
    images: bool = True
    max_images: Optional[int] = Field(default=None, ge=0, le=256)
    max_image_bytes: Optional[int] = Field(default=None, ge=1024)
    max_image_pixels: Optional[int] = Field(default=None, ge=1024)
    tools: Union[Literal["all", "none"], list[ToolName]] = "all"
    timeouts: RouteTimeouts = Field(default_factory=RouteTimeouts)
    upstreams: Optional[list[Name]] = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> "RoutePolicy":
        low, high = self.default_reasoning_effort, self.max_reasoning_effort
        if low is not None and high is not None and effort_rank(low) > effort_rank(high):
            raise ValueError(f"default_reasoning_effort '{low}' is above max_reasoning_effort '{high}'")
        lo, default, hi = self.min_temperature, self.default_temperature, self.max_temperature
        if lo is not None and hi is not None and lo > hi:
            raise ValueError("min_temperature is above max_temperature")
        if default is not None and ((lo is not None and default < lo) or (hi is not None and default > hi)):
            raise ValueError("default_temperature is outside min_temperature..max_temperature")
        return self

    @property
    def has_image_caps(self) -> bool:
        return any(v is not None for v in (self.max_images, self.max_image_bytes, self.max_image_pixels))


#: the routes every server has; ``routes:`` in the config file changes their fields or adds new routes
SHIPPED_ROUTES: dict[str, dict[str, Any]] = {
    "default": {},
    "hard": {"default_reasoning_effort": "high"},
    "image": {},
    "agent": {},
}


def resolve_routes(configured: Mapping[str, Optional[RoutePolicy]]) -> dict[str, RoutePolicy]:
    """The shipped routes with the configured ones merged over them, field by field (only the fields the
    config sets); a configured ``null`` removes a shipped route (``default`` stays: the rules fall back to it).
    """
    raw: dict[str, dict[str, Any]] = {name: dict(fields) for name, fields in SHIPPED_ROUTES.items()}
    for name, route in configured.items():
        if not _valid_name(name):
            raise ValueError(f"the route name '{name[:64]}' must be letters, digits and ._- (at most 64)")
        if route is None:
            if name == "default":
                raise ValueError("the route 'default' cannot be removed")
            raw.pop(name, None)
            continue
        fields = route.model_dump(include=route.model_fields_set - {"name"})
        raw[name] = {**raw.get(name, {}), **fields}
    out: dict[str, RoutePolicy] = {}
    for name, fields in raw.items():
        try:
            out[name] = RoutePolicy.model_validate({**fields, "name": name})
        except ValueError as exc:
            raise ValueError(f"route '{name}': {_first_error(exc)}") from None
    return out


def _valid_name(name: str) -> bool:
    return re.fullmatch(NAME_PATTERN, name) is not None


def _first_error(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        return str(first.get("msg", exc)).removeprefix("Value error, ")
    return str(exc)
