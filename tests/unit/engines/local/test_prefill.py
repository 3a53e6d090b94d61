"""Assistant prefill on tiny-random (Mistral, mistral_common): the model continues the final message."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from mistral_common.protocol.instruct.messages import AssistantMessage, UserMessage
from mistral_common.protocol.instruct.request import ChatCompletionRequest as MistralRequest

from tests.support.requests import gen_request
from unimodel.engines.base import GenerationRequest
from unimodel.engines.local import LocalEngine
from unimodel.errors import InvalidRequestError
from unimodel.formats.mistral_render import MistralRenderer
from unimodel.protocol.events import ContentDelta, Event, Finish, ReasoningDelta, Usage

PREFIX = "Once upon a time"
MESSAGES = [{"role": "user", "content": "Tell me a story."}, {"role": "assistant", "content": PREFIX}]


def request(messages: list[dict[str, Any]], max_tokens: int = 8, effort: str | None = "none",
            **wire: Any) -> GenerationRequest:
    body = {"model": "tiny-random", "messages": messages, "temperature": 0.0, **wire}
    return gen_request("r", "tiny-random", body, max_tokens, model_effort=effort)


@pytest.fixture(scope="module")
def renderer(tiny_path: Path) -> MistralRenderer:
    return MistralRenderer(tiny_path / "tekken.json")


@pytest.mark.parametrize("wire", [{"continue_final_message": True},
                                  {"messages": [MESSAGES[0], {**MESSAGES[1], "prefix": True}]}],
                         ids=["continue_final_message", "prefix"])
@pytest.mark.parametrize("effort", ["none", "high"])
def test_prefill_renders_as_mistral_common_s_prefix(renderer: MistralRenderer, wire: dict[str, Any],
                                                    effort: str) -> None:
    req = request(**{"messages": MESSAGES, **wire}, effort=effort)
    assert req.continue_final_message
    ours = renderer.render(req).token_ids
    expected = renderer.tokenizer.encode_chat_completion(MistralRequest(
        messages=[UserMessage(content="Tell me a story."), AssistantMessage(content=PREFIX, prefix=True)],
        reasoning_effort=effort)).tokens
    assert ours == expected
    inner = renderer.tokenizer.instruct_tokenizer.tokenizer
    prefix_ids = inner.encode(PREFIX, bos=False, eos=False)
    assert ours[-len(prefix_ids):] == prefix_ids and inner.eos_id not in ours


def test_a_final_assistant_message_without_prefill_is_still_a_400(renderer: MistralRenderer) -> None:
    with pytest.raises(InvalidRequestError) as err:
        renderer.render(request(MESSAGES))
    assert err.value.param == "messages"


async def test_the_output_is_only_the_continuation(engine: LocalEngine) -> None:
    req = request(MESSAGES, continue_final_message=True, max_tokens=8)
    prompt = await engine.render(req)
    events: list[Event] = [e async for e in engine.generate(req)]
    usage = next(e for e in events if isinstance(e, Usage))
    assert usage.prompt_tokens == len(prompt.token_ids) and usage.completion_tokens == 8
    assert events[-1] == Finish("length")
    text = "".join(e.text for e in events if isinstance(e, (ContentDelta, ReasoningDelta)))
    # greedy: the first word is the model's next token after the prefix, and the prefix is not repeated
    with torch.no_grad():
        logits = engine.loaded.model(input_ids=torch.tensor([prompt.token_ids])).logits[0, -1]
    detok = engine.loaded.renderer.new_detokenizer()
    first = detok.push(int(logits.argmax())) + detok.flush()
    assert first and text.startswith(first) and not text.startswith(PREFIX)
