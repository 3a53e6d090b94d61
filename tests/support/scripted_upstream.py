"""A scripted vLLM-like OpenAI-compatible server for tests (stdlib only, loopback only).

Each served model name maps to a :class:`Script` that says what the "model" answers and how: raw text with
Mistral v15 markers (as vLLM started without parsers gives: its Mistral tokenizer keeps [THINK], [/THINK],
[TOOL_CALLS] and [ARGS] even with special tokens skipped, its default), ``<think>`` text, or pre-parsed fields (``reasoning``/``tool_calls``, as
vLLM with ``--reasoning-parser mistral --tool-call-parser mistral``); streamed or one JSON body; logprobs
when asked (one token a frame, as vLLM: every frame's text, markers included, and the stop token ``</s>`` on the
finishing frame; see :func:`token_logprob`); ``cached_tokens`` in the usage; errors
(always, or only the first N calls: ``fail_first``), slowness, and a connection dropped mid-stream. Every
request body received is kept in ``requests``.

A plain ``ThreadingHTTPServer`` rather than an ASGI app, so a test can cut the socket in the middle of a
chunked response, which real servers do when they crash.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal, Optional

MARKERS = ("[THINK]", "[/THINK]", "[TOOL_CALLS]", "[ARGS]")


@dataclass
class Script:
    mode: Literal["raw", "parsed", "think-tags"] = "raw"
    reasoning: str = ""
    content: str = ""
    tool_calls: list[tuple[str, str]] = field(default_factory=list)  # (name, arguments JSON text)
    chunk_chars: int = 4
    delay_s: float = 0.0  # before the response starts
    frame_delay_s: float = 0.0  # between frames
    error_status: Optional[int] = None
    error_message: str = "scripted failure"
    drop_after_frames: Optional[int] = None  # cut the connection after this many frames
    finish_reason: Optional[str] = None  # default: tool_calls / stop
    report_usage: bool = True
    prompt_tokens: int = 11
    ignore_stream: bool = False  # answer one JSON body even when asked to stream
    error_frame_after: Optional[int] = None  # send an OpenAI error frame mid-stream (vLLM does this)
    honors_effort: bool = False  # like the real model: no thinking when told reasoning_effort "none"
    error_headers: dict[str, str] = field(default_factory=dict)  # sent with error_status, e.g. Retry-After
    continuous_usage: bool = True  # honour stream_options.continuous_usage_stats (usage in every frame)
    cached_tokens: Optional[int] = None  # usage.prompt_tokens_details.cached_tokens (vLLM's prefix cache hits)
    fail_first: int = 0  # the first N calls to this model answer fail_status (with error_headers), then succeed
    fail_status: int = 503
    # per request: when set, the request body is answered by the script respond(body) (an evaluator's answers;
    # a failure on a marker in one caller's prompt), its delay_s and error_status included
    respond: Optional[Callable[[dict[str, Any]], "Script"]] = None

    def raw_text(self, skip_special: bool) -> str:
        if self.mode == "think-tags":
            text = (f"<think>{self.reasoning}</think>" if self.reasoning else "") + self.content
            for name, args in self.tool_calls:
                text += f'<tool_call>{{"name": "{name}", "arguments": {args}}}</tool_call>'
            return text
        text = (f"[THINK]{self.reasoning}[/THINK]" if self.reasoning else "") + self.content
        for name, args in self.tool_calls:
            text += f"[TOOL_CALLS]{name}[ARGS]{args}"
        return text


def _pieces(text: str, n: int) -> list[str]:
    """Frames of ``n`` characters, as a server sends tokens; a marker is one token, hence one frame."""
    out: list[str] = []
    i = 0
    while i < len(text):
        marker = next((m for m in MARKERS if text.startswith(m, i)), None)
        if marker:
            out.append(marker)
            i += len(marker)
            continue
        nxt = min([j for j in (text.find(m, i) for m in MARKERS) if j != -1] + [len(text)])
        out.extend(text[k:min(k + n, nxt)] for k in range(i, nxt, n))
        i = nxt
    return out


STOP_TOKEN = "</s>"


def token_logprob(token: str, top: int) -> dict[str, Any]:
    """The logprobs entry the scripted upstream gives a token: a made-up but fixed log probability from the
    token's text, and ``top`` alternatives (the token itself first, then ``alt-1``, ``alt-2`` … less likely)."""
    logprob = -round(0.125 * (1 + sum(token.encode()) % 7), 3)
    alts = [{"token": token, "logprob": logprob, "bytes": list(token.encode())}]
    alts += [{"token": f"alt-{i}", "logprob": logprob - i, "bytes": list(f"alt-{i}".encode())} for i in range(1, top)]
    return {"token": token, "logprob": logprob, "bytes": list(token.encode()), "top_logprobs": alts[:top]}


