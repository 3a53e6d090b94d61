"""Token counting and detokenizing (``/tokenize``, ``/detokenize``, Anthropic's ``count_tokens``): the chat
pipeline's front half, then the engine's tokenizer instead of a generation.

A request that counts runs the same stage objects as chat, up to the validated request (auth, the key's
requests per minute and in-flight slot, parse by its shape, route, validate) and the image policy (an image's
tokens are counted from the image, which only that stage may fetch): a key's rpm is one count across chat and
counting, a key refused chat is refused counting, and the prompt counted is the one generation would render
(the route's defaults and the served model's reasoning level applied). The generation stages (the token
limits, idempotency, resilience) are not run: no answer is made, so there are no tokens to charge and nothing to
replay or retry.

The count is the engine's (:meth:`~unimodel.engines.base.Engine.count_prompt`: the local engine's renderer, an
upstream's ``/tokenize``), exact; where the engine cannot count, it is the usage estimator's (the number the
limits reserve), and says so: :data:`COUNT_HEADER` is ``exact`` or ``estimate``.
"""

from __future__ import annotations

from typing import Optional

from unimodel.engines.base import Engine, PromptCount
from unimodel.errors import UnsupportedFeatureError
from unimodel.service.ending import run_to_end
from unimodel.service.pipeline import Call, Pipeline, StageState
from unimodel.service.usage_estimate import UsageEstimator

#: the response header that says whether a count is the model's tokenizer's (``exact``) or an ``estimate``
COUNT_HEADER = "X-Unimodel-Token-Count"

#: a shape that counts puts here whether the client asked for each token's text (``/tokenize``'s
#: ``return_token_strs``)
TOKEN_STRS: StageState[bool] = StageState("tokens.token_strs")
#: ``/detokenize``'s shape puts the token ids here (its chat request is an empty prompt, for the model's name)
DETOKENIZE: StageState[list[int]] = StageState("tokens.detokenize")


class TokenService:
    """Runs counting requests through ``pipeline`` (the counting stages, ``compose.py``) on ``engine``."""

    def __init__(self, engine: Engine, pipeline: Pipeline, estimator: UsageEstimator = UsageEstimator()) -> None:
        self.engine = engine
        self.pipeline = pipeline
        self.estimator = estimator

    async def count(self, call: Call) -> PromptCount:
        """The validated request's prompt, counted (exact, else estimated); the header says which."""
        entered = await self.pipeline.enter(call)
        error: Optional[BaseException] = None
        try:
            request = call.require_engine_request()
            token_strs = call.get(TOKEN_STRS)
            counted = await self.engine.count_prompt(request, token_strs=bool(token_strs))
            if counted is None:
                limit = next((c.max_model_len for c in self.engine.models() if c.id == request.served_model), None)
                counted = PromptCount(self.estimator.prompt_tokens(request), False, max_model_len=limit)
            call.response_headers[COUNT_HEADER] = "exact" if counted.exact else "estimate"
            return counted
        except BaseException as exc:
            error = exc
            raise
        finally:
            await run_to_end(self.pipeline.exit(call, entered, error))

    async def detokenize(self, call: Call) -> str:
        """The text of the token ids the shape put in :data:`DETOKENIZE`, in the validated request's model."""
        entered = await self.pipeline.enter(call)
        error: Optional[BaseException] = None
        try:
            request = call.require_engine_request()
            text = await self.engine.detokenize(request.served_model, call.get(DETOKENIZE) or [])
            if text is None:
                raise UnsupportedFeatureError("this server cannot detokenize: its engine has no tokenizer of its "
                                              "own here (an upstream without /detokenize)", param="tokens")
            return text
        except BaseException as exc:
            error = exc
            raise
        finally:
            await run_to_end(self.pipeline.exit(call, entered, error))
