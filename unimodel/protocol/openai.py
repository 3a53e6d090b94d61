"""OpenAI chat-completions wire models (pydantic), with unimodel's extensions (the README's "HTTP API").

Requests accept every standard field and vLLM's documented sampling extensions (``top_k``, ``min_p``,
``repetition_penalty``, ``min_tokens``, ``ignore_eos``, ``stop_token_ids`` …), each typed and bounded. Unknown
top-level fields are kept as pydantic extras only so that validation can drop them, refuse them
(``unknown_fields: reject``) or forward an operator's allowlist (``upstream_extra_fields``): nothing unknown
reaches an engine by accident. Unknown fields inside messages, parts and tools are ignored. Every size and
count a client controls is bounded here (see the ``MAX_*`` constants). Responses are built from neutral events
elsewhere (:mod:`unimodel.service.assemble`); stream chunks are plain dicts built there, for speed, so there is
no chunk model here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from unimodel.protocol.effort import Effort


MAX_MESSAGES = 4096
MAX_TOOLS = 256
MAX_CONTENT_PARTS = 512
MAX_STOP_SEQUENCES = 16
MAX_STOP_CHARS = 1000
MAX_STOP_TOKEN_IDS = 256
MAX_LOGIT_BIAS = 1024
MAX_NAME_CHARS = 256
#: the most choices (``n``) any request may ask for; the server's own cap (``--max-n``) is at most this
MAX_N = 128
#: below this a temperature makes logits / temperature overflow; it is treated as greedy (vLLM's epsilon)
GREEDY_TEMPERATURE = 1e-5


class _Open(BaseModel):
    """Ignores unknown fields of nested objects (clients send vendor extensions we must not reject, and must
    not forward unchecked)."""

    model_config = ConfigDict(extra="ignore")


class TextPart(_Open):
    type: Literal["text"]
    text: str


class ImageURL(_Open):
    url: str
    detail: Optional[Literal["auto", "low", "high"]] = None


class ImagePart(_Open):
    type: Literal["image_url"]
    image_url: ImageURL


# tagged by "type", so an unknown part type is one clear error rather than one per union member
ContentPart = Annotated[Union[TextPart, ImagePart], Field(discriminator="type")]


class FunctionCall(_Open):
    name: str
    arguments: str


class ToolCall(_Open):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(_Open):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Optional[Union[str, Annotated[list[ContentPart], Field(max_length=MAX_CONTENT_PARTS)]]] = None
    name: Optional[str] = Field(default=None, max_length=MAX_NAME_CHARS)
    tool_calls: Optional[Annotated[list[ToolCall], Field(max_length=MAX_TOOLS)]] = None
    tool_call_id: Optional[str] = None
    reasoning: Optional[str] = None
    reasoning_content: Optional[str] = None
    #: Mistral's assistant prefill: the final assistant message, to be continued (see ``continue_final_message``)
    prefix: Optional[bool] = None

    @model_validator(mode="after")
    def _check_role_fields(self) -> "Message":
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a message with role 'tool' needs 'tool_call_id'")
        if self.role in ("system", "developer", "user") and self.content is None:
            raise ValueError(f"a message with role '{self.role}' needs 'content'")
        if self.role == "assistant" and self.content is None and not self.tool_calls:
            raise ValueError("an assistant message needs 'content' or 'tool_calls'")
        return self

    def text(self) -> str:
        """The message's text parts joined (images left out)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content if isinstance(p, TextPart))

    def image_urls(self) -> list[str]:
        if not isinstance(self.content, list):
            return []
        return [p.image_url.url for p in self.content if isinstance(p, ImagePart)]


class FunctionDef(_Open):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    description: Optional[str] = None
    parameters: Optional[dict[str, Any]] = None
    strict: Optional[bool] = None


class Tool(_Open):
    type: Literal["function"] = "function"
    function: FunctionDef


class NamedToolChoiceFunction(_Open):
    name: str


class NamedToolChoice(_Open):
    type: Literal["function"] = "function"
    function: NamedToolChoiceFunction


ToolChoice = Union[Literal["none", "auto", "required"], NamedToolChoice]


