"""What a workload really sends, per kind of request: prompt size, ``max_tokens``, images, tools.

The report states this rather than the size flags, because the flags do not describe every workload (the
reasoning workload sends its own questions and asks for 2,048 tokens; a file's lines carry their own sizes).
It is read from the requests the workload built, so it is true whatever the flags said.

The prompt size is an estimate made here by hand, without the model's tokenizer (bench is a pure HTTP client
and must not load one): a word, a number or a punctuation mark counts as one token, which is how the usual BPE
tokenizers cut English (each filler word of the chat prompts is exactly one); the tools offered count as
their JSON's length over four (the usual rule of thumb for code and JSON, where punctuation merges into
tokens). Where the server reported ``usage.prompt_tokens``, its mean is given beside it: that is the truth,
with the chat template's tokens included.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Optional

from unimodel.bench.client import RequestRecord
from unimodel.bench.schema import KindShape
from unimodel.bench.workloads import Workload

_TOKEN = re.compile(r"\w+|[^\w\s]")


def estimate_tokens(text: str) -> int:
    """About how many tokens ``text`` is: its words, numbers and punctuation marks."""
    return len(_TOKEN.findall(text))


def _contents(message: Mapping[str, Any]) -> Iterable[Any]:
    content = message.get("content")
    if isinstance(content, list):
        yield from content
    elif content is not None:
        yield content


def _prompt(body: Mapping[str, Any]) -> tuple[int, int]:
    """(estimated prompt tokens of the text and tools, images) of one request body."""
    tokens, images = 0, 0
    for message in body.get("messages") or ():
        if not isinstance(message, Mapping):
            continue
        for part in _contents(message):
            if isinstance(part, str):
                tokens += estimate_tokens(part)
            elif isinstance(part, Mapping) and part.get("type") == "text":
                tokens += estimate_tokens(str(part.get("text", "")))
            elif isinstance(part, Mapping) and part.get("type") in ("image_url", "input_image", "image"):
                images += 1
    if body.get("tools"):
        tokens += len(json.dumps(body["tools"])) // 4
    return tokens, images


def _max_tokens(body: Mapping[str, Any]) -> Optional[int]:
    value = body.get("max_tokens", body.get("max_completion_tokens"))
    return value if isinstance(value, int) else None


def workload_shape(workload: Workload, records: Sequence[RequestRecord] = ()) -> list[KindShape]:
    """One entry per kind of request, in the order the workload first sends them."""
    bodies: dict[str, list[Mapping[str, Any]]] = {}
    seen: set[int] = set()
    for item in workload.items:  # a mix repeats the items of its shorter parts: each counts once
        if id(item) not in seen:
            seen.add(id(item))
            bodies.setdefault(item.kind, []).append(item.body)
    shapes = []
    for kind, group in bodies.items():
        prompts = [_prompt(b) for b in group]
        caps = [m for m in map(_max_tokens, group) if m is not None]
        reported = [r.prompt_tokens for r in records if r.kind == kind and r.ok and r.prompt_tokens is not None]
        shapes.append(KindShape(
            kind=kind, distinct=len(group), prompt_tokens=round(sum(t for t, _ in prompts) / len(prompts)),
            prompt_tokens_reported=sum(reported) / len(reported) if reported else None,
            max_tokens_min=min(caps) if caps else None, max_tokens_max=max(caps) if caps else None,
            images=max(i for _, i in prompts), tools=max(len(b.get("tools") or ()) for b in group),
            ignore_eos=any(b.get("ignore_eos") is True for b in group)))
    return shapes


def describe(shape: KindShape) -> str:
    """One kind as a phrase of the report: ``16 distinct prompts of ~16 tokens (the server counted 31),
    max_tokens 2048``."""
    prompt = f"~{shape.prompt_tokens} tokens"
    if shape.tools:
        prompt += f" with the {shape.tools} tools offered"
    if shape.images:
        prompt += f" + {shape.images} image{'s' if shape.images > 1 else ''}"
    if shape.prompt_tokens_reported is not None:
        prompt += f" (the server counted {shape.prompt_tokens_reported:,.0f})"
    if shape.max_tokens_min is None:
        cap = "no max_tokens (the server's default)"
    elif shape.max_tokens_min == shape.max_tokens_max:
        cap = f"max_tokens {shape.max_tokens_min}"
    else:
        cap = f"max_tokens {shape.max_tokens_min}–{shape.max_tokens_max}"
    return (f"{shape.distinct} distinct prompt{'s' if shape.distinct > 1 else ''} of {prompt}, {cap}"
            + (", ignore_eos" if shape.ignore_eos else ""))
