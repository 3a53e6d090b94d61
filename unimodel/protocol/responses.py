"""OpenAI Responses API request wire models (pydantic): ``POST /v1/responses``, what a client may send.

The Responses shape (``unimodel/shapes/responses/``) turns one of these into the chat request every stage reads,
so what is modelled here is what that translation needs, each field typed and every size a client controls
bounded (the chat limits of :mod:`unimodel.protocol.openai`, reused, and OpenAI's own for ``metadata``).
Unknown fields are ignored, at every level: clients send fields of newer API versions we must not refuse.

Tools: ``function`` tools, and ``namespace`` tools (a named group of function tools, which Codex CLI sends by
default: ``multi_agent_v1``), whose functions the model sees flattened as ``<namespace>__<name>`` (vLLM's
convention, and Codex's own when a boundary cannot keep the split; :meth:`ResponsesRequest.function_tools`).
Hosted tools, which OpenAI's servers run themselves (:data:`HOSTED_TOOLS`: ``web_search``, ``file_search``,
``code_interpreter``, ``image_generation``, ``computer_use_preview``, ``mcp`` …), are accepted and left out of
what the model is shown, as vLLM does: a client that offers them (Codex offers ``web_search`` by default) still
gets an answer, from the model alone; the shape logs each at debug level. Any other tool type (``custom``,
``local_shell``, ``apply_patch``, a type this server does not know) is a 400 naming it: the model would be told
about a tool whose calls this server cannot write back in that tool's own item form.

What this server cannot do otherwise is refused here with a 400 that names it, never silently ignored: a
``tool_choice`` that names a hosted tool, input items other than messages, function calls and their outputs and
reasoning, images sent as a ``file_id`` and files (this server has no Files API), ``conversation`` and ``prompt``
(server-side state it does not keep). Whether ``previous_response_id`` and ``background`` can be served is the
shape's business (they need the response store).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, TypeAdapter, field_validator, model_validator

from unimodel.protocol.openai import MAX_CONTENT_PARTS, MAX_MESSAGES, MAX_NAME_CHARS, MAX_TOOLS

#: OpenAI's limits on ``metadata``: 16 pairs, keys of 64 characters, values of 512
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 512
MAX_INCLUDE = 16
#: the reasoning summary / content parts one reasoning item may carry
MAX_REASONING_PARTS = 64

#: OpenAI's efforts beyond ours, served as our highest
EXTRA_HIGH_EFFORTS = ("xhigh", "max")

Id = Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS)]


class _Open(BaseModel):
    """Ignores unknown fields (clients send newer fields and vendor extensions)."""

    model_config = ConfigDict(extra="ignore")


# ---- content parts -------------------------------------------------------------------------------------


class InputText(_Open):
    type: Literal["input_text"]
    text: str


class OutputText(_Open):
    """An assistant's text, as a client sends a previous answer back."""

    type: Literal["output_text"]
    text: str


class Refusal(_Open):
    type: Literal["refusal"]
    refusal: str


class InputImage(_Open):
    type: Literal["input_image"]
    image_url: Optional[str] = None
    file_id: Optional[str] = Field(default=None, max_length=MAX_NAME_CHARS)
    detail: Optional[str] = Field(default=None, max_length=16)

    @model_validator(mode="after")
    def _by_url(self) -> "InputImage":
        if self.file_id is not None:
            raise ValueError("an image given by 'file_id' is not supported (this server has no Files API): send "
                             "'image_url', a URL or a data: URI")
        if not self.image_url:
            raise ValueError("an input_image needs 'image_url'")
        return self


class InputFile(_Open):
    type: Literal["input_file"]

    @model_validator(mode="after")
    def _refuse(self) -> "InputFile":
        raise ValueError("input_file parts are not supported: send the file's text as input_text")


ContentPart = Annotated[Union[InputText, OutputText, Refusal, InputImage, InputFile], Field(discriminator="type")]
Parts = Annotated[list[ContentPart], Field(max_length=MAX_CONTENT_PARTS)]


def part_text(part: ContentPart) -> Optional[str]:
    """The text of a text-like part (None for an image)."""
    if isinstance(part, Refusal):
        return part.refusal
    if isinstance(part, (InputText, OutputText)):
        return part.text
    return None


# ---- input items ---------------------------------------------------------------------------------------


