"""Model families: how a model's output becomes reasoning, content and tool calls.

``get_format("mistral").new_parser()`` gives an incremental :class:`OutputParser`; see
:mod:`unimodel.formats.streaming` for the shared rules and the family modules for each grammar. A format also
owns its markers, grammar pieces and renderer (:mod:`unimodel.formats.base`); importing this package never
imports torch, transformers, mistral_common's tokenizer or llguidance.
"""

from unimodel.formats.base import FormatMarkers, ModelFormat, OutputParser, new_call_id
from unimodel.formats.mistral import MistralFormat
from unimodel.formats.registry import detect_format, format_names, get_format
from unimodel.formats.think_tags import ThinkTagsFormat

__all__ = [
    "FormatMarkers",
    "ModelFormat",
    "OutputParser",
    "MistralFormat",
    "ThinkTagsFormat",
    "detect_format",
    "format_names",
    "get_format",
    "new_call_id",
]
