"""Limits and quotas: requests and tokens per window per key and per user, a separate quota for high
reasoning, and in-flight caps, in two stages (the key's requests before the body is read, the rest after
validation); in memory, or exact across replicas in Redis (``stage.py`` says how)."""

from unimodel.gateway.limits.memory import MemoryStore
from unimodel.gateway.limits.policy import LimitDefaults, Plan, request_plan, token_plan
from unimodel.gateway.limits.stage import LimitsStage, RequestLimitsStage, go_duration, rate_limit_headers
from unimodel.gateway.limits.store import Decision, LimitStore, StoreUnavailable

__all__ = ["Decision", "LimitDefaults", "LimitStore", "LimitsStage", "MemoryStore", "Plan", "RequestLimitsStage",
           "StoreUnavailable", "go_duration", "rate_limit_headers", "request_plan", "token_plan"]
