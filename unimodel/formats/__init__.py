"""Model families: how a model's output becomes reasoning, content and tool calls.

``get_format("mistral").new_parser()`` gives an incremental :class:`OutputParser`; see
:mod:`unimodel.formats.streaming` for the shared rules and the family modules for each grammar.
"""

from unimodel.formats.base import ModelFormat, OutputParser, new_call_id
from unimodel.formats.mistral import MistralFormat
from unimodel.formats.registry import format_names, get_format
from unimodel.formats.think_tags import ThinkTagsFormat

__all__ = [
    "ModelFormat",
    "OutputParser",
    "MistralFormat",
    "ThinkTagsFormat",
    "format_names",
    "get_format",
    "new_call_id",
]
