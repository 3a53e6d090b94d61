"""Idempotency keys: a request repeated with the same ``Idempotency-Key`` runs once (``stage.py``), its
response kept in memory or in Redis (``memory.py``, ``redis_store.py``) as neutral events (``record.py``)."""

from unimodel.gateway.idempotency.memory import MemoryStore
from unimodel.gateway.idempotency.redis_store import RedisStore
from unimodel.gateway.idempotency.stage import IdempotencyStage
from unimodel.gateway.idempotency.store import IdempotencyStore, StoreUnavailableError

__all__ = ["IdempotencyStage", "IdempotencyStore", "MemoryStore", "RedisStore", "StoreUnavailableError"]
