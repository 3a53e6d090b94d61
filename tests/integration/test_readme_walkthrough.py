"""The README, followed top to bottom: every fenced command and every Python example runs, and works.

Each ``bash``/``console`` block's commands run in a temporary folder through ``bash -o pipefail`` (``curl``
with ``--fail-with-body``, so an HTTP error fails it); each ``python`` block runs as a script. What is adapted,
and nothing else:

* **servers**: each ``unimodel serve`` command of the README (and the ``# unimodel serve …`` comment of a Python
  example) is started once, in the background, on a free port, and must become ready; an example talks to the
  server that serves the model it names (the first such ``serve`` command of the README), or, naming none, to
  the last server started above it; ``127.0.0.1:8000`` and ``localhost:8000`` become that server's address;
* **remote hosts**: the GPU hosts the README points upstreams at (``gpu-box``, ``gpu-a`` …, ``hosted.example``)
  are one local stand-in, ``unimodel serve --model tiny-scripted`` serving the name the README's upstream
  example asks for (:data:`STAND_IN_NAME`); the pool's replicas ``10.0.0.N:8000`` are simulated vLLM
  replicas (``tests/support/sim_vllm.py``);
* **placeholders**: ``URL`` and ``NAME`` (the bench example's first server and model), ``KEY`` (any: those
  servers have no API keys) and ``$ADMIN_KEY`` (the servers get it as ``--admin-key``, by
  ``UNIMODEL_ADMIN_KEY``); ``[--optional]`` flags: the command runs without them and with them all;
* **sizes**: ``unimodel bench`` and ``unimodel eval`` runs take a few requests (:data:`SCALED`); the one that
  asks for images (eval's vision suite) asks ``tiny-random-vision``, since the stand-in for Small 4 is
  text-only;
* **files**: ``--config unimodel.yaml`` is the file made of the ``keys:`` lines ``unimodel keys create``
  printed, as the README says to paste them.

Not run: a block after ``<!-- walkthrough: skip (reason) -->`` (the reasons are :data:`DECLARED_SKIPS`, and
must stay exactly those), and the commands of :data:`NOT_RUN` (installs, and the test command itself).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pytest

from tests.support.live_server import free_port
from tests.support.readme import README, SHELL_LANGS, Block, blocks, shell_lines, split_commands, words
from tests.support.serve_process import wait_ready

pytestmark = pytest.mark.slow

#: the README's `<!-- walkthrough: skip (…) -->` reasons: a new one must be added here, on purpose
DECLARED_SKIPS = {
    "needs vLLM's CPU build in a venv of its own, built from the network; CI's vllm lane runs these tests",
    "needs Codex CLI (npm); tests/integration/test_agent_clis.py drives it against unimodel",
    "needs Claude Code (npm); tests/integration/test_agent_clis.py drives it against unimodel",
    "needs a GPU and the real 119B model",
    "needs a cluster's DNS and the Kubernetes API",
    "needs GPUs and vLLM",
    "needs vLLM's CPU build (tests/vllm runs unimodel serve --engine vllm --vllm-gpu cpu)",
    "needs a Kubernetes cluster (tests/deploy renders and validates the chart)",
}
#: commands never run, in any block
NOT_RUN = {
    "pip install": "installs packages: the walkthrough runs in the venv they made",
    "python -m pytest": "the README's test command: it is what runs this walkthrough",
}
#: bench and eval, a few requests each (the README's sizes take minutes to hours on a CPU)
SCALED = {"--requests": "3", "--warmup": "1", "--concurrency": "2", "--duration": "2", "--max-concurrency": "2",
          "--samples": "1"}
REMOTE_UPSTREAM = re.compile(r"https?://(gpu-box|gpu-a|gpu-b|gpu-new|hosted\.example)(:\d+)?/v1")
REPLICA = re.compile(r"10\.0\.0\.([5-7]):8000")
ADMIN_KEY = "sk-walkthrough-admin-0123456789"
STAND_IN_NAME = "mistralai/Mistral-Small-4-119B-2603"
SMALL4 = "mistral-small-4"
TIMEOUT_S = 240


def _model_of(argv: list[str]) -> Optional[str]:
    for flag in ("--served-model-name", "--model"):
        if flag in argv and argv.index(flag) + 1 < len(argv):
            return argv[argv.index(flag) + 1]
    return None


@dataclass
class Server:
    command: str  #: the README's command (remote hosts adapted when it starts)
    line: int
    port: int = field(default_factory=free_port)
    proc: Optional["subprocess.Popen[bytes]"] = None
    log: Optional[Path] = None

    @property
    def model(self) -> Optional[str]:
        return _model_of(words(self.command))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _skip_reason(block: Block) -> Optional[str]:
    m = re.fullmatch(r"skip \((.*)\)", block.marker or "", re.S)
    return " ".join(m.group(1).split()) if m else None


def _runnable(block: Block) -> bool:
    return block.lang in (*SHELL_LANGS, "python") and _skip_reason(block) is None


def _commands(block: Block) -> list[tuple[int, str]]:
    return [(sl.line, c) for sl in shell_lines(block) for c in split_commands(sl.code)]


def _not_run(command: str) -> Optional[str]:
    return next((why for head, why in NOT_RUN.items() if command.startswith(head)), None)


def _serve_commands(block: Block) -> list[tuple[int, str]]:
    if block.lang in SHELL_LANGS:
        return [(n, c) for n, c in _commands(block) if c.startswith("unimodel serve")]
    found = re.findall(r"#\s*(unimodel serve [^:#\n]*)", block.body)  # `# unimodel serve --model X: …`
    return [(block.line, c.strip()) for c in found]


class Walkthrough:
    """The servers the README starts, and what its commands need around them."""

    def __init__(self, root: Path, cache_dir: Path) -> None:
        self.root = root
        self.cwd = root / "cwd"
        self.cwd.mkdir()
        self.cache_dir = cache_dir
        self.readme = blocks(README.read_text(encoding="utf-8"))
        self.servers: list[Server] = []
        self.procs: list["subprocess.Popen[bytes]"] = []
        self.replicas: dict[str, str] = {}
        self.stand_in = Server(f"unimodel serve --model tiny-scripted --served-model-name {STAND_IN_NAME}", 0)
        for block in filter(_runnable, self.readme):
            for line, command in _serve_commands(block):
                if all(s.command != command for s in self.servers):
                    self.servers.append(Server(command, line))

    # ---- processes ---------------------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env.update(UNIMODEL_CACHE_DIR=str(self.cache_dir), UNIMODEL_ADMIN_KEY=ADMIN_KEY, ADMIN_KEY=ADMIN_KEY,
                   COLUMNS="80", PYTHONUNBUFFERED="1")
        return env

    def start(self) -> None:
        for n in (5, 6, 7):  # the pool's replicas
            out = self.root / f"replica-{n}.log"
            with out.open("wb") as sink:
                proc = subprocess.Popen([sys.executable, "tests/support/sim_vllm.py", "--port", "0",
                                         "--served-model-name", SMALL4], cwd=README.parent, stdout=sink,
                                        stderr=subprocess.STDOUT)
            self.procs.append(proc)
            deadline = time.monotonic() + 30
            while "sim-vllm ready " not in out.read_text() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            ready = out.read_text()
            assert "sim-vllm ready " in ready, ready
            self.replicas[str(n)] = ready.split("sim-vllm ready ")[1].split()[0].split("//")[1].split("/")[0]
        for server in (self.stand_in, *self.servers):
            self._launch(server)
        for server in (self.stand_in, *self.servers):
            assert server.proc is not None
            try:
                wait_ready(f"{server.url}/ready", server.proc, timeout_s=TIMEOUT_S, what=server.command)
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{self.tail(server)}") from None

    def _launch(self, server: Server) -> None:
        server.log = self.root / f"server-{server.port}.log"
        with server.log.open("wb") as out:
            command = self.adapt(server.command)
            server.proc = subprocess.Popen(["bash", "-c", f"exec {command} --port {server.port}"],
                                           cwd=self.cwd, env=self.env(), stdout=out, stderr=subprocess.STDOUT,
                                           start_new_session=True)
        self.procs.append(server.proc)

    @staticmethod
    def tail(server: Server) -> str:
        return server.log.read_text(errors="replace")[-3000:] if server.log and server.log.exists() else ""

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    # ---- adapting a command ------------------------------------------------------------------------------

    def adapt(self, text: str) -> str:
        """Remote hosts to the local stand-ins (servers are not known yet while the README's are listed)."""
        text = REMOTE_UPSTREAM.sub(lambda m: f"{self.stand_in.url}/v1", text)
        return REPLICA.sub(lambda m: self.replicas.get(m.group(1), m.group(0)), text)

    def server_for(self, text: str, line: int) -> Optional[Server]:
        """The server an example talks to: the first that serves the model it names, else the last above it."""
        named = re.findall(r'model\s*=\s*"([^"]+)"|"model":\s*"([^"]+)"|--model\s+(\S+)', text)
        models = [next(g for g in groups if g) for groups in named]
        for model in models:
            for server in self.servers:
                if server.model == model:
                    return server
        above = [s for s in self.servers if s.line <= line]
        return above[-1] if above else None

    def localize(self, text: str, server: Optional[Server]) -> str:
        text = self.adapt(text)
        if server is not None:
            text = re.sub(r"(127\.0\.0\.1|localhost):8000", f"127.0.0.1:{server.port}", text)
        return text

    def shell(self, command: str, line: int) -> str:
        """One README command, adapted, as bash runs it; returns its output."""
        command = command.replace("--model NAME", f"--model {SMALL4}")  # the bench example's first line's
        server = self.server_for(command, line)
        wants_images = command.startswith("unimodel eval") and "vision" in command
        if wants_images and SMALL4 in command:  # the stand-in for Small 4 is text-only
            server = next(s for s in self.servers if s.model == "tiny-random-vision")
            command = command.replace(f"--model {SMALL4}", "--model tiny-random-vision")
        command = self.localize(command, server)
        if command.startswith(("unimodel bench", "unimodel eval")):
            command = self._scaled(command, server)
        command = re.sub(r"^curl ", "curl --fail-with-body --max-time 60 ", command)
        command = command.replace("Bearer KEY", "Bearer unused").replace("x-api-key: KEY", "x-api-key: unused")
        done = subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=self.cwd, env=self.env(),
                              capture_output=True, text=True, timeout=TIMEOUT_S)
        output = done.stdout + done.stderr
        assert done.returncode == 0, f"README.md:{line}: `{command}` exited {done.returncode}:\n{output[-3000:]}"
        if command.startswith("unimodel keys create"):  # "the lines to paste under `keys:`"
            (self.cwd / "unimodel.yaml").write_text(done.stdout[done.stdout.index("keys:"):])
        return output

    def _scaled(self, command: str, server: Optional[Server]) -> str:
        argv = words(command)
        for i, w in enumerate(argv[:-1]):
            if w in SCALED:
                argv[i + 1] = SCALED[w]
        if server is not None:
            argv = [f"{server.url}/v1" if w == "URL" else w for w in argv]
        if argv[1] == "bench" and "--requests" not in argv and "--duration" not in argv:
            argv += ["--requests", SCALED["--requests"]]
        if argv[1] == "eval":
            argv += ["--max-tokens", "64"]
        return " ".join(_quote(w) for w in argv)

    def python(self, block: Block, path: Path) -> str:
        server = self.server_for(block.body, block.line)
        assert server is not None, f"{block.id}: no server to run it against"
        preamble = ("from openai import OpenAI\n"  # what the README's fragments take from the examples before
                    f"client = OpenAI(base_url='{server.url}/v1', api_key='unused')\n"
                    "msgs = [{'role': 'user', 'content': 'Hello'}]\n")
        path.write_text(preamble + self.localize(block.body, server) + "\n")
        done = subprocess.run([sys.executable, str(path)], cwd=self.cwd, env=self.env(), capture_output=True,
                              text=True, timeout=TIMEOUT_S)
        assert done.returncode == 0, f"{block.id} against `{server.command}`:\n{done.stderr[-3000:]}"
        return done.stdout


