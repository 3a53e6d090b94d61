"""vLLM's chat fields beyond OpenAI's that unimodel keeps: cached prompt tokens in the request log and the metrics,
request ``priority`` under a key's policy, and the ``top_logprobs`` rules of the wire request."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from tests.unit.telemetry.test_metrics import bounds, finished, value
from unimodel.errors import InvalidRequestError
from unimodel.gateway.keyhash import hash_key
from unimodel.gateway.policy import KeyPolicy
from unimodel.protocol.events import Usage
from unimodel.protocol.openai import ChatCompletionRequest
from unimodel.service.context import RequestContext
from unimodel.service.validate import allowed_priority
from unimodel.telemetry.metrics import MetricsObserver
from unimodel.telemetry.request_log import UserHashes, row_from

MSG = [{"role": "user", "content": "hi"}]


def test_cached_prompt_tokens_are_counted_only_where_reported() -> None:
    registry = CollectorRegistry()
    observer = MetricsObserver(registry, bounds())
    ours = {"key_name": "key-1", "route": "default", "model": "m", "reasoning_effort": "high"}
    observer.request_finished(finished(usage=Usage(10, 20, 5, cached_tokens=8)))
    observer.request_finished(finished(usage=Usage(10, 20, 5, cached_tokens=None)))
    observer.request_finished(finished(usage=Usage(10, 20, 5, cached_tokens=0)))
    assert value(registry, "unimodel_prompt_cached_tokens_total", **ours) == 8
    assert value(registry, "unimodel_tokens_total", **ours, token_type="prompt") == 30  # a part, not a new type


def test_the_request_log_row_keeps_cached_tokens() -> None:
    ctx = RequestContext("r1")
    ctx.usage = Usage(7, 9, 3, cached_tokens=5)
    assert row_from(ctx, UserHashes(b"k"))["cached_tokens"] == 5
    ctx.usage = Usage(7, 9, 3)
    assert row_from(ctx, UserHashes(b"k"))["cached_tokens"] is None
    assert row_from(RequestContext("r2"), UserHashes(b"k"))["cached_tokens"] is None


def test_priority_goes_through_only_where_the_caller_may_set_it() -> None:
    assert allowed_priority(None, (-5, 5), True) is None
    assert allowed_priority(7, None, False) is None  # no range, not allowed by the operator: dropped
    assert allowed_priority(-7, None, True) == -7  # the operator allows any for callers without a range
    assert allowed_priority(-5, (-5, 5), False) == -5 and allowed_priority(5, (-5, 5), False) == 5
    with pytest.raises(InvalidRequestError) as err:
        allowed_priority(-6, (-5, 5), True)  # a key's range binds even where the operator allows any
    assert err.value.param == "priority" and err.value.status_code == 400


def test_a_key_policy_names_its_priority_range() -> None:
    key = KeyPolicy.model_validate({"name": "batch", "key_hash": hash_key("sk-test", n=2), "priority":
                                    {"min": 10, "max": 20}})
    assert key.caller().priority == (10, 20)
    plain = KeyPolicy.model_validate({"name": "plain", "key_hash": hash_key("sk-test", n=2)})
    assert plain.caller().priority is None
    with pytest.raises(ValidationError, match="above max"):
        KeyPolicy.model_validate({"name": "x", "key_hash": hash_key("sk-test", n=2), "priority": {"min": 2, "max": 1}})
    with pytest.raises(ValidationError):
        KeyPolicy.model_validate({"name": "x", "key_hash": hash_key("sk-test", n=2), "priority": {"min": 2 ** 64}})


def test_top_logprobs_asks_for_logprobs_and_is_bounded() -> None:
    ChatCompletionRequest.model_validate({"model": "m", "messages": MSG, "logprobs": True, "top_logprobs": 20})
    ChatCompletionRequest.model_validate({"model": "m", "messages": MSG, "top_logprobs": 0})  # vLLM's default
    for bad in ({"top_logprobs": 2}, {"logprobs": False, "top_logprobs": 2}, {"logprobs": True, "top_logprobs": 21},
                {"logprobs": True, "top_logprobs": -1}, {"priority": 2 ** 63}):
        with pytest.raises(ValidationError) as err:
            ChatCompletionRequest.model_validate({"model": "m", "messages": MSG, **bad})
        assert err.value.errors()[0]["loc"][0] in ("top_logprobs", "priority")
