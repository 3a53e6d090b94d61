"""Checkpoints unimodel can build itself (``tiny-random``, ``tiny-random-vision``) for smoke tests and demos."""

from __future__ import annotations

from unimodel.models.tiny_random import TINY_RANDOM_NAMES, default_cache_dir, ensure_tiny_random, is_tiny_random

__all__ = ["TINY_RANDOM_NAMES", "default_cache_dir", "ensure_tiny_random", "is_tiny_random"]
