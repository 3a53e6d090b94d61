"""Anthropic Messages API wire models (pydantic): the request of ``POST /v1/messages``.

What the official ``anthropic`` SDK and Claude Code send, typed, with every size a client controls bounded by
the same ``MAX_*`` constants as the chat request (:mod:`unimodel.protocol.openai`), so a request refused here
would have been refused as chat too. Unknown fields are ignored at every level (Anthropic adds fields often:
``cache_control``, ``citations``, ``service_tier``, ``container`` … none of them changes what the model is
asked), but a block or a tool whose meaning we cannot serve is refused by name rather than dropped:

* a ``document`` block (PDF or text documents: this server has no document reader) and an image from the
  Files API (``source.type: file``: there is no Files API here);
* a server tool (``{"type": "web_search_20250305", …}``, ``code_execution_…``, ``bash_…``): Anthropic runs
  those, or knows their schema, itself; ignoring one would leave the model without a tool the client believes
  it has, and a client that sends it expects ``server_tool_use`` results we cannot produce;
* a block in a place Anthropic itself refuses it (``tool_use`` or ``thinking`` in a user message,
  ``tool_result`` or ``image`` in an assistant one).

The translation into the one chat request every stage reads is :mod:`unimodel.shapes.messages.convert`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from unimodel.protocol.openai import (
    MAX_CONTENT_PARTS,
    MAX_MESSAGES,
    MAX_NAME_CHARS,
    MAX_STOP_CHARS,
    MAX_STOP_SEQUENCES,
    MAX_TOOLS,
)

#: the image types Anthropic accepts as base64
ImageMediaType = Literal["image/jpeg", "image/png", "image/gif", "image/webp"]
#: Anthropic's ``output_config.effort`` levels
AnthropicEffort = Literal["low", "medium", "high", "xhigh", "max"]
MAX_ID_CHARS = 256  # a tool_use id, as long as any client's
MAX_INT = 2**31 - 1


class _Open(BaseModel):
    """Ignores unknown fields (``cache_control``, ``citations`` and whatever Anthropic adds next)."""

    model_config = ConfigDict(extra="ignore")


# ---- content blocks ------------------------------------------------------------------------------------


class TextBlock(_Open):
    type: Literal["text"]
    text: str


class Base64Source(_Open):
    type: Literal["base64"]
    media_type: ImageMediaType
    data: str = Field(min_length=1)


class URLSource(_Open):
    type: Literal["url"]
    url: str = Field(min_length=1)


class FileSource(_Open):
    """The Files API's ``file_id``: refused, with the reason (no Files API here)."""

    type: Literal["file"]

    @model_validator(mode="after")
    def _refuse(self) -> "FileSource":
        raise ValueError("images from the Files API (source type 'file') are not supported by this server; "
                         "send the image as 'base64' or 'url'")


ImageSource = Annotated[Union[Base64Source, URLSource, FileSource], Field(discriminator="type")]


class ImageBlock(_Open):
    type: Literal["image"]
    source: ImageSource


class ToolUseBlock(_Open):
    type: Literal["tool_use"]
    id: str = Field(min_length=1, max_length=MAX_ID_CHARS)
    name: str = Field(min_length=1, max_length=MAX_NAME_CHARS)
    input: dict[str, Any] = Field(default_factory=dict)


class ToolReferenceBlock(_Open):
    """Claude Code's tool search names a deferred tool it loads (``defer_loading``) this way; dropped, since this
    server declares every tool of ``tools`` to the model, deferred or not (vLLM accepts it too)."""

    type: Literal["tool_reference"]
    tool_name: Optional[str] = Field(default=None, max_length=MAX_NAME_CHARS)


ToolResultPart = Annotated[Union[TextBlock, ImageBlock, ToolReferenceBlock], Field(discriminator="type")]


class ToolResultBlock(_Open):
    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1, max_length=MAX_ID_CHARS)
    content: Optional[Union[str, Annotated[list[ToolResultPart], Field(max_length=MAX_CONTENT_PARTS)]]] = None
    is_error: Optional[bool] = None


class ThinkingBlock(_Open):
    type: Literal["thinking"]
    thinking: str
    signature: Optional[str] = None  # ours is not checked (shapes/messages/convert.py says why)


class RedactedThinkingBlock(_Open):
    type: Literal["redacted_thinking"]
    data: Optional[str] = None


class DocumentBlock(_Open):
    """Refused, with the reason: this server has no document (PDF, text file) reader."""

    type: Literal["document"]

    @model_validator(mode="after")
    def _refuse(self) -> "DocumentBlock":
        raise ValueError("document blocks (PDF and text documents) are not supported by this server; "
                         "send the document's text in a text block")


ContentBlock = Annotated[
    Union[TextBlock, ImageBlock, ToolUseBlock, ToolResultBlock, ThinkingBlock, RedactedThinkingBlock,
          ToolReferenceBlock, DocumentBlock],
    Field(discriminator="type"),
]

