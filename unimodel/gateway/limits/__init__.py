"""Limits and quotas: requests and tokens per window per key and per user, a separate quota for high
reasoning, and in-flight caps; in memory, or exact across replicas in Redis (``stage.py`` says how)."""

from unimodel.gateway.limits.memory import MemoryStore
from unimodel.gateway.limits.policy import LimitDefaults, Plan, plan_for
from unimodel.gateway.limits.stage import LimitsStage, go_duration, rate_limit_headers
from unimodel.gateway.limits.store import Decision, LimitStore, StoreUnavailable

__all__ = ["Decision", "LimitDefaults", "LimitStore", "LimitsStage", "MemoryStore", "Plan", "StoreUnavailable",
           "go_duration", "plan_for", "rate_limit_headers"]