def _forms(command: str) -> list[str]:
    """`unimodel plan … [--compare-four] [--json]`: optional flags in brackets; run without them and with all."""
    if not re.search(r" \[--[^\]]*\]", command):
        return [command]
    return [re.sub(r" \[--[^\]]*\]", "", command), re.sub(r" \[(--[^\]]*)\]", r" \1", command)]


def _quote(word: str) -> str:
    return word if re.fullmatch(r"[\w@%+=:,./-]+", word) else "'" + word.replace("'", "'\\''") + "'"


_README_BLOCKS = blocks(README.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory: pytest.TempPathFactory, tiny_cache_dir: Path) -> Iterator[Walkthrough]:
    from unimodel.models import ensure_tiny_random

    ensure_tiny_random("tiny-scripted", tiny_cache_dir)
    walk = Walkthrough(tmp_path_factory.mktemp("readme"), tiny_cache_dir)
    try:
        walk.start()
        yield walk
    finally:
        walk.stop()


def test_the_skipped_blocks_are_the_declared_ones() -> None:
    reasons = [_skip_reason(b) for b in _README_BLOCKS if b.marker]
    assert None not in reasons, "a walkthrough marker that is not `skip (reason)`"
    assert set(reasons) == DECLARED_SKIPS
    runnable = [b for b in _README_BLOCKS if _runnable(b)]
    assert len(runnable) >= 25  # the parse found the README's examples


