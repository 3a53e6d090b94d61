"""Priority classes and session affinity: what the validate stage tells an engine about how to schedule a request.

A **priority class** is a name the operator gives a rank (``priority_classes``; by default ``interactive`` 0 and
``batch`` 10; lower ranks go first). A request runs in the class its ``X-Unimodel-Priority`` header names, else
in its key's own ``priority_class``, else in the server's default class; a key's ``priority_classes`` list the
classes it may name. An unknown name is the client's mistake (400 ``priority_class_not_found``), a class the key
may not use a 403, both naming the header. The class's rank becomes ``GenerationRequest.priority_rank`` (an
upstream pool admits lower ranks first when every replica is saturated) and, when the operator forwards it
(``pool_forward_priority``, for vLLM run with ``--scheduling-policy priority``), vLLM's ``priority`` too, unless
the client sent a ``priority`` of its own that its key may send (that one wins: ``validate.allowed_priority``).

**Session affinity** (``GenerationRequest.affinity``) is the session a pool keeps on one replica, whose prefix
cache then holds the conversation: the first of the chat request's ``prompt_cache_key`` (``pck:`` and the key),
the completion id of the answer a Responses request continues (``previous_response_id`` ``resp_HEX`` is the answer
``chatcmpl-HEX``, set on the chat request by the Responses shape; as it is, since a pool records every request's
completion id under its own name), and the end user (``user:`` and the ``user``). The prefixes keep the three
kinds apart; every value is bounded by the wire types (256 characters).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Optional

from unimodel.errors import PermissionDeniedError, PriorityClassNotFoundError
from unimodel.protocol.openai import ChatCompletionRequest
from unimodel.service.context import Caller

PRIORITY_HEADER = "X-Unimodel-Priority"
_REQUEST_HEADER = PRIORITY_HEADER.lower()
#: the classes a server has when its operator names none
DEFAULT_PRIORITY_CLASSES: Mapping[str, int] = MappingProxyType({"interactive": 0, "batch": 10})
DEFAULT_PRIORITY_CLASS = "interactive"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True, slots=True)
class PriorityClasses:
    """The server's priority classes (name → rank), the class of a request that names none and whose key has no
    class of its own, and whether the rank is forwarded as vLLM's ``priority``."""

    ranks: Mapping[str, int] = field(default_factory=lambda: DEFAULT_PRIORITY_CLASSES)
    default: str = DEFAULT_PRIORITY_CLASS
    forward: bool = False

    def __post_init__(self) -> None:
        if self.default not in self.ranks:
            raise ValueError(f"the default priority class '{self.default}' is not among the classes")

    def choose(self, caller: Caller, header: Optional[str]) -> str:
        """The class a request runs in: the one ``header`` names (checked against the server's classes and the
        caller's), else the caller's own, else the server's default."""
        asked = (header or "").strip()
        if not asked:
            return caller.priority_class or self.default
        known = ", ".join(self.ranks)
        if asked not in self.ranks:
            if _NAME.fullmatch(asked) is None:
                raise PriorityClassNotFoundError(f"The {PRIORITY_HEADER} header is not a priority class name "
                                                 f"(letters, digits and ._-, at most 64); classes: {known}.")
            raise PriorityClassNotFoundError(f"The priority class '{asked}' named by {PRIORITY_HEADER} does not "
                                             f"exist on this server (classes: {known}).")
        allowed = caller.priority_classes
        if allowed is not None and asked not in allowed:
            raise PermissionDeniedError(f"This API key may not use the priority class '{asked}' named by "
                                        f"{PRIORITY_HEADER} (its classes: {', '.join(sorted(allowed))}).")
        return asked


def priority_header(headers: Mapping[str, str]) -> Optional[str]:
    """The ``X-Unimodel-Priority`` header of a request's headers (lower-case names), if sent."""
    return headers.get(_REQUEST_HEADER)


def affinity_of(wire: ChatCompletionRequest) -> Optional[str]:
    """The session a pool keeps on one replica (module docstring): ``pck:KEY``, a completion id, ``user:USER``,
    or ``None``."""
    if wire.prompt_cache_key:
        return "pck:" + wire.prompt_cache_key
    if wire.continues is not None:
        return wire.continues
    if wire.user:
        return "user:" + wire.user
    return None
