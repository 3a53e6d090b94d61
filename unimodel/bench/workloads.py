"""What a benchmark sends: built-in workloads that ship with the package, or a user's JSONL of requests.

A :class:`Workload` is a fixed list of chat requests (everything but ``model`` and the streaming fields),
cycled through in order; :meth:`Workload.request` makes request ``i`` into the body that goes on the wire
(always streamed, with ``stream_options.include_usage`` so the server reports token counts).

Built-ins (:func:`build_workload`):

- ``chat``: synthetic prompts of about ``input_tokens`` tokens (default 128; common English words, each one
  token with the usual BPE tokenizers; every prompt starts differently, so no prefix cache serves two of them);
- ``reasoning``: short questions that make a reasoning model think before answering;
- ``vision``: PNG pictures of a colored shape, drawn here with Pillow (seeded), and a question about them;
- ``tools``: requests that call for one of four function tools (``tool_choice: auto``);
- ``mixed``: the four above, interleaved;
- ``PATH.jsonl``: one OpenAI chat request body per line (``messages`` required; ``model``, ``stream`` and
  ``stream_options`` are set by the run; a run's ``--reasoning-effort`` overrides the line's).

The size flags are applied or refused, never ignored (:func:`check_options`): ``input_tokens`` is the chat
prompts' length (chat, and the chat part of mixed); any other workload sends its own prompts and refuses it.
``output_tokens`` is every built-in request's ``max_tokens`` (defaults: :data:`DEFAULT_MAX_TOKENS`); a file's
requests carry their own, so a file refuses it: ``max_tokens`` overrides every request's, a file's included.
``ignore_eos`` (exact answer lengths on vLLM, SGLang and unimodel) goes into every request.
"""

from __future__ import annotations

import base64
import io
import json
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from unimodel.bench import workload_data as data

BUILTIN = ("chat", "reasoning", "vision", "tools", "mixed")
SYNTHETIC_PROMPTS = 64  # distinct synthetic chat prompts, cycled
VISION_IMAGES = 12
#: max_tokens per kind when neither --output-tokens nor --max-tokens is given
DEFAULT_MAX_TOKENS = {"chat": 128, "reasoning": 2048, "vision": 64, "tools": 256}
DEFAULT_INPUT_TOKENS = 128  # the chat prompts' length when --input-tokens is not given


class WorkloadError(ValueError):
    """A workload name or file that cannot be used (the message says why, with the line number)."""


@dataclass(frozen=True)
class WorkloadOptions:
    input_tokens: Optional[int] = None  # chat prompts; None: DEFAULT_INPUT_TOKENS
    output_tokens: Optional[int] = None  # the built-ins' max_tokens; None: DEFAULT_MAX_TOKENS per kind
    max_tokens: Optional[int] = None  # every request's max_tokens, a file's included
    ignore_eos: bool = False
    seed: int = 0
    image_size: int = 256


@dataclass(frozen=True)
class WorkItem:
    kind: str  # chat | reasoning | vision | tools | file
    body: Mapping[str, Any]


@dataclass(frozen=True)
class Workload:
    name: str
    items: tuple[WorkItem, ...]

    def request(self, index: int, model: str, effort: Optional[str]) -> tuple[str, dict[str, Any]]:
        """Request ``index`` (cycling through the items) as (its kind, the JSON body to send).

        The body's top level is the caller's to change; its nested values (messages, images, tools) are shared
        by every request of the item and only to be read (the client serializes them): a shallow copy, where
        a deep one cost ~40 µs a request for the tools workload.
        """
        item = self.items[index % len(self.items)]
        body = dict(item.body)
        body["model"] = model
        body["stream"] = True
        body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        if effort is not None:
            body["reasoning_effort"] = effort
        return item.kind, body


def check_options(spec: str, options: WorkloadOptions) -> None:
    """Refuse a size flag the workload cannot honour (one line naming the workload and the flag)."""
    if options.output_tokens is not None and options.max_tokens is not None:
        raise WorkloadError("--output-tokens and --max-tokens both set max_tokens: give one of them")
    name = spec if spec in BUILTIN else f"file {spec}"
    if options.input_tokens is not None and spec not in ("chat", "mixed"):
        raise WorkloadError(f"--input-tokens sets the chat prompts' length; the {name} workload sends its own "
                            "prompts: drop --input-tokens, or use --workload chat")
    if options.output_tokens is not None and spec not in BUILTIN:
        raise WorkloadError(f"--output-tokens: the requests of {name} carry their own max_tokens: use "
                            "--max-tokens to override them")


def build_workload(spec: str, options: WorkloadOptions = WorkloadOptions()) -> Workload:
    """A built-in workload by name, or the requests of a ``.jsonl`` file (its options checked first)."""
    check_options(spec, options)
    builders = {"chat": _chat, "reasoning": _reasoning, "vision": _vision, "tools": _tools}
    if spec in builders:
        return Workload(spec, tuple(builders[spec](options)))
    if spec == "mixed":
        groups = [builders[k](options) for k in ("chat", "reasoning", "vision", "tools")]
        longest = max(len(g) for g in groups)
        mixed = [g[i % len(g)] for i in range(longest) for g in groups]
        return Workload(spec, tuple(mixed))
    path = Path(spec)
    if path.suffix == ".jsonl" or path.is_file():
        return load_jsonl(path, options)
    raise WorkloadError(f"unknown workload {spec!r}: use {', '.join(BUILTIN)} or a .jsonl file of requests")