@pytest.mark.parametrize("block", [b for b in _README_BLOCKS if _runnable(b)], ids=lambda b: b.id)
def test_readme_block_runs(block: Block, walkthrough: Walkthrough, tmp_path: Path) -> None:
    if block.lang == "python":
        walkthrough.python(block, tmp_path / "example.py")
        return
    ran = 0
    for line, command in _commands(block):
        if _not_run(command):
            continue
        if command.startswith("unimodel serve"):  # started and ready before the first example
            server = next(s for s in walkthrough.servers if s.command == command)
            assert server.proc is not None and server.proc.poll() is None, walkthrough.tail(server)
        else:
            for form in _forms(command):
                walkthrough.shell(form, line)
        ran += 1
    if not ran:
        pytest.skip("only " + "; ".join(sorted({w for _, c in _commands(block) if (w := _not_run(c))})))


def test_an_image_for_the_text_only_model_names_the_way_out(walkthrough: Walkthrough) -> None:
    """The README's image example sent to `tiny-random` (text-only): a 400 that names tiny-random-vision."""
    import openai

    [block] = [b for b in _README_BLOCKS if b.lang == "python" and "image_url" in b.body]
    text_only = next(s for s in walkthrough.servers if s.model == "tiny-random")
    body = block.body.replace('model="tiny-random-vision"', 'model="tiny-random"')
    path = walkthrough.root / "text_only.py"
    path.write_text(walkthrough.localize(body, text_only).replace("print(", "_ = (") + "\n")
    done = subprocess.run([sys.executable, str(path)], cwd=walkthrough.cwd, env=walkthrough.env(),
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode != 0 and openai.BadRequestError.__name__ in done.stderr
    assert "takes no images" in done.stderr and "serve --model tiny-random-vision" in done.stderr


def test_no_example_is_left_without_a_server() -> None:
    """Every Python example names a model some README server serves, or follows one."""
    walk = Walkthrough.__new__(Walkthrough)
    walk.readme = _README_BLOCKS
    walk.servers = []
    for block in filter(_runnable, _README_BLOCKS):
        for line, command in _serve_commands(block):
            walk.servers.append(Server(command, line, port=1))
    for block in _README_BLOCKS:
        if block.lang == "python" and _runnable(block):
            assert walk.server_for(block.body, block.line) is not None, block.id
