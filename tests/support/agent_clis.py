"""Run the real agent CLIs, OpenAI's Codex CLI and Anthropic's Claude Code, against a loopback server in tests.

Both are npm packages pinned and installed by ``.ci/agent-clis`` into ``.agents-cli/`` (gitignored); each ships a
native binary (Claude Code's replaces its ``bin/claude.exe``; Codex's ``bin/codex.js`` is a small Node launcher
that spawns the binary of ``@openai/codex-linux-x64``, so Codex needs Node 16+ at run time). A test asks for one with :func:`require_cli`: without the
binary it is skipped with the command that installs it, unless ``UNIMODEL_REQUIRE_AGENT_CLIS`` is set (``.ci/run``
sets it), where it fails. ``UNIMODEL_CODEX_BIN`` / ``UNIMODEL_CLAUDE_BIN`` point at other binaries.

Every run gets a fresh temporary ``HOME`` (no user config, no login, no session files left behind), an environment
built from scratch (no ``OPENAI_API_KEY``/``ANTHROPIC_*`` or proxy of the developer's leaks in), stdin closed, its
own process group and a hard timeout: a CLI that hangs is killed with its group and the test fails with what it
had printed (:class:`CliHung`).

What the CLIs send (learned against a capture server on loopback and under ``strace -e connect,sendto``;
Codex CLI 0.171.0, Claude Code 2.1.332):

Codex CLI (``codex exec``) reads ``$CODEX_HOME/config.toml``; a provider with ``wire_api = "responses"`` makes it
send one ``POST {base_url}/responses`` per model turn (``Authorization: Bearer $<env_key>``, ``accept:
text/event-stream``, ``originator: codex_exec``, ``session-id``/``x-codex-*`` headers, an uncompressed JSON body of
~40 kB) and nothing else to the provider: no ``/models``, no token counting. The body: ``model``, ``stream: true``,
``store: false``, ``include: ["reasoning.encrypted_content"]``, ``reasoning: {"summary": "auto"}`` (no effort unless
``model_reasoning_effort`` is set), ``tool_choice: "auto"``, ``parallel_tool_calls: true``, ``prompt_cache_key``
(the session id), ``client_metadata`` (a non-standard object of ids), no ``instructions``: its system prompt is
the first ``input`` item, a message with role ``developer`` (two more developer messages follow: sandbox and
permissions, then user messages with the environment context and the prompt). ``tools`` holds function tools
(``exec_command``, ``write_stdin``, ``request_user_input``, ``view_image``, goal tools) with ``strict: false``, and
two other kinds: ``{"type": "namespace", "name": "multi_agent_v1", "tools": [functions…]}`` and ``{"type":
"web_search", "external_web_access": false}``. It reads the answer from the stream's ``response.output_item.done``
and ``response.completed`` events (``response.output_text.delta`` for live text); a function call comes back next
turn as the ``function_call`` item (its ``id``, ``call_id``, ``name``, ``arguments``) plus a
``function_call_output`` item (``call_id``, ``output`` text), the whole history resent (``store`` is false).
Beyond the provider it would reach out to ``ab.chatgpt.com`` (analytics: ``[analytics] enabled = false``) and to
``chatgpt.com`` and ``api.github.com`` (plugins: ``[features] plugins = false``); with both off a run makes no
connection but the provider's (the update check is the TUI's, not ``exec``'s). ``exec`` reads stdin when it is not
a terminal (closed here), refuses to run outside a git repository without ``--skip-git-repo-check``, never asks
for approval, and runs its shell tool in the sandbox given by ``--sandbox`` (``workspace-write`` uses a bundled
bubblewrap, which needs user namespaces or root: the tests use ``danger-full-access`` in a temporary directory
for a command they script themselves). It warns that it has no metadata for a model it does not know; that is
not an error. ``--strict-config`` makes an unknown key in our config.toml an error, so a renamed setting shows.

Claude Code (``claude -p PROMPT --model NAME``) with ``ANTHROPIC_BASE_URL`` (the server root, no ``/v1``) sends one
``POST /v1/messages?beta=true`` per model turn and, with ``CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1``, nothing
else anywhere (no ``count_tokens``, no ``/v1/models``, no telemetry, no update check; ``DISABLE_AUTOUPDATER=1``
as well). Headers: ``Authorization: Bearer $ANTHROPIC_AUTH_TOKEN`` (``ANTHROPIC_API_KEY`` would send
``x-api-key``), ``anthropic-version: 2023-06-01``, ``anthropic-beta`` with a list of betas, ``x-app: cli``. The
body (~50 kB, about 12k tokens: the issue measured 17.6k with a real tokenizer's prompt): ``model``, ``stream:
true``, ``max_tokens`` 32000 (``CLAUDE_CODE_MAX_OUTPUT_TOKENS`` sets it), ``system`` as text blocks (the first a
``x-anthropic-billing-header: …`` line; ``cache_control: {"type": "ephemeral"}`` on some), ``messages`` whose user
turn is two text blocks (a ``<system-reminder>`` and the prompt) followed by a message with role ``system`` (the
environment, deferred tools and skills: a role the classic Messages API does not have), ``tools`` (12: ``Agent``,
``Bash``, ``Edit``, ``Read``, ``Write``, …, JSON Schema 2020-12 ``input_schema`` with ``$schema``, one
``DeferredToolPlaceholder`` with ``defer_loading: true``), ``thinking: {"type": "adaptive", "display":
"omitted"}``, ``output_config: {"effort": "high"}``, ``context_management: {"edits": [{"type":
"clear_thinking_20251015", "keep": "all"}]}``, ``metadata: {"user_id": "<a JSON string of ids>"}``. A tool use
comes back as an assistant ``tool_use`` block and a user ``tool_result`` block whose ``content`` is a string (with
``is_error: true`` when refused, and ``cache_control``). In ``-p`` mode a tool that needs permission (Write, Bash)
is refused unless allowed: ``--permission-mode acceptEdits`` allows file edits. For a model it does not know it
prints a warning that it assumes a context window of 1M tokens and a ``[claude-code:unrecognized_model]`` line
to stderr; neither is an error. An API error is printed as
``API Error: …`` with exit status 1; ``CLAUDE_CODE_MAX_RETRIES=0`` makes it fail at once instead of retrying.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

REPO = Path(__file__).resolve().parents[2]
CLI_DIR = REPO / ".agents-cli"
REQUIRE_ENV = "UNIMODEL_REQUIRE_AGENT_CLIS"
CODEX = "codex"
CLAUDE = "claude"
#: what each CLI prints when the server's answer broke it (an HTTP error, a stream it could not read, retries)
PROTOCOL_ERROR_MARKERS = {
    CODEX: ("ERROR", "error=", "unexpected status", "stream disconnected", "Reconnecting", "failed to parse",
            "error decoding"),
    CLAUDE: ("API Error", "Error:", "error_during_execution"),
}
#: the provider's id in Codex's config.toml (the README's example uses the same)
CODEX_PROVIDER = "unimodel"
CODEX_KEY_ENV = "UNIMODEL_API_KEY"
_OUTPUT_TAIL = 6000  # characters of each stream quoted in a failure


class CliHung(AssertionError):
    """The CLI did not finish within its timeout (killed with its process group)."""


@dataclass(frozen=True)
class CliResult:
    argv: Sequence[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def describe(self) -> str:
        """The run for an assertion message: the command, the exit status and the tail of both streams."""
        return (f"$ {' '.join(self.argv[:4])} … (exit {self.returncode})\n--- stdout ---\n"
                f"{self.stdout[-_OUTPUT_TAIL:]}\n--- stderr ---\n{self.stderr[-_OUTPUT_TAIL:]}")

    def protocol_errors(self, cli: str) -> list[str]:
        """The lines of its output that carry one of ``cli``'s error markers."""
        return [line for line in self.output.splitlines()
                if any(marker in line for marker in PROTOCOL_ERROR_MARKERS[cli])]


