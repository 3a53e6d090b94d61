"""Model formats by name (``--model-family``, ``--upstream-parse``), or recognised from a checkpoint.

A fixed table, built at import, never mutated.
"""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType

from unimodel.formats.base import ModelFormat
from unimodel.formats.mistral import MistralFormat
from unimodel.formats.think_tags import ThinkTagsFormat

_FORMATS: MappingProxyType[str, ModelFormat] = MappingProxyType(
    {fmt.name: fmt for fmt in (MistralFormat(), ThinkTagsFormat())}
)


def format_names() -> list[str]:
    """The known format names, sorted."""
    return sorted(_FORMATS)


def get_format(name: str) -> ModelFormat:
    """The format called ``name`` (case-insensitive, ``_`` as ``-``); ValueError naming the known ones."""
    key = name.strip().lower().replace("_", "-")
    try:
        return _FORMATS[key]
    except KeyError:
        raise ValueError(f"unknown model format {name!r}; known: {', '.join(format_names())}") from None


#: the family of a checkpoint no format recognises: plain chat-template models, ``<think>`` reasoning included
FALLBACK_FORMAT = "think-tags"


def detect_format(checkpoint: Path) -> ModelFormat:
    """The family a checkpoint directory shows (a ``tekken.json`` is Mistral), else :data:`FALLBACK_FORMAT`."""
    for fmt in _FORMATS.values():
        if fmt.recognises(checkpoint):
            return fmt
    return _FORMATS[FALLBACK_FORMAT]