def load_jsonl(path: Path, options: WorkloadOptions = WorkloadOptions()) -> Workload:
    """One OpenAI chat request per line; blank lines and lines starting with # are skipped. ``max_tokens``
    (both fields, where the line has ``max_completion_tokens``) and ``ignore_eos`` are applied when set."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise WorkloadError(f"cannot read workload file {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        where = exc.object[:exc.start].count(b"\n") + 1
        raise WorkloadError(f"{path}:{where}: not UTF-8 text") from exc
    items = []
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            body = json.loads(line)
        except json.JSONDecodeError as exc:
            raise WorkloadError(f"{path}:{number}: not JSON ({exc.msg})") from exc
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or not body["messages"]:
            raise WorkloadError(f"{path}:{number}: a chat request needs a non-empty 'messages' list")
        if not isinstance(body.get("stream_options", {}), (dict, type(None))):
            raise WorkloadError(f"{path}:{number}: 'stream_options' must be an object")
        if options.max_tokens is not None:
            body["max_tokens"] = options.max_tokens
            if "max_completion_tokens" in body:
                body["max_completion_tokens"] = options.max_tokens
        body.update(_extra(options))
        items.append(WorkItem("file", body))
    if not items:
        raise WorkloadError(f"{path}: no requests in the file")
    return Workload(str(path), tuple(items))


def _max_tokens(kind: str, options: WorkloadOptions) -> int:
    if options.max_tokens is not None:
        return options.max_tokens
    return options.output_tokens if options.output_tokens is not None else DEFAULT_MAX_TOKENS[kind]


def _extra(options: WorkloadOptions) -> dict[str, Any]:
    return {"ignore_eos": True} if options.ignore_eos else {}


def synthetic_prompt(index: int, input_tokens: int, rng: random.Random) -> str:
    """About ``input_tokens`` tokens: a distinct opening, then common words (one token each)."""
    opening = f"Request {index}. Continue this text:"  # ~8 tokens
    words = [rng.choice(data.FILLER_WORDS) for _ in range(max(1, input_tokens - 8))]
    return opening + " " + " ".join(words)


def _chat(options: WorkloadOptions) -> list[WorkItem]:
    rng = random.Random(options.seed)
    length = options.input_tokens if options.input_tokens is not None else DEFAULT_INPUT_TOKENS
    return [WorkItem("chat", {"messages": [{"role": "user", "content": synthetic_prompt(i, length, rng)}],
                              "max_tokens": _max_tokens("chat", options), **_extra(options)})
            for i in range(SYNTHETIC_PROMPTS)]


def _reasoning(options: WorkloadOptions) -> list[WorkItem]:
    return [WorkItem("reasoning", {"messages": [{"role": "user", "content": q}],
                                   "max_tokens": _max_tokens("reasoning", options), **_extra(options)})
            for q in data.REASONING_QUESTIONS]


def _tools(options: WorkloadOptions) -> list[WorkItem]:
    tools = [json.loads(json.dumps(t)) for t in data.TOOLS]
    return [WorkItem("tools", {"messages": [{"role": "user", "content": p}], "tools": tools,
                               "tool_choice": "auto", "max_tokens": _max_tokens("tools", options),
                               **_extra(options)})
            for p in data.TOOL_PROMPTS]


def _vision(options: WorkloadOptions) -> list[WorkItem]:
    rng = random.Random(options.seed)
    items = []
    for _ in range(VISION_IMAGES):
        shape, color = rng.choice(data.SHAPES), rng.choice(sorted(data.COLORS))
        uri = shape_png_data_uri(shape, data.COLORS[color], options.image_size, rng)
        content = [{"type": "text", "text": data.VISION_QUESTION},
                   {"type": "image_url", "image_url": {"url": uri}}]
        items.append(WorkItem("vision", {"messages": [{"role": "user", "content": content}],
                                         "max_tokens": _max_tokens("vision", options), **_extra(options)}))
    return items


def shape_png_data_uri(shape: str, rgb: tuple[int, int, int], size: int, rng: random.Random) -> str:
    """A ``data:image/png;base64,`` picture: one filled shape of ``rgb`` on a light background."""
    from PIL import Image, ImageDraw  # Pillow comes with mistral_common[image]; only the vision workload needs it

    image = Image.new("RGB", (size, size), (245, 245, 240))
    draw = ImageDraw.Draw(image)
    extent = rng.randint(size // 3, size * 2 // 3)
    x, y = rng.randint(0, size - extent), rng.randint(0, size - extent)
    if shape == "circle":
        draw.ellipse((x, y, x + extent, y + extent), fill=rgb)
    elif shape == "square":
        draw.rectangle((x, y, x + extent, y + extent), fill=rgb)
    else:
        draw.polygon([(x + extent // 2, y), (x, y + extent), (x + extent, y + extent)], fill=rgb)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
