"""The legacy text-completions API's own fields (``POST /v1/completions``, as OpenAI and vLLM serve it).

Only what the API has and chat does not is typed here: the fields both share (``model``, ``max_tokens``,
``temperature``, ``top_p``, ``stop``, ``seed``, ``stream``, vLLM's sampling extensions …) are checked by the chat
request they become (:class:`~unimodel.protocol.openai.ChatCompletionRequest`), with the same bounds, and so are
unknown fields (dropped, refused, or an operator's allowlist). Every size a client controls is bounded: the
prompt by the request body's size, ``logprobs`` like chat's ``top_logprobs``.
"""

from __future__ import annotations

from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

#: OpenAI's and vLLM's default when a request gives no ``max_tokens`` (or ``null``)
DEFAULT_MAX_TOKENS = 16

#: the fields a completions request shares with chat, passed on to the chat request as they are
SHARED_FIELDS = frozenset({
    "model", "stream", "stream_options", "max_tokens", "temperature", "top_p", "stop", "seed", "presence_penalty",
    "frequency_penalty", "logit_bias", "user", "route", "top_k", "min_p", "repetition_penalty", "min_tokens",
    "ignore_eos", "stop_token_ids", "include_stop_str_in_output", "prompt_cache_key"})

#: the completions API's own fields (typed in :class:`CompletionFields`)
OWN_FIELDS = frozenset({"prompt", "echo", "logprobs", "suffix", "n", "best_of", "add_special_tokens"})


class CompletionFields(BaseModel):
    """The fields of a completions request that chat does not have."""

    model_config = ConfigDict(extra="ignore")

    prompt: Union[str, list[Any]]
    echo: Optional[bool] = None
    logprobs: Optional[int] = Field(default=None, ge=0, le=20)
    suffix: Optional[str] = None
    n: Optional[int] = None
    best_of: Optional[int] = None
    add_special_tokens: Optional[bool] = None  # vLLM's extension: BOS before the prompt (default true)
