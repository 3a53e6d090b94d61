"""vLLM's token endpoints' wire types: ``POST /tokenize`` (chat or prompt form) and ``POST /detokenize``.

The chat form's ``messages`` and ``tools`` are the chat request's, checked by it with its bounds; what is typed
here is the rest. ``/detokenize``'s token list is bounded in length (:data:`MAX_DETOKENIZE_TOKENS`) and each id
to a 32-bit range here, and to the model's vocabulary by the engine.
"""

from __future__ import annotations

from typing import Annotated, Optional

from pydantic import BaseModel, ConfigDict, Field

from unimodel.protocol.openai import MAX_NAME_CHARS

#: the most token ids one /detokenize takes (a 256k context's worth)
MAX_DETOKENIZE_TOKENS = 262_144
MAX_TOKEN_ID = 2**31 - 1


class TokenizeOptions(BaseModel):
    """``/tokenize``'s fields besides the prompt (``messages``/``tools`` or ``prompt``)."""

    model_config = ConfigDict(extra="ignore")

    add_special_tokens: Optional[bool] = None
    add_generation_prompt: Optional[bool] = None
    continue_final_message: Optional[bool] = None
    return_token_strs: Optional[bool] = None


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: Optional[str] = Field(default=None, min_length=1, max_length=MAX_NAME_CHARS)
    tokens: list[Annotated[int, Field(ge=0, le=MAX_TOKEN_ID)]] = Field(max_length=MAX_DETOKENIZE_TOKENS)
