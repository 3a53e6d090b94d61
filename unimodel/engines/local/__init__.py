"""The embedded engine: a transformers model in this process (``--engine local``). Imports torch."""

from __future__ import annotations

from unimodel.engines.local.engine import LocalEngine
from unimodel.engines.local.loader import ModelLoadError

__all__ = ["LocalEngine", "ModelLoadError"]