#: the blocks Anthropic refuses in each role (what a client sends there is a mistake: named, not dropped)
_NOT_IN = {"user": ("tool_use", "thinking", "redacted_thinking"), "assistant": ("tool_result", "image"),
           "system": ("tool_use", "tool_result", "thinking", "redacted_thinking", "image")}


class Message(_Open):
    """One turn. ``system`` is not Anthropic's (its system prompt is the top-level field) but vLLM accepts it
    in ``messages`` too, so a client written against vLLM works here: it becomes a system message in place."""

    role: Literal["user", "assistant", "system"]
    content: Union[str, Annotated[list[ContentBlock], Field(max_length=MAX_CONTENT_PARTS)]]

    @field_validator("content")
    @classmethod
    def _not_empty(cls, v: Union[str, list[Any]]) -> Union[str, list[Any]]:
        if isinstance(v, list) and not v:
            raise ValueError("a message's content needs at least one block")
        return v

    @model_validator(mode="after")
    def _blocks_fit_the_role(self) -> "Message":
        if isinstance(self.content, list):
            refused = _NOT_IN[self.role]
            for i, block in enumerate(self.content):
                if block.type in refused:
                    raise ValueError(f"content[{i}]: a '{block.type}' block cannot be in a message with role "
                                     f"'{self.role}'")
        return self


# ---- tools -----------------------------------------------------------------------------------------------


class Tool(_Open):
    """A client tool. Anthropic's own tools (``type`` other than ``custom``) are refused, with the reason."""

    type: Optional[str] = Field(default=None, max_length=MAX_NAME_CHARS)
    # the chat request's rule for a function name (so a tool accepted here is accepted there)
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    description: Optional[str] = None
    input_schema: Optional[dict[str, Any]] = None
    strict: Optional[bool] = None

    @model_validator(mode="before")
    @classmethod
    def _custom_only(cls, data: Any) -> Any:
        if isinstance(data, dict):
            kind = data.get("type")
            if kind not in (None, "custom"):
                shown = str(kind)[:64]
                raise ValueError(f"'{shown}' is one of Anthropic's server tools, which this server does not run; "
                                 "send client tools only (name, description, input_schema)")
            if data.get("input_schema") is None:
                raise ValueError("a tool needs 'input_schema' (a JSON schema of type object)")
        return data


class ToolChoice(_Open):
    type: Literal["auto", "any", "tool", "none"]
    name: Optional[str] = Field(default=None, max_length=64)
    disable_parallel_tool_use: Optional[bool] = None

    @model_validator(mode="after")
    def _name_for_tool(self) -> "ToolChoice":
        if self.type == "tool" and not self.name:
            raise ValueError("tool_choice of type 'tool' needs 'name'")
        return self


# ---- thinking and output ---------------------------------------------------------------------------------


class ThinkingEnabled(_Open):
    """Extended thinking with a budget. Anthropic asks for at least 1024 tokens; any positive budget is served
    here (a smaller model needs less). ``display`` is accepted and ignored: thinking is always shown."""

    type: Literal["enabled"]
    budget_tokens: int = Field(ge=1, le=MAX_INT)


class ThinkingDisabled(_Open):
    type: Literal["disabled"]


class ThinkingAdaptive(_Open):
    """The model decides whether and how long to think (``between_tools`` is the same to this server: a
    Mistral model thinks at the start of each turn, which with tools is between them)."""

    type: Literal["adaptive", "between_tools"]


ThinkingConfig = Annotated[Union[ThinkingEnabled, ThinkingDisabled, ThinkingAdaptive], Field(discriminator="type")]


class JsonOutputFormat(_Open):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(_Open):
    effort: Optional[AnthropicEffort] = None
    format: Optional[JsonOutputFormat] = None


class Metadata(_Open):
    user_id: Optional[str] = Field(default=None, max_length=MAX_NAME_CHARS)


# ---- the request -----------------------------------------------------------------------------------------


class _MessagesBase(_Open):
    """What a Messages request and a ``count_tokens`` request share (everything that shapes the prompt)."""

    model: str = Field(min_length=1, max_length=MAX_NAME_CHARS)
    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    system: Optional[Union[str, Annotated[list[TextBlock], Field(max_length=MAX_CONTENT_PARTS)]]] = None
    tools: Optional[list[Tool]] = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: Optional[ToolChoice] = None
    thinking: Optional[ThinkingConfig] = None
    output_config: Optional[OutputConfig] = None


class CountTokensRequest(_MessagesBase):
    """``POST /v1/messages/count_tokens``: the prompt's parts, no sampling, no ``max_tokens``."""


class MessagesRequest(_MessagesBase):
    """``POST /v1/messages``."""

    max_tokens: int = Field(ge=1, le=MAX_INT)
    stream: bool = False
    stop_sequences: Optional[Annotated[list[Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]],
                                       Field(max_length=MAX_STOP_SEQUENCES)]] = None
    temperature: Optional[float] = Field(default=None, ge=0.0, le=1.0)
    top_p: Optional[float] = Field(default=None, gt=0.0, le=1.0)
    top_k: Optional[int] = Field(default=None, ge=0, le=MAX_INT)
    metadata: Optional[Metadata] = None
