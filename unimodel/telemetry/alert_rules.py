"""The alert rules of the config file (``alerts:``), validated when the settings load.

Every kind fires when its value goes *above* ``threshold`` and resolves when it falls back to
``resolve_threshold`` or below (``threshold`` unless set lower: a band against flapping):

* ``token_spike``: tokens (prompt + completion) per minute over ``window_s``, divided by the rate of the
  ``baseline_window_s`` just before it (default one hour): ``threshold`` is the factor, e.g. 3;
* ``prompt_length``: any request whose prompt exceeds ``threshold`` tokens, checked as each request ends;
  resolves once no such request came for ``window_s``;
* ``error_rate``: the share (0–1) of requests that failed with a server error (status ≥ 500);
* ``p95_latency``: the 95th percentile of answered requests' latency, in milliseconds;
* ``rate_limit_rejections``: requests refused with ``rate_limit_exceeded`` (429), per key: one alert per key
  that exceeds the threshold, or only ``key`` when set.

``min_requests`` (default 10 for the ratios and the percentile, else 1) is the fewest requests in the window
for a judgement: with fewer, the value is unknown and a firing alert resolves. ``key`` narrows a rule to one
key name (not for ``p95_latency``). ``webhook`` overrides ``alert_webhook_url`` for one rule; webhook URLs come
from the operator's config only, never from a request.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal, Optional

from pydantic import BaseModel, Field, field_validator, model_validator

AlertKind = Literal["token_spike", "prompt_length", "error_rate", "p95_latency", "rate_limit_rejections"]
_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
DEFAULT_BASELINE_S = 3600.0
MAX_WINDOW_S = 86_400.0


def webhook_url(v: str) -> str:
    if not v.startswith(("http://", "https://")) or len(v) > 2048:
        raise ValueError("a webhook must be an http:// or https:// URL")
    return v


class AlertRule(BaseModel):
    model_config = {"extra": "forbid", "allow_inf_nan": False}

    name: str
    kind: AlertKind
    threshold: float = Field(ge=0)
    window_s: float = Field(default=300.0, gt=0, le=MAX_WINDOW_S)
    resolve_threshold: Optional[float] = Field(default=None, ge=0)
    baseline_window_s: Optional[float] = Field(default=None, gt=0, le=MAX_WINDOW_S)
    min_requests: Optional[int] = Field(default=None, ge=1)
    key: Optional[str] = Field(default=None, min_length=1, max_length=128)
    webhook: Optional[str] = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.fullmatch(v):
            raise ValueError(f"an alert name is 1 to 64 letters, digits, '-', '_' or '.': {v!r}")
        return v

    @field_validator("webhook")
    @classmethod
    def _webhook(cls, v: Optional[str]) -> Optional[str]:
        return None if v is None else webhook_url(v)

    @model_validator(mode="after")
    def _consistent(self) -> "AlertRule":
        if self.kind == "token_spike":
            if self.baseline_window_s is None:
                self.baseline_window_s = DEFAULT_BASELINE_S
        elif self.baseline_window_s is not None:
            raise ValueError(f"alert '{self.name}': baseline_window_s is for token_spike rules only")
        if self.kind == "error_rate" and self.threshold > 1:
            raise ValueError(f"alert '{self.name}': an error_rate threshold is a share, 0 to 1")
        if self.kind == "p95_latency" and self.key is not None:
            raise ValueError(f"alert '{self.name}': p95_latency is over all keys; it takes no key")
        if self.resolve_threshold is not None and self.resolve_threshold > self.threshold:
            raise ValueError(f"alert '{self.name}': resolve_threshold must not exceed threshold")
        return self

    @property
    def resolves_at(self) -> float:
        return self.threshold if self.resolve_threshold is None else self.resolve_threshold

    @property
    def fewest_requests(self) -> int:
        if self.min_requests is not None:
            return self.min_requests
        return 10 if self.kind in ("token_spike", "error_rate", "p95_latency") else 1

    @property
    def reach_s(self) -> float:
        """How far back the rule looks: its window, and the baseline before it."""
        return self.window_s + (self.baseline_window_s or 0.0)


def check_rules(rules: Sequence[AlertRule]) -> None:
    names = [r.name for r in rules]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"two alert rules are named '{twice[0]}'")
