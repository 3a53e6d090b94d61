"""The real agent CLIs against a live unimodel: Codex CLI through ``POST /v1/responses`` and Claude Code through
``POST /v1/messages``, each completing a scripted task offline.

unimodel runs ``--engine upstream`` in front of the scripted upstream, whose "model" answers by turn: first a
call to the CLI's own tool (Codex's ``exec_command`` shell tool, Claude Code's ``Write``) that makes a file in the
CLI's working directory, then, once the request carries the tool's result, a final text. So a pass means the CLI
read our stream, ran the tool, sent its result back in its own wire form, and printed our answer; the file, the
tool result the upstream saw and the routes the server answered say so independently. How the CLIs are set up,
and what they send, is in tests/support/agent_clis.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tests.support.agent_clis import (CLAUDE, CODEX, CliHung, CliResult, base_env, claude_print, codex_exec, require_cli,
                                      run_cli)
from tests.support.live_server import LiveServer
from tests.support.scripted_upstream import Script, ScriptedUpstream
from unimodel.compose import build_engine
from unimodel.config import Settings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

API_KEY = "sk-agent-clis-test"
CODEX_MODEL = "codex-agent"
CLAUDE_TEXT_MODEL = "claude-text"
CLAUDE_TOOL_MODEL = "claude-writer"
CODEX_FILE, CODEX_FILE_TEXT = "made-by-codex.txt", "codex-was-here"
CODEX_FINAL = "Codex task done: the file is written."
CODEX_REASONING = "The user wants a file; one shell command makes it."
CLAUDE_TEXT = "Hello from unimodel, Claude Code."
CLAUDE_FILE, CLAUDE_FILE_TEXT = "made-by-claude.txt", "claude-was-here"
CLAUDE_FINAL = "Claude task done: the file is written."


@dataclass
class Seen:
    method: str
    path: str
    query: str
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class RecordsRequests:
    """Outermost ASGI wrapper: every HTTP request the server got, with the body it read and the status it
    answered."""

    def __init__(self, app: ASGIApp, seen: list[Seen]) -> None:
        self.app, self.seen = app, seen

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status, body = 0, bytearray()

        async def receiving() -> Message:
            message = await receive()
            body.extend(message.get("body", b""))
            return message

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receiving, sending)
        finally:
            self.seen.append(Seen(scope["method"], scope["path"], scope["query_string"].decode(), status,
                                  bytes(body)))


def tool_results(body: dict[str, Any]) -> list[str]:
    """The tool results of a chat request, as text (what the CLI's tool printed, in its own words)."""
    out = []
    for m in body.get("messages", []):
        if m.get("role") == "tool":
            content = m.get("content")
            out.append(content if isinstance(content, str) else json.dumps(content))
    return out


@dataclass
class Agents:
    server: LiveServer
    upstream: ScriptedUpstream
    seen: list[Seen]
    claude_dir: Path

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    def upstream_bodies(self, model: str) -> list[dict[str, Any]]:
        return [b for b in list(self.upstream.requests) if b.get("model") == model]


@pytest.fixture(scope="module")
def agents(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agents]:
    claude_dir = tmp_path_factory.mktemp("claude-work")

    def codex_turn(body: dict[str, Any]) -> Script:
        if tool_results(body):
            return Script(mode="parsed", content=CODEX_FINAL)
        command = {"cmd": f"printf %s {CODEX_FILE_TEXT} > {CODEX_FILE}"}
        return Script(mode="parsed", reasoning=CODEX_REASONING, tool_calls=[("exec_command", json.dumps(command))])

    def claude_turn(body: dict[str, Any]) -> Script:
        if tool_results(body):
            return Script(mode="parsed", content=CLAUDE_FINAL)
        write = {"file_path": str(claude_dir / CLAUDE_FILE), "content": CLAUDE_FILE_TEXT}
        return Script(mode="parsed", tool_calls=[("Write", json.dumps(write))])

    scripts = {CODEX_MODEL: Script(respond=codex_turn), CLAUDE_TOOL_MODEL: Script(respond=claude_turn),
               CLAUDE_TEXT_MODEL: Script(mode="parsed", content=CLAUDE_TEXT)}
    with ScriptedUpstream(scripts) as upstream:
        settings = Settings(engine="upstream", upstream=upstream.base_url, upstream_connect_timeout_s=2.0,
                            api_keys=[API_KEY], metrics=False)
        server, seen = LiveServer(settings, build_engine(settings)), list[Seen]()
        server.app.add_middleware(RecordsRequests, seen=seen)
        with server:
            yield Agents(server, upstream, seen, claude_dir)


def codex_task(agents: Agents, tmp_path: Path, **options: Any) -> tuple[CliResult, Path, list[Seen]]:
    """``codex exec`` on the scripted task: its run, its working directory and the requests unimodel got."""
    codex = require_cli(CODEX)
    work = tmp_path / "work"
    work.mkdir()
    before = len(agents.seen)
    run = codex_exec(codex, base_url=f"{agents.root}/v1", api_key=API_KEY, model=CODEX_MODEL,
                     prompt=f"Write {CODEX_FILE_TEXT} into {CODEX_FILE}, then say you are done.",
                     workdir=work, home=tmp_path / "home", **options)
    return run, work, agents.seen[before:]


def assert_codex_did_the_task(run: CliResult, work: Path) -> None:
    assert run.returncode == 0, run.describe()
    assert not run.protocol_errors(CODEX), run.describe()
    assert CODEX_FINAL in run.stdout, run.describe()
    assert (work / CODEX_FILE).read_text() == CODEX_FILE_TEXT, run.describe()


def test_codex_exec_runs_a_shell_tool_through_responses(agents: Agents, tmp_path: Path) -> None:
    run, work, seen = codex_task(agents, tmp_path)
    assert_codex_did_the_task(run, work)
    # it went through /v1/responses, two turns (the tool call, then the answer), and nothing else reached us
    assert [(s.method, s.path, s.status) for s in seen] == [("POST", "/v1/responses", 200)] * 2, run.describe()
    assert all(s.json()["stream"] is True and s.json()["store"] is False for s in seen)
    first, second = agents.upstream_bodies(CODEX_MODEL)[-2:]
    assert first["messages"][0]["role"] in ("system", "developer")  # Codex's instructions, a developer message
    assert [t["function"]["name"] for t in second.get("tools", [])].count("exec_command") == 1
    assert "exited with code 0" in tool_results(second)[-1]
    # the first turn's reasoning reached the model again on the second, though nothing was stored
    (assistant,) = [m for m in second["messages"] if m["role"] == "assistant"]
    assert CODEX_REASONING in (assistant.get("reasoning") or assistant.get("reasoning_content") or "")


def test_codex_gets_its_reasoning_sealed_and_sends_it_back(agents: Agents, tmp_path: Path) -> None:
    """``store: false`` with ``include: ["reasoning.encrypted_content"]``: the reasoning item Codex resends on the
    second turn carries our sealed token (not only the summary text a client could have rewritten)."""
    run, work, seen = codex_task(agents, tmp_path)
    assert_codex_did_the_task(run, work)
    asked = seen[0].json()
    assert asked["include"] == ["reasoning.encrypted_content"] and asked["store"] is False
    (reasoning,) = [item for item in seen[1].json()["input"] if item.get("type") == "reasoning"]
    assert isinstance(reasoning.get("encrypted_content"), str), reasoning
    assert CODEX_REASONING not in reasoning["encrypted_content"]


def test_codex_exec_with_its_default_tools(agents: Agents, tmp_path: Path) -> None:
    """Codex's defaults: a ``namespace`` tool (``multi_agent_v1``, its functions flattened for the model) and the
    hosted ``web_search`` (accepted, not shown to the model)."""
    run, work, seen = codex_task(agents, tmp_path, function_tools_only=False)
    assert_codex_did_the_task(run, work)
    sent = {tool["type"] for tool in seen[0].json()["tools"]}
    assert {"namespace", "web_search"} <= sent, sent  # what this test is about: Codex still sends both
    names = [t["function"]["name"] for t in agents.upstream_bodies(CODEX_MODEL)[-1].get("tools", [])]
    assert any(name.startswith("multi_agent_v1__") for name in names), names
    assert "web_search" not in names


def test_claude_code_answers_one_turn_through_messages(agents: Agents, tmp_path: Path) -> None:
    """With Claude Code's own defaults: its max_tokens of 32000, adaptive thinking at effort high."""
    claude = require_cli(CLAUDE)
    before = len(agents.seen)
    run = claude_print(claude, server_root=agents.root, token=API_KEY, model=CLAUDE_TEXT_MODEL,
                       prompt="Say hello.", workdir=tmp_path, home=tmp_path / "home", max_output_tokens=None)
    assert run.returncode == 0, run.describe()
    assert not run.protocol_errors(CLAUDE), run.describe()
    assert run.stdout.strip() == CLAUDE_TEXT, run.describe()
    assert [(s.method, s.path, s.query, s.status) for s in agents.seen[before:]] == [
        ("POST", "/v1/messages", "beta=true", 200)]
    asked = agents.seen[before].json()
    assert asked["max_tokens"] == 32000 and asked["stream"] is True, {k: asked[k] for k in asked if k != "tools"}
    (body,) = agents.upstream_bodies(CLAUDE_TEXT_MODEL)[-1:]
    assert any(m["role"] == "user" and "Say hello." in json.dumps(m["content"]) for m in body["messages"])


def test_claude_code_writes_a_file_with_its_tool_through_messages(agents: Agents, tmp_path: Path) -> None:
    claude = require_cli(CLAUDE)
    before = len(agents.seen)
    run = claude_print(claude, server_root=agents.root, token=API_KEY, model=CLAUDE_TOOL_MODEL,
                       prompt=f"Write {CLAUDE_FILE_TEXT} into {CLAUDE_FILE}.", workdir=agents.claude_dir,
                       home=tmp_path / "home", extra_args=["--permission-mode", "acceptEdits"])
    assert run.returncode == 0, run.describe()
    assert not run.protocol_errors(CLAUDE), run.describe()
    assert CLAUDE_FINAL in run.stdout, run.describe()
    assert (agents.claude_dir / CLAUDE_FILE).read_text() == CLAUDE_FILE_TEXT, run.describe()
    assert [(s.path, s.status) for s in agents.seen[before:]] == [("/v1/messages", 200)] * 2
    second = agents.upstream_bodies(CLAUDE_TOOL_MODEL)[-1]
    assert "File created successfully" in tool_results(second)[-1]


def test_a_cli_that_hangs_is_killed_with_its_children_and_its_output_reported(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    script = f"echo started; sleep 600 & echo $! > {pid_file}; wait"
    with pytest.raises(CliHung, match=r"(?s)did not finish within 1s.*started"):
        run_cli(["bash", "-c", script], env=base_env(tmp_path), cwd=tmp_path, timeout_s=1)
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child}").exists() and _state(child) != "Z" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{child}").exists() or _state(child) == "Z"  # the group's sleep is gone too


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return "Z"