def _frame_tokens(delta: dict[str, Any]) -> list[str]:
    """The token a frame carries (one a frame): its text, whichever field holds it."""
    text = (delta.get("content") or "") + (delta.get("reasoning") or "")
    for call in delta.get("tool_calls") or []:
        fn = call.get("function") or {}
        text += (fn.get("name") or "") if call.get("id") else (fn.get("arguments") or "")
    return [text] if text else []


class _QuietServer(ThreadingHTTPServer):
    # a real server's listen backlog (socketserver's default of 5 resets connections when 32 clients connect at once)
    request_queue_size = 1024

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # dropped connections are the point of some scripts


class ScriptedUpstream:
    def __init__(self, scripts: Optional[dict[str, Script]] = None, port: int = 0) -> None:
        self.scripts: dict[str, Script] = dict(scripts or {})
        # GET /v1/models: None answers the scripted models; else (status, raw body bytes), for probe tests
        self.models_answer: Optional[tuple[int, bytes]] = None
        self.requests: list[dict[str, Any]] = []
        self.disconnects = 0
        # POST /tokenize and /detokenize (vLLM's, at the root): served while True, else 404 as a server without them;
        # their bodies are kept in token_requests (not in requests, which counts generations)
        self.token_endpoints = True
        self.token_requests: list[tuple[str, dict[str, Any]]] = []
        self._calls: dict[str, int] = {}  # POSTs per model name, for fail_first
        self._lock = threading.Lock()
        self._server = _QuietServer(("127.0.0.1", port), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> "ScriptedUpstream":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def calls(self, model: str) -> int:
        """How many chat requests this model has been sent."""
        return sum(1 for body in list(self.requests) if body.get("model") == model)

    def _count_call(self, model: str) -> int:
        with self._lock:
            self._calls[model] = n = self._calls.get(model, 0) + 1
        return n

    # ---- responses --------------------------------------------------------------------------------

    def frames(self, script: Script, body: dict[str, Any], model: str) -> list[dict[str, Any]]:
        base = {"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1, "model": model}

        def chunk(delta: dict[str, Any], finish: Optional[str] = None) -> dict[str, Any]:
            return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

        out = [chunk({"role": "assistant", "content": ""})]
        if script.mode == "parsed":
            for p in _pieces(script.reasoning, script.chunk_chars):
                out.append(chunk({"reasoning": p}))
            for p in _pieces(script.content, script.chunk_chars):
                out.append(chunk({"content": p}))
            for i, (name, args) in enumerate(script.tool_calls):
                out.append(chunk({"tool_calls": [{"index": i, "id": f"chatcmpl-tool-{i}", "type": "function",
                                                  "function": {"name": name, "arguments": ""}}]}))
                for p in _pieces(args, script.chunk_chars):
                    out.append(chunk({"tool_calls": [{"index": i, "function": {"arguments": p}}]}))
        else:
            raw = script.raw_text(skip_special=body.get("skip_special_tokens", True) is not False)
            for p in _pieces(raw, script.chunk_chars):
                out.append(chunk({"content": p}))
        finish = script.finish_reason or ("tool_calls" if script.tool_calls and script.mode == "parsed"
                                          else "stop")
        out.append(chunk({}, finish))
        if body.get("logprobs"):  # as vLLM: each frame its tokens' entries, the finishing one the stop token's
            top = int(body.get("top_logprobs") or 0)
            for fr in out[1:]:
                choice = fr["choices"][0]
                tokens = _frame_tokens(choice["delta"]) if choice["finish_reason"] is None else [STOP_TOKEN]
                choice["logprobs"] = {"content": [token_logprob(t, top) for t in tokens]}
        if script.continuous_usage and (body.get("stream_options") or {}).get("continuous_usage_stats"):
            for i, fr in enumerate(out):
                fr["usage"] = {"prompt_tokens": script.prompt_tokens, "completion_tokens": i,
                               "total_tokens": script.prompt_tokens + i}
        if script.report_usage:
            completion = len(out) - 2
            reasoning = len(_pieces(script.reasoning, script.chunk_chars)) if script.mode == "parsed" else None
            usage: dict[str, Any] = {"prompt_tokens": script.prompt_tokens, "completion_tokens": completion,
                                     "total_tokens": script.prompt_tokens + completion}
            if reasoning is not None:
                usage["completion_tokens_details"] = {"reasoning_tokens": reasoning}
            if script.cached_tokens is not None:
                usage["prompt_tokens_details"] = {"cached_tokens": script.cached_tokens}
            out.append({**base, "choices": [], "usage": usage})
        return out

    def whole(self, script: Script, body: dict[str, Any], model: str) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant"}
        if script.mode == "parsed":
            message["content"] = script.content or None
            if script.reasoning:
                message["reasoning"] = script.reasoning
            if script.tool_calls:
                message["tool_calls"] = [{"id": f"chatcmpl-tool-{i}", "type": "function",
                                          "function": {"name": n, "arguments": a}}
                                         for i, (n, a) in enumerate(script.tool_calls)]
        else:
            message["content"] = script.raw_text(skip_special=body.get("skip_special_tokens", True) is not False)
        finish = script.finish_reason or ("tool_calls" if script.tool_calls and script.mode == "parsed"
                                          else "stop")
        answer = {"id": "chatcmpl-up", "object": "chat.completion", "created": 1, "model": model,
                  "choices": [{"index": 0, "message": message, "finish_reason": finish}]}
        if body.get("logprobs"):  # the same entries as the streamed answer's, in one list
            streamed = self.frames(script, {**body, "stream": True}, model)
            answer["choices"][0]["logprobs"] = {"content": [
                entry for fr in streamed if fr["choices"]
                for entry in (fr["choices"][0].get("logprobs") or {}).get("content", [])]}
        if script.report_usage:  # the same counts as the streamed answer's (one token a frame)
            streamed = self.frames(script, {**body, "stream_options": {"include_usage": True}}, model)
            answer["usage"] = streamed[-1]["usage"]
        return answer

    @staticmethod
    def tokenize(body: dict[str, Any]) -> list[int]:
        """The scripted tokenizer: a token per character (its code point); BOS (1) before a prompt that asks for
        special tokens; a chat form's role names, contents, tools and reasoning level all count."""
        if "prompt" in body:
            return ([1] if body.get("add_special_tokens", True) else []) + [ord(c) for c in body["prompt"]]
        text = "".join(f"<{m.get('role')}>{json.dumps(m.get('content'))}" for m in body.get("messages") or [])
        text += json.dumps(body.get("tools") or []) + json.dumps(body.get("chat_template_kwargs") or {})
        return [ord(c) for c in text]

    def text_frames(self, script: Script, body: dict[str, Any], model: str) -> list[dict[str, Any]]:
        """A raw prompt's answer as /v1/completions streams it: ``text`` choices, usage last when asked."""
        base = {"id": "cmpl-up", "object": "text_completion", "created": 1, "model": model}
        pieces = _pieces(script.raw_text(skip_special=True), script.chunk_chars)
        out = [{**base, "choices": [{"index": 0, "text": p, "logprobs": None, "finish_reason": None}]}
               for p in pieces]
        out.append({**base, "choices": [{"index": 0, "text": "", "logprobs": None,
                                         "finish_reason": script.finish_reason or "stop"}]})
        if script.report_usage:
            out.append({**base, "choices": [], "usage": {"prompt_tokens": len(self.tokenize(body)),
                                                          "completion_tokens": len(pieces),
                                                          "total_tokens": len(self.tokenize(body)) + len(pieces)}})
        return out

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def setup(self) -> None:
                super().setup()
                # small SSE writes must not wait for delayed ACKs (Nagle), or latency figures mean nothing
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def _json(self, status: int, payload: Any, headers: Optional[dict[str, str]] = None,
                      raw: Optional[bytes] = None) -> None:
                data = raw if raw is not None else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path.rstrip("/") == "/v1/models" and upstream.models_answer is not None:
                    self._json(upstream.models_answer[0], None, raw=upstream.models_answer[1])
                elif self.path.rstrip("/") == "/v1/models":
                    self._json(200, {"object": "list", "data": [{"id": m, "object": "model", "max_model_len": 32768}
                                                                 for m in upstream.scripts]})
                elif self.path == "/health":
                    self._json(200, {})
                else:
                    self._json(404, {"error": {"message": "no route", "type": "NotFound", "code": 404}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.path in ("/tokenize", "/detokenize"):
                    self._tokens(body)
                    return
                upstream.requests.append(body)
                model = body.get("model", "")
                script = upstream.scripts.get(model)
                if script is None:
                    self._json(404, {"error": {"message": f"The model `{model}` does not exist.",
                                               "type": "NotFoundError", "param": "model", "code": 404}})
                    return
                nth = upstream._count_call(model)
                if script.delay_s:
                    time.sleep(script.delay_s)
                if nth <= script.fail_first:
                    self._json(script.fail_status, {"error": {"message": f"scripted failure {nth} of "
                                                                         f"{script.fail_first}",
                                                              "type": "ServiceUnavailable",
                                                              "code": script.fail_status}},
                               script.error_headers)
                    return
                if script.respond is not None:  # this request's own script: its delay and error count too
                    script = script.respond(body)
                    if script.delay_s:
                        time.sleep(script.delay_s)
                if script.error_status:
                    self._json(script.error_status, {"error": {"message": script.error_message,
                                                               "type": "BadRequestError", "param": "messages",
                                                               "code": script.error_status}},
                               script.error_headers)
                    return
                if script.honors_effort and body.get("reasoning_effort") == "none":
                    script = Script(mode=script.mode, content=script.content, chunk_chars=script.chunk_chars)
                if body.get("continue_final_message"):
                    # continuing a closed thinking prefix, as vLLM does: the model now only answers
                    script = Script(mode=script.mode, content=script.content, tool_calls=script.tool_calls,
                                    chunk_chars=script.chunk_chars, prompt_tokens=script.prompt_tokens + 100,
                                    report_usage=script.report_usage, continuous_usage=script.continuous_usage)
                if self.path == "/v1/completions":
                    frames = upstream.text_frames(script, body, model)
                    if not body.get("stream"):
                        whole = {**frames[0], "choices": [{"index": 0, "text": script.raw_text(skip_special=True),
                                                           "logprobs": None,
                                                           "finish_reason": script.finish_reason or "stop"}]}
                        if script.report_usage:
                            whole["usage"] = frames[-1]["usage"]
                        self._json(200, whole)
                        return
                    if not (body.get("stream_options") or {}).get("include_usage") and script.report_usage:
                        frames = frames[:-1]
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for fr in frames:
                        self._chunk(b"data: " + json.dumps(fr).encode() + b"\n\n")
                    self._chunk(b"data: [DONE]\n\n")
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                    return
                if not body.get("stream") or script.ignore_stream:
                    self._whole(script, body, model)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    for i, fr in enumerate(upstream.frames(script, body, model)):
                        if script.drop_after_frames is not None and i >= script.drop_after_frames:
                            self.connection.shutdown(2)  # a crash: no terminating chunk
                            self.close_connection = True
                            return
                        if script.error_frame_after is not None and i == script.error_frame_after:
                            self._chunk(b'data: {"error": {"message": "scripted mid-stream failure", '
                                        b'"type": "InternalServerError", "code": 500}}\n\n')
                            break
                        self._chunk(b"data: " + json.dumps(fr).encode() + b"\n\n")
                        if script.frame_delay_s:
                            time.sleep(script.frame_delay_s)
                    else:
                        self._chunk(b"data: [DONE]\n\n")
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    upstream.disconnects += 1
                    self.close_connection = True

            def _tokens(self, body: dict[str, Any]) -> None:
                """vLLM's /tokenize and /detokenize with the scripted tokenizer (a token per character)."""
                upstream.token_requests.append((self.path, body))
                if not upstream.token_endpoints:
                    self._json(404, {"detail": "Not Found"})
                    return
                if body.get("model") not in upstream.scripts:
                    self._json(404, {"error": {"message": f"The model `{body.get('model')}` does not exist.",
                                               "type": "NotFoundError", "param": "model", "code": 404}})
                    return
                if self.path == "/detokenize":
                    self._json(200, {"prompt": "".join(chr(t) for t in body.get("tokens") or [])})
                    return
                tokens = upstream.tokenize(body)
                answer: dict[str, Any] = {"count": len(tokens), "max_model_len": 32768, "tokens": tokens}
                if body.get("return_token_strs"):
                    answer["token_strs"] = [chr(t) for t in tokens]
                self._json(200, answer)

            def _whole(self, script: Script, body: dict[str, Any], model: str) -> None:
                """One JSON body, after as long as streaming it would take (a client that leaves meanwhile is
                counted in ``disconnects``, as vLLM aborts it); ``drop_after_frames``: cut mid-body."""
                answer = json.dumps(upstream.whole(script, body, model)).encode()
                deadline = time.monotonic() + script.frame_delay_s * len(upstream.frames(script, body, model))
                while time.monotonic() < deadline:
                    readable, _, _ = select.select([self.connection], [], [], min(0.05, deadline - time.monotonic()))
                    if readable and not self.connection.recv(1, socket.MSG_PEEK):  # the client closed
                        upstream.disconnects += 1
                        self.close_connection = True
                        return
                if script.drop_after_frames is not None:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer[: len(answer) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(2)  # a crash: the body ends short
                    self.close_connection = True
                    return
                self._json(200, None, raw=answer)

            def _chunk(self, data: bytes) -> None:
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

        return Handler


def main() -> None:
    """Run standalone (benchmarks): ``python -m tests.support.scripted_upstream PORT_FILE``."""
    import sys

    scripts = {
        "bench-plain": Script(mode="raw", content="The answer is 4. " * 8, chunk_chars=6),
        "bench-think": Script(mode="raw", reasoning="step " * 20, content="The answer is 4.", chunk_chars=6),
        "bench-thinker": Script(mode="raw", reasoning="t " * 6000, content="The answer is 42.", chunk_chars=2,
                                honors_effort=True),
        # paced like a real server (50 ms to the first token, 4 ms a token; 20 thinking + 60 answer tokens):
        # benchmarks/bench_vs_guidellm.py measures it with two tools
        "bench-paced": Script(mode="parsed", reasoning="step " * 16, content="word " * 48, chunk_chars=4,
                              delay_s=0.05, frame_delay_s=0.004),
        # a client error on every call (not retried, not counted by the breaker): benchmarks/soak.py's failures
        "bench-fail": Script(error_status=400, error_message="scripted client error"),
    }
    with ScriptedUpstream(scripts) as upstream:
        port_file = sys.argv[1] if len(sys.argv) > 1 else None
        if port_file:
            with open(port_file, "w") as fh:
                fh.write(upstream.base_url)
        else:
            print(upstream.base_url, flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