class JsonSchemaSpec(_Open):
    name: str = "response"
    description: Optional[str] = None
    schema_: Optional[dict[str, Any]] = Field(default=None, alias="schema")
    strict: Optional[bool] = None


class ResponseFormat(_Open):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: Optional[JsonSchemaSpec] = None

    @model_validator(mode="after")
    def _schema_present(self) -> "ResponseFormat":
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format of type 'json_schema' needs 'json_schema'")
        return self


class StreamOptions(_Open):
    include_usage: Optional[bool] = None


@dataclass(frozen=True, slots=True)
class RawPrompt:
    """A prompt the model reads as it is: no chat template, and an answer parsed for nothing (no reasoning, no
    tool calls), as the legacy completions API and ``/tokenize``'s prompt form take it. ``add_special_tokens``:
    the tokenizer adds its own (BOS), vLLM's default."""

    text: str
    add_special_tokens: bool = True


class ChatCompletionRequest(BaseModel):
    # extras are kept here (and only here) so that validation can drop, refuse or allowlist them
    model_config = ConfigDict(extra="allow")
    #: set only by a shape (never from JSON: pydantic fills no private attribute from input): the request is this
    #: raw prompt, and ``messages`` hold it as one user message for the stages that read messages (the route's
    #: rules, the limits' estimate, the request log); the validate stage makes it the engine's ``raw_prompt``
    _raw_prompt: Optional[RawPrompt] = PrivateAttr(default=None)
    #: set only by a shape (the Responses API's ``previous_response_id``): the completion id of the answer this
    #: request continues, the session an upstream pool keeps on one replica (``service/priority.py``)
    _continues: Optional[str] = PrivateAttr(default=None)

    model: str = Field(min_length=1, max_length=MAX_NAME_CHARS)
    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    max_tokens: Optional[int] = Field(default=None, ge=1)
    max_completion_tokens: Optional[int] = Field(default=None, ge=1)
    temperature: Optional[float] = Field(default=None, ge=0.0, le=2.0)
    top_p: Optional[float] = Field(default=None, gt=0.0, le=1.0)
    stop: Optional[Union[str, list[str]]] = None
    seed: Optional[int] = Field(default=None, ge=-(2**63), le=2**63 - 1)  # a 64-bit seed, as vLLM takes
    # choices per request: the server's --max-n caps it below this hard bound (the validate stage, a 400)
    n: int = Field(default=1, ge=1, le=MAX_N)
    logprobs: Optional[bool] = None
    top_logprobs: Optional[int] = Field(default=None, ge=0, le=20)
    presence_penalty: Optional[float] = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: Optional[float] = Field(default=None, ge=-2.0, le=2.0)
    logit_bias: Optional[dict[str, float]] = Field(default=None, max_length=MAX_LOGIT_BIAS)
    user: Optional[str] = Field(default=None, max_length=MAX_NAME_CHARS)
    # OpenAI's cache routing hint: requests that share it share a session (an upstream pool keeps it on one replica)
    prompt_cache_key: Optional[str] = Field(default=None, max_length=MAX_NAME_CHARS)
    tools: Optional[list[Tool]] = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: Optional[ToolChoice] = None
    parallel_tool_calls: Optional[bool] = None
    response_format: Optional[ResponseFormat] = None
    # unimodel's extensions (README: "Reasoning effort", "Keys and routes"), top-level so `extra_body` works
    reasoning_effort: Optional[Effort] = None
    thinking_budget: Optional[int] = Field(default=None, ge=1)
    include_reasoning: Optional[bool] = None
    route: Optional[str] = Field(default=None, max_length=MAX_NAME_CHARS)
    # assistant prefill, vLLM's name (Mistral's is the final message's ``prefix``): continue that message
    continue_final_message: Optional[bool] = None
    # vLLM's documented sampling extensions (typed, so an upstream gets exactly these and nothing unchecked)
    top_k: Optional[int] = Field(default=None, ge=-1, le=2**31 - 1)
    min_p: Optional[float] = Field(default=None, ge=0.0, le=1.0)
    repetition_penalty: Optional[float] = Field(default=None, gt=0.0, le=2.0)
    min_tokens: Optional[int] = Field(default=None, ge=0, le=2**31 - 1)
    ignore_eos: Optional[bool] = None
    stop_token_ids: Optional[list[int]] = Field(default=None, max_length=MAX_STOP_TOKEN_IDS)
    include_stop_str_in_output: Optional[bool] = None
    # vLLM's request priority (lower is served first under its priority scheduling); forwarded only where the
    # caller's key allows it (the validate stage)
    priority: Optional[int] = Field(default=None, ge=-(2**63), le=2**63 - 1)

    @field_validator("stop")
    @classmethod
    def _stop_limit(cls, v: Union[str, list[str], None]) -> Union[str, list[str], None]:
        stops = [v] if isinstance(v, str) else v or []
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences")
        if any(len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(f"a stop sequence may be at most {MAX_STOP_CHARS} characters long")
        if any(not s for s in stops):
            raise ValueError("a stop sequence may not be empty")
        return v

    @field_validator("temperature")
    @classmethod
    def _underflow(cls, v: Optional[float]) -> Optional[float]:
        # logits / 1e-300 overflow to inf and sampling turns into NaN: such a temperature means greedy
        return 0.0 if v is not None and v < GREEDY_TEMPERATURE else v

    @field_validator("top_logprobs")
    @classmethod
    def _top_needs_logprobs(cls, v: Optional[int], info: ValidationInfo) -> Optional[int]:
        # as OpenAI and vLLM: top_logprobs above 0 asks for nothing unless logprobs is true
        if v and "logprobs" in info.data and not info.data["logprobs"]:
            raise ValueError("when using top_logprobs, logprobs must be set to true")
        return v

    @field_validator("tool_choice")
    @classmethod
    def _check_tool_choice(cls, v: Optional[ToolChoice], info: ValidationInfo) -> Optional[ToolChoice]:
        # a field validator, so the 400 names 'tool_choice'; 'tools' is declared before it, so it is in info.data
        if "tools" not in info.data:
            return v  # 'tools' itself was invalid: that is the error to report
        tools = info.data["tools"] or []
        if isinstance(v, NamedToolChoice) and v.function.name not in {t.function.name for t in tools}:
            raise ValueError(f"tool_choice names '{v.function.name[:64]}', which is not in 'tools'")
        if v == "required" and not tools:
            raise ValueError("tool_choice 'required' needs 'tools'")
        return v

    @property
    def raw_prompt(self) -> Optional[RawPrompt]:
        return self._raw_prompt

    @property
    def continues(self) -> Optional[str]:
        return self._continues

    def continuing(self, completion_id: str) -> "ChatCompletionRequest":
        """This request, marked as continuing the answer ``completion_id`` (a shape's call; returns itself)."""
        self._continues = completion_id[:MAX_NAME_CHARS]
        return self

    @classmethod
    def for_raw_prompt(cls, prompt: RawPrompt, data: dict[str, Any]) -> "ChatCompletionRequest":
        """The chat request of a raw prompt: ``data`` (the other fields) with the prompt as one user message."""
        request = cls.model_validate({**data, "messages": [{"role": "user", "content": prompt.text}]})
        request._raw_prompt = prompt
        return request

    @property
    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def max_output_tokens(self) -> Optional[int]:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def wants_usage_in_stream(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


# ---- responses -----------------------------------------------------------------------------------------


class CompletionTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class UsageInfo(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    completion_tokens_details: CompletionTokensDetails = CompletionTokensDetails()
    prompt_tokens_details: Optional[PromptTokensDetails] = None  # None: the engine did not report it


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: Optional[str] = None
    reasoning: Optional[str] = None
    reasoning_content: Optional[str] = None
    tool_calls: Optional[list[ToolCall]] = None


class Choice(BaseModel):
    index: int = 0
    message: ResponseMessage
    finish_reason: Optional[str]
    logprobs: Optional[Any] = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Optional[UsageInfo] = None
    system_fingerprint: Optional[str] = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "unimodel"
    max_model_len: Optional[int] = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