def cli_path(name: str) -> Optional[Path]:
    """The binary of ``name`` (``codex``/``claude``): ``UNIMODEL_<NAME>_BIN``, else the pinned install."""
    override = os.environ.get(f"UNIMODEL_{name.upper()}_BIN")
    path = Path(override) if override else CLI_DIR / "node_modules" / ".bin" / name
    return path if path.is_file() and os.access(path, os.X_OK) else None


def require_cli(name: str) -> Path:
    path = cli_path(name)
    if path is not None:
        return path
    reason = f"{name} CLI not installed (run: bash .ci/agent-clis)"
    if os.environ.get(REQUIRE_ENV):
        pytest.fail(f"{reason}; {REQUIRE_ENV} is set, so the agent CLI tests must run")
    pytest.skip(reason)


def base_env(home: Path, extra: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """An environment from scratch: the PATH, a temporary HOME, no credentials or proxies of the caller's."""
    env = {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"), "HOME": str(home), "LANG": "C.UTF-8",
           "TERM": "dumb", "NO_COLOR": "1", "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    if os.environ.get("TMPDIR"):
        env["TMPDIR"] = os.environ["TMPDIR"]
    env.update(extra or {})
    return env


def run_cli(argv: Sequence[str], *, env: Mapping[str, str], cwd: Path, timeout_s: float = 120) -> CliResult:
    """Run ``argv`` to the end (stdin closed, its own process group), or kill the group after ``timeout_s`` and
    raise :class:`CliHung` with its output."""
    proc = subprocess.Popen(list(argv), cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        out, err = proc.communicate(timeout=30)
        hung = CliResult(list(argv), proc.returncode, out.decode(errors="replace"),
                         err.decode(errors="replace"))
        raise CliHung(f"{Path(argv[0]).name} did not finish within {timeout_s:g}s and was killed\n"
                      f"{hung.describe()}") from None
    finally:
        _kill_group(proc.pid)  # whatever it left running in its group (a shell tool's children)
    return CliResult(list(argv), proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# ---- Codex CLI ----------------------------------------------------------------------------------------------


def codex_config(base_url: str, model: str, *, retries: Optional[int] = None,
                 function_tools_only: bool = True) -> str:
    """``config.toml`` for Codex CLI with unimodel as a Responses provider (``base_url`` ends in ``/v1``); the
    README's section shows the same file. ``retries`` (tests: 0) bounds its request and stream retries;
    ``function_tools_only`` turns off the two tools Codex sends that are not plain functions (the hosted
    ``web_search`` and the ``multi_agent_v1`` namespace; our Responses shape accepts both: the namespace's
    functions reach the model flattened, ``web_search`` is left out)."""
    lines = [
        f'model = "{model}"',
        f'model_provider = "{CODEX_PROVIDER}"',
        *(['web_search = "disabled"'] if function_tools_only else []),
        "",
        "[analytics]",
        "enabled = false",
        "",
        "[features]",
        "plugins = false",
        *(["multi_agent = false"] if function_tools_only else []),
        "",
        f"[model_providers.{CODEX_PROVIDER}]",
        'name = "unimodel"',
        f'base_url = "{base_url}"',
        'wire_api = "responses"',
        f'env_key = "{CODEX_KEY_ENV}"',
    ]
    if retries is not None:
        lines += [f"request_max_retries = {retries}", f"stream_max_retries = {retries}"]
    return "\n".join(lines) + "\n"


def codex_exec(binary: Path, *, base_url: str, api_key: str, model: str, prompt: str, workdir: Path, home: Path,
               sandbox: str = "danger-full-access", function_tools_only: bool = True,
               extra_args: Iterable[str] = (), timeout_s: float = 120) -> CliResult:
    """``codex exec PROMPT`` in ``workdir`` with ``home`` as HOME and ``home/.codex`` as CODEX_HOME."""
    codex_home = home / ".codex"
    codex_home.mkdir(parents=True, exist_ok=True)
    config = codex_config(base_url, model, retries=0, function_tools_only=function_tools_only)
    (codex_home / "config.toml").write_text(config)
    env = base_env(home, {"CODEX_HOME": str(codex_home), CODEX_KEY_ENV: api_key})
    argv = [str(binary), "exec", "--skip-git-repo-check", "--strict-config", "--ephemeral", "--color", "never",
            "--sandbox", sandbox, "--cd", str(workdir), *extra_args, prompt]
    return run_cli(argv, env=env, cwd=workdir, timeout_s=timeout_s)


# ---- Claude Code --------------------------------------------------------------------------------------------


def claude_env(home: Path, server_root: str, token: str, *,
               max_output_tokens: Optional[int] = 4096) -> dict[str, str]:
    """The environment of ``claude -p`` against unimodel at ``server_root`` (no ``/v1``), offline but for it;
    ``max_output_tokens`` None leaves Claude Code's own ``max_tokens`` (32000)."""
    env = {
        "ANTHROPIC_BASE_URL": server_root,
        "ANTHROPIC_AUTH_TOKEN": token,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
        "CLAUDE_CODE_MAX_RETRIES": "0",
    }
    if max_output_tokens is not None:
        env["CLAUDE_CODE_MAX_OUTPUT_TOKENS"] = str(max_output_tokens)
    return base_env(home, env)


def claude_print(binary: Path, *, server_root: str, token: str, model: str, prompt: str, workdir: Path,
                 home: Path, max_output_tokens: Optional[int] = 4096, extra_args: Iterable[str] = (),
                 timeout_s: float = 120) -> CliResult:
    """``claude -p PROMPT --model MODEL`` in ``workdir`` with ``home`` as HOME."""
    home.mkdir(parents=True, exist_ok=True)
    argv = [str(binary), "-p", prompt, "--model", model, *extra_args]
    env = claude_env(home, server_root, token, max_output_tokens=max_output_tokens)
    return run_cli(argv, env=env, cwd=workdir, timeout_s=timeout_s)