class MessageItem(_Open):
    """A message; ``type: "message"`` may be left out (the SDK's ``EasyInputMessage``)."""

    type: Optional[Literal["message"]] = None
    role: Literal["user", "system", "developer", "assistant"]
    content: Union[str, Parts]


class FunctionCallItem(_Open):
    """A call the model made in an earlier turn, sent back with the conversation; ``namespace``: the namespace tool
    the function belongs to (the chat request then names it ``<namespace>__<name>``, as the model saw it)."""

    type: Literal["function_call"]
    call_id: Id
    name: str = Field(min_length=1, max_length=64)
    arguments: str
    id: Optional[str] = Field(default=None, max_length=MAX_NAME_CHARS)
    namespace: Optional[str] = Field(default=None, min_length=1, max_length=64)

    @property
    def flat_name(self) -> str:
        return flat_tool_name(self.namespace, self.name) if self.namespace else self.name


class FunctionCallOutputItem(_Open):
    """A tool's result for the call ``call_id``."""

    type: Literal["function_call_output"]
    call_id: Id
    output: Union[str, Parts]


class SummaryText(_Open):
    type: Literal["summary_text"]
    text: str


class ReasoningText(_Open):
    type: Literal["reasoning_text"]
    text: str


class ReasoningItem(_Open):
    """The model's reasoning of an earlier turn: its summary or content, or a sealed ``encrypted_content``."""

    type: Literal["reasoning"]
    id: Optional[str] = Field(default=None, max_length=MAX_NAME_CHARS)
    summary: Annotated[list[SummaryText], Field(max_length=MAX_REASONING_PARTS)] = []
    content: Optional[Annotated[list[ReasoningText], Field(max_length=MAX_REASONING_PARTS)]] = None
    encrypted_content: Optional[str] = None


class UnsupportedItem(_Open):
    """Any other input item type: refused, naming it."""

    type: str = Field(max_length=64)

    @model_validator(mode="after")
    def _refuse(self) -> "UnsupportedItem":
        if self.type == "item_reference":
            raise ValueError("input items of type 'item_reference' are not supported (this server does not look "
                             "items up in the response store): send the item itself, or previous_response_id")
        raise ValueError(f"input items of type '{self.type}' are not supported: send messages, function_call, "
                         "function_call_output and reasoning items")


_ITEM_TYPES = ("message", "function_call", "function_call_output", "reasoning")


def _item_tag(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    if kind is None:
        return "message"  # the SDK's EasyInputMessage has no type
    return kind if isinstance(kind, str) and kind in _ITEM_TYPES else "unsupported"


InputItem = Annotated[
    Union[Annotated[MessageItem, Tag("message")], Annotated[FunctionCallItem, Tag("function_call")],
          Annotated[FunctionCallOutputItem, Tag("function_call_output")], Annotated[ReasoningItem, Tag("reasoning")],
          Annotated[UnsupportedItem, Tag("unsupported")]],
    Discriminator(_item_tag),
]


#: parses input items kept as JSON (a stored conversation, which ``previous_response_id`` continues)
INPUT_ITEMS: TypeAdapter[list[InputItem]] = TypeAdapter(list[InputItem])


# ---- tools ---------------------------------------------------------------------------------------------


class FunctionTool(_Open):
    type: Literal["function"]
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    description: Optional[str] = None
    parameters: Optional[dict[str, Any]] = None
    strict: Optional[bool] = None


#: the separator of a namespace tool's function names as the model sees them (vLLM's and Codex's)
NAMESPACE_SEPARATOR = "__"

#: tools OpenAI's servers run themselves; accepted and not shown to the model (see the module docstring)
HOSTED_TOOLS = frozenset({
    "web_search", "web_search_preview", "web_search_preview_2025_03_11", "web_search_2025_08_26", "file_search",
    "code_interpreter", "image_generation", "computer_use_preview", "computer", "mcp", "tool_search",
})


def flat_tool_name(namespace: str, name: str) -> str:
    """A namespace tool's function as the model sees it: ``<namespace>__<name>``."""
    return f"{namespace}{NAMESPACE_SEPARATOR}{name}"


class NamespaceFunction(_Open):
    """A function of a namespace tool (its other members, such as custom tools, are left out)."""

    type: str = Field(max_length=64)
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    description: Optional[str] = None
    parameters: Optional[dict[str, Any]] = None
    strict: Optional[bool] = None


class NamespaceTool(_Open):
    """``{"type": "namespace", "name": …, "tools": [function tools]}``: its functions, flattened, are what the
    model is shown (:meth:`ResponsesRequest.function_tools`)."""

    type: Literal["namespace"]
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    description: Optional[str] = None
    tools: Annotated[list[NamespaceFunction], Field(max_length=MAX_TOOLS)] = []

    @model_validator(mode="after")
    def _names_fit(self) -> "NamespaceTool":
        for tool in self.tools:
            if tool.type == "function" and len(flat_tool_name(self.name, tool.name)) > 64:
                raise ValueError(f"the function '{tool.name}' of the namespace '{self.name}' is named "
                                 f"'{flat_tool_name(self.name, tool.name)}' to the model, longer than 64 characters")
        return self

    def functions(self) -> list[FunctionTool]:
        return [FunctionTool(type="function", name=flat_tool_name(self.name, t.name), description=t.description,
                             parameters=t.parameters, strict=t.strict) for t in self.tools if t.type == "function"]


class HostedTool(_Open):
    """A tool OpenAI's servers run (:data:`HOSTED_TOOLS`): accepted, and never shown to the model."""

    type: str = Field(max_length=64)


class UnsupportedTool(_Open):
    """A tool the client would run in an item form of its own (``custom``, ``local_shell``, ``apply_patch``), or a
    type this server does not know: refused, naming it."""

    type: str = Field(max_length=64)

    @model_validator(mode="after")
    def _refuse(self) -> "UnsupportedTool":
        raise ValueError(f"tools of type '{self.type}' are not supported: this server runs 'function' and "
                         "'namespace' tools (hosted tools such as 'web_search' are accepted and not used)")


def _tool_tag(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    if kind in ("function", "namespace"):
        return kind
    return "hosted" if kind in HOSTED_TOOLS else "unsupported"


ResponsesTool = Annotated[
    Union[Annotated[FunctionTool, Tag("function")], Annotated[NamespaceTool, Tag("namespace")],
          Annotated[HostedTool, Tag("hosted")], Annotated[UnsupportedTool, Tag("unsupported")]],
    Discriminator(_tool_tag),
]


class FunctionToolChoice(_Open):
    """``{"type": "function", "name": …}``; another ``type`` (a hosted tool, ``allowed_tools``) is refused."""

    type: str = Field(max_length=64)
    name: Optional[str] = Field(default=None, max_length=64)

    @model_validator(mode="after")
    def _function_only(self) -> "FunctionToolChoice":
        if self.type != "function":
            raise ValueError(f"a tool_choice of type '{self.type}' is not supported: use 'auto', 'none', "
                             "'required' or {'type': 'function', 'name': …}")
        if not self.name:
            raise ValueError("a tool_choice of type 'function' needs 'name'")
        return self


# ---- the rest ------------------------------------------------------------------------------------------


class ReasoningConfig(_Open):
    effort: Optional[Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"]] = None
    summary: Optional[Literal["auto", "concise", "detailed"]] = None
    #: the older name of ``summary``
    generate_summary: Optional[Literal["auto", "concise", "detailed"]] = None

    @property
    def wants_summary(self) -> bool:
        return (self.summary or self.generate_summary) is not None


class TextFormat(_Open):
    type: Literal["text", "json_object", "json_schema"]
    name: Optional[str] = Field(default=None, max_length=64)
    description: Optional[str] = None
    schema_: Optional[dict[str, Any]] = Field(default=None, alias="schema")
    strict: Optional[bool] = None

    @model_validator(mode="after")
    def _schema_present(self) -> "TextFormat":
        if self.type == "json_schema" and self.schema_ is None:
            raise ValueError("a text.format of type 'json_schema' needs 'schema'")
        return self


class TextConfig(_Open):
    format: Optional[TextFormat] = None
    verbosity: Optional[Literal["low", "medium", "high"]] = None


class ResponsesRequest(_Open):
    model: str = Field(min_length=1, max_length=MAX_NAME_CHARS)
    input: Optional[Union[str, Annotated[list[InputItem], Field(max_length=MAX_MESSAGES)]]] = None
    instructions: Optional[str] = None
    tools: Optional[Annotated[list[ResponsesTool], Field(max_length=MAX_TOOLS)]] = None
    tool_choice: Optional[Union[Literal["auto", "none", "required"], FunctionToolChoice]] = None
    parallel_tool_calls: Optional[bool] = None
    reasoning: Optional[ReasoningConfig] = None
    max_output_tokens: Optional[int] = Field(default=None, ge=1)
    text: Optional[TextConfig] = None
    temperature: Optional[float] = Field(default=None, ge=0.0, le=2.0)
    top_p: Optional[float] = Field(default=None, gt=0.0, le=1.0)
    metadata: Optional[dict[str, str]] = Field(default=None, max_length=MAX_METADATA_PAIRS)
    prompt_cache_key: Optional[str] = Field(default=None, max_length=MAX_NAME_CHARS)
    user: Optional[str] = Field(default=None, max_length=MAX_NAME_CHARS)
    safety_identifier: Optional[str] = Field(default=None, max_length=MAX_NAME_CHARS)
    stream: Optional[bool] = None
    store: Optional[bool] = None
    previous_response_id: Optional[str] = Field(default=None, max_length=MAX_NAME_CHARS)
    background: Optional[bool] = None
    include: Optional[Annotated[list[Annotated[str, Field(max_length=64)]], Field(max_length=MAX_INCLUDE)]] = None
    truncation: Optional[Literal["auto", "disabled"]] = None
    service_tier: Optional[str] = Field(default=None, max_length=32)
    top_logprobs: Optional[int] = Field(default=None, ge=0, le=20)
    max_tool_calls: Optional[int] = Field(default=None, ge=1)
    # server-side state this server does not keep: refused when set
    conversation: Optional[Any] = None
    prompt: Optional[Any] = None
    # unimodel's extensions, top-level as in chat (README: "Reasoning effort", "Keys and routes")
    thinking_budget: Optional[int] = Field(default=None, ge=1)
    route: Optional[str] = Field(default=None, max_length=MAX_NAME_CHARS)
    seed: Optional[int] = Field(default=None, ge=-(2**63), le=2**63 - 1)

    @field_validator("metadata")
    @classmethod
    def _metadata_sizes(cls, v: Optional[dict[str, str]]) -> Optional[dict[str, str]]:
        for key, value in (v or {}).items():
            if len(key) > MAX_METADATA_KEY_CHARS:
                raise ValueError(f"metadata keys may be at most {MAX_METADATA_KEY_CHARS} characters long")
            if len(value) > MAX_METADATA_VALUE_CHARS:
                raise ValueError(f"metadata values may be at most {MAX_METADATA_VALUE_CHARS} characters long")
        return v

    @field_validator("conversation", "prompt")
    @classmethod
    def _stateless(cls, v: Any, info: Any) -> Any:
        if v is not None:
            raise ValueError(f"'{info.field_name}' needs state this server does not keep: send the whole input")
        return v

    @field_validator("top_logprobs")
    @classmethod
    def _no_logprobs(cls, v: Optional[int]) -> Optional[int]:
        if v:
            raise ValueError("top_logprobs are not supported yet: send 0 or leave it out")
        return v

    @property
    def function_tools(self) -> list[FunctionTool]:
        """The functions the model is shown: the function tools, and each namespace's functions flattened to
        ``<namespace>__<name>``, in the request's order (hosted tools are not among them)."""
        out: list[FunctionTool] = []
        for tool in self.tools or ():
            if isinstance(tool, FunctionTool):
                out.append(tool)
            elif isinstance(tool, NamespaceTool):
                out.extend(tool.functions())
        return out

    @property
    def namespaced_names(self) -> dict[str, tuple[str, str]]:
        """``<namespace>__<name>`` → (namespace, name) for each namespace's function: how a call the model makes
        goes back to the client (a ``function_call`` item with ``name`` and ``namespace``)."""
        return {flat_tool_name(tool.name, f.name): (tool.name, f.name) for tool in self.tools or ()
                if isinstance(tool, NamespaceTool) for f in tool.tools if f.type == "function"}

    @property
    def hosted_tools(self) -> list[str]:
        """The types of the hosted tools the request offered (accepted, not used)."""
        return [t.type for t in self.tools or () if isinstance(t, HostedTool)]

    @property
    def echoed_tools(self) -> list[dict[str, Any]]:
        """The tools as the Response object repeats them: the function and namespace tools, as parsed (the hosted
        ones, which played no part, are left out)."""
        return [t.model_dump(exclude_none=True, by_alias=True) for t in self.tools or ()
                if isinstance(t, (FunctionTool, NamespaceTool))]
