"""The upstream pool (issue 23) against round robin, on simulated vLLM replicas, side by side in one run.

Starts N simulated vLLM replicas (tests/support/sim_vllm.py: a scheduler, a finite KV cache with prefix caching,
time to first token growing with the uncached prompt tokens, vLLM's /metrics) as processes, then
``unimodel serve --engine upstream --upstream URL1 … --pool-policy round-robin`` and the same with ``balanced``,
fresh replicas and a fresh gateway for every (policy, workload) so every cache starts cold, and runs two
workloads through each in a closed loop:

- **multi-turn**: M conversations, each a long system prompt shared by all plus a document of its own, several
  turns each; a turn resends the whole history with the previous answers; the conversations take turns (a
  finished turn puts its conversation at the back of the line), C requests in flight;
- **no-reuse**: the very same requests, each with a unique nonce in front, so no prompt shares a block with
  another (the same sizes, nothing to reuse).

Per (workload, policy): the prefix-cache hit rate the replicas report (deltas of ``vllm:prefix_cache_hits`` over
``vllm:prefix_cache_queries``), TTFT p50/p95 and latency p50 at the client, requests/s, and goodput (requests/s
whose TTFT met the SLO); then balanced over round robin, next to the targets (printed, never asserted).

Then the pool's own cost: short requests, one at a time, to one replica straight, through a plain upstream
(``--upstream URL``) and through a pool over that one replica (its URL twice, spelled two ways, so the pool's
choice runs for every request), and, in process, what computing a request's prefix blocks and choosing among 4
replicas takes (skipped if ``unimodel.engines.pool`` has no such parts).

``--real-vllm``: the multi-turn workload, small, against two real vLLM CPU replicas serving tiny-scripted (from
``.venv-vllm``, as tests/support/vllm_server.py starts them), read through their real /metrics. vLLM's CPU build
turns prefix caching off for MLA models (Small 4's shape, so tiny-scripted's): there the hit rates read 0 and
the run shows the pool reading real metrics and routing, not cache gains.

    python benchmarks/pool.py [--replicas 4] [--conversations 32] [--turns 5] [--concurrency 32]
                              [--policies round-robin,balanced[,client-rr]] [--workloads multi-turn,no-reuse]
                              [--slo-ttft-s 2] [--affinity]
                              [--skip-overhead] [--overhead-requests 300] [--real-vllm] [--smoke]

``client-rr`` is round robin done by this client over the replicas, without the gateway (a baseline without
unimodel in the path).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import aiohttp
import httpx
import orjson
from _processes import ENV, ROOT, Processes, free_port, pct, processes, wait_http
from prometheus_client.parser import text_string_to_metric_families

SIM = ROOT / "tests" / "support" / "sim_vllm.py"
ADMIN_KEY = "sk-bench-pool-admin"
WORDS = [w for w in "the of and to in is was for on that with as by at from it this be are or an which have "
         "had not but were his her they their one all has been more when there can out into other some time "
         "only new could these may first after two then over also most such made many before must through "
         "back years where much your way well down should because each just those people how too little state "
         "good very make world still own see men work long get here between both life being under never day "
         "same another know while last might us great old year off come since against go came right used take "
         "three".split()]
TARGETS = {"multi-turn": 1.5, "no-reuse": 1.0}
QUIET = ("--shutdown-drain-s", "0", "--log-level", "error")  # stop at once (no /ready grace period), quietly


# ---- workloads ----------------------------------------------------------------------------------------------

def text(rng: random.Random, tokens: int) -> str:
    """About ``tokens`` tokens of prose (the simulator counts 4 characters a token)."""
    out: list[str] = []
    size = 0
    while size < tokens * 4:
        out.append(rng.choice(WORDS))
        size += len(out[-1]) + 1
    return " ".join(out)


@dataclass
class Conversation:
    cid: int
    system: str
    document: str
    questions: list[str]
    answers: list[str] = field(default_factory=list)

    def messages(self, nonce: str = "") -> list[dict[str, str]]:
        """The next turn's request: the whole history, the previous answers included."""
        turn = len(self.answers)
        out = [{"role": "system", "content": nonce + self.system},
               {"role": "user", "content": f"Document:\n{self.document}\n\n{self.questions[0]}"}]
        for i in range(turn):
            out += [{"role": "assistant", "content": self.answers[i]}, {"role": "user", "content": self.questions[i + 1]}]
        return out

    def done(self) -> bool:
        return len(self.answers) >= len(self.questions)


def conversations(args: argparse.Namespace) -> list[Conversation]:
    rng = random.Random(23)
    system = text(rng, args.system_tokens)
    return [Conversation(i, system, text(rng, args.doc_tokens), [text(rng, args.user_tokens)
                                                                  for _ in range(args.turns)])
            for i in range(args.conversations)]


@dataclass
class Result:
    ok: bool
    ttft: float = 0.0
    latency: float = 0.0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    error: str = ""


async def one_turn(session: aiohttp.ClientSession, url: str, model: str, conv: Conversation, nonce: str,
                   max_tokens: int, affinity: bool) -> tuple[Result, str]:
    body: dict[str, Any] = {"model": model, "messages": conv.messages(nonce), "max_tokens": max_tokens,
                            "temperature": 0.0, "stream": True, "stream_options": {"include_usage": True}}
    if affinity:
        body["user"] = f"conversation-{conv.cid}"
    t0 = time.perf_counter()
    ttft, answer, usage = 0.0, [], {}
    try:
        async with session.post(url + "/chat/completions", data=orjson.dumps(body),
                                headers={"Content-Type": "application/json"}) as response:
            if response.status != 200:
                return Result(False, error=f"HTTP {response.status}: {(await response.read())[:200]!r}"), ""
            async for line in response.content:
                if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                    continue
                chunk = orjson.loads(line[6:])
                for choice in chunk.get("choices") or []:
                    piece = (choice.get("delta") or {}).get("content")
                    if piece:
                        ttft = ttft or time.perf_counter() - t0
                        answer.append(piece)
                usage = chunk.get("usage") or usage
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        return Result(False, error=f"{type(exc).__name__}: {exc}"), ""
    details = usage.get("prompt_tokens_details") or {}
    return Result(True, ttft, time.perf_counter() - t0, usage.get("prompt_tokens", 0),
                  details.get("cached_tokens") or 0), "".join(answer)


async def closed_loop(targets: list[str], model: str, convs: list[Conversation], args: argparse.Namespace,
                      unique: bool) -> tuple[list[Result], float]:
    """Every turn of every conversation, ``args.concurrency`` in flight; ``targets`` taken in turn (one URL:
    the gateway; several: round robin by this client)."""
    line: asyncio.Queue[Optional[Conversation]] = asyncio.Queue()
    for conv in convs:
        line.put_nowait(conv)
    left = len(convs)
    results: list[Result] = []
    target = itertools.cycle(targets)
    nonces = (f"{random.Random(i).getrandbits(64):016x} " for i in itertools.count())
    timeout = aiohttp.ClientTimeout(total=args.request_timeout_s)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        async def worker() -> None:
            nonlocal left
            while (conv := await line.get()) is not None:
                result, answer = await one_turn(session, next(target), model, conv, next(nonces) if unique else "",
                                                args.max_tokens, args.affinity)
                results.append(result)
                conv.answers.append(answer or "(no answer)")
                if not conv.done():
                    line.put_nowait(conv)
                else:
                    left -= 1
                    if left == 0:
                        for _ in range(args.concurrency):
                            line.put_nowait(None)

        t0 = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(args.concurrency))), args.run_timeout_s)
        return results, time.perf_counter() - t0


# ---- replicas -----------------------------------------------------------------------------------------------

def start_sims(started: Processes, n: int, flags: list[str]) -> list[str]:
    """``n`` simulated replicas (their output discarded), once each answers /health; their /v1 base URLs."""
    urls = []
    for _ in range(n):
        port = free_port()
        proc = subprocess.Popen([sys.executable, str(SIM), "--port", str(port), *flags], cwd=ROOT, env=ENV,
                                stdout=subprocess.DEVNULL)
        started.procs.append(proc)
        urls.append(f"http://127.0.0.1:{port}/v1")
    for url, proc in zip(urls, started.procs[-n:]):
        wait_http(url.removesuffix("/v1") + "/health", proc, timeout=60)
    return urls


def prefix_counters(urls: list[str]) -> tuple[float, float]:
    """Sums over the replicas of vLLM's prefix-cache queries and hits (tokens)."""
    queries = hits = 0.0
    for url in urls:
        body = httpx.get(url.removesuffix("/v1") + "/metrics", timeout=10).text
        for family in text_string_to_metric_families(body):
            for sample in family.samples:
                if sample.name == "vllm:prefix_cache_queries_total":
                    queries += sample.value
                elif sample.name == "vllm:prefix_cache_hits_total":
                    hits += sample.value
    return queries, hits


def sim_flags(args: argparse.Namespace) -> list[str]:
    return ["--served-model-name", args.model, "--max-num-seqs", str(args.max_num_seqs), "--num-blocks",
            str(args.num_blocks), "--block-size", "16", "--prefill-ms-per-token", str(args.prefill_ms_per_token),
            "--decode-ms", str(args.decode_ms), "--max-model-len", "65536"]


def gateway(started: Processes, urls: list[str], policy: str) -> str:
    flags = ["--engine", "upstream", "--pool-policy", policy, "--admin-key", ADMIN_KEY, *QUIET]
    for url in urls:
        flags += ["--upstream", url]
    return started.unimodel(*flags)


def pool_choices(gateway_url: str) -> str:
    """What the pool says it chose, by reason, and how many requests each replica got (GET /admin/pool)."""
    try:
        status = httpx.get(gateway_url.removesuffix("/v1") + "/admin/pool", timeout=5,
                           headers={"Authorization": f"Bearer {ADMIN_KEY}"}).json()
        choices = " ".join(f"{k}={v}" for k, v in status["choices"].items() if v)
        return f"{choices} served={'/'.join(str(r['served']) for r in status['replicas'].values())}"
    except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return f"(no /admin/pool: {type(exc).__name__})"


# ---- the comparison ------------------------------------------------------------------------------------------

@dataclass
class Row:
    workload: str
    policy: str
    results: list[Result]
    wall_s: float
    hit_rate: float
    note: str = ""

    def ok(self) -> list[Result]:
        return [r for r in self.results if r.ok]

    def goodput(self, slo: float) -> float:
        return sum(1 for r in self.ok() if r.ttft <= slo) / self.wall_s


def measure(args: argparse.Namespace, workload: str, policy: str, replica_flags: list[str]) -> Row:
    with processes() as started:
        urls = start_sims(started, args.replicas, replica_flags)
        targets = urls if policy == "client-rr" else [gateway(started, urls, policy)]
        q0, h0 = prefix_counters(urls)
        results, wall = asyncio.run(closed_loop(targets, args.model, conversations(args), args,
                                                unique=workload == "no-reuse"))
        q1, h1 = prefix_counters(urls)
        note = "" if policy == "client-rr" else pool_choices(targets[0])
    return Row(workload, policy, results, wall, (h1 - h0) / (q1 - q0) if q1 > q0 else 0.0, note)


def print_row(row: Row, slo: float) -> None:
    ok = row.ok()
    ttft, lat = [r.ttft for r in ok] or [0.0], [r.latency for r in ok] or [0.0]
    print(f"{row.workload:<12}{row.policy:<13}{len(row.results):>6}{len(row.results) - len(ok):>5}"
          f"{row.hit_rate * 100:>7.1f}{pct(ttft, 50) * 1e3:>10.0f}{pct(ttft, 95) * 1e3:>10.0f}"
          f"{pct(lat, 50) * 1e3:>10.0f}{len(ok) / row.wall_s:>8.2f}{row.goodput(slo):>10.2f}  {row.note}")
    errors = sorted({r.error for r in row.results if not r.ok})
    if errors:
        print(f"{'':<25}errors: {'; '.join(errors[:3])}")


def compare(args: argparse.Namespace, replica_flags: list[str], workloads: tuple[str, ...]) -> None:
    print(f"{args.replicas} replicas: max-num-seqs {args.max_num_seqs}, {args.num_blocks} KV blocks of 16 tokens, "
          f"prefill {args.prefill_ms_per_token} ms/token, decode step {args.decode_ms} ms; {args.conversations} "
          f"conversations × {args.turns} turns (system {args.system_tokens} tokens shared, document "
          f"{args.doc_tokens}, question {args.user_tokens}, answer {args.max_tokens}); concurrency "
          f"{args.concurrency}; SLO: TTFT ≤ {args.slo_ttft_s:g} s")
    print(f"{'workload':<12}{'policy':<13}{'reqs':>6}{'err':>5}{'hit %':>7}{'TTFT p50':>10}{'TTFT p95':>10}"
          f"{'lat p50':>10}{'req/s':>8}{'goodput':>10}  (ms; goodput: req/s within the SLO)")
    for workload in workloads:
        rows = {}
        for policy in args.policies:
            rows[policy] = measure(args, workload, policy, replica_flags)
            print_row(rows[policy], args.slo_ttft_s)
        if "balanced" in rows and "round-robin" in rows:
            b, r = rows["balanced"], rows["round-robin"]
            ratio = b.goodput(args.slo_ttft_s) / max(r.goodput(args.slo_ttft_s), 1e-9)
            tt = pct([x.ttft for x in b.ok()] or [0], 50) / max(pct([x.ttft for x in r.ok()] or [1], 50), 1e-9)
            target = TARGETS.get(workload)
            verdict = "" if target is None else f" (target ≥ {target:g}x: {'met' if ratio >= target else 'NOT met'})"
            print(f"{'':<12}balanced/round-robin: goodput {ratio:.2f}x{verdict}, TTFT p50 {tt:.2f}x, "
                  f"hit rate {b.hit_rate * 100:.1f}% vs {r.hit_rate * 100:.1f}%")


# ---- the pool's own cost ---------------------------------------------------------------------------------------

async def sequential(url: str, model: str, n: int) -> list[float]:
    body = orjson.dumps({"model": model, "messages": [{"role": "user", "content": "2+2?"}], "max_tokens": 2,
                         "stream": True})
    out = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30),
                                     connector=aiohttp.TCPConnector(limit=1)) as session:
        for i in range(n + 5):  # the first 5 warm up (a fresh connection)
            t0 = time.perf_counter()
            async with session.post(url + "/chat/completions", data=body,
                                    headers={"Content-Type": "application/json"}) as response:
                if response.status != 200:
                    raise SystemExit(f"{url}: HTTP {response.status}: {(await response.read())[:300]!r}")
                await response.read()
            if i >= 5:
                out.append(time.perf_counter() - t0)
    return out


def overhead(args: argparse.Namespace) -> None:
    with processes() as started:
        (url,) = start_sims(started, 1, ["--served-model-name", args.model, "--decode-ms", "0.2",
                                         "--prefill-ms-per-token", "0"])
        plain = started.unimodel("--engine", "upstream", "--upstream", url, *QUIET)
        # a pool over the one replica: its URL spelled two ways (two entries), so the choice runs per request
        pooled = gateway(started, [url, url.replace("127.0.0.1", "localhost")], "balanced")
        lat: dict[str, list[float]] = {"direct": [], "plain upstream": [], "pool": []}
        rounds = 10
        for _ in range(rounds):  # interleaved rounds, so drift hits all three alike
            for name, target in (("direct", url), ("plain upstream", plain), ("pool", pooled)):
                lat[name] += asyncio.run(sequential(target, args.model, max(1, args.overhead_requests // rounds)))
    print(f"\nthe pool's cost: {args.overhead_requests} short streamed requests, one at a time, each path")
    for name, xs in lat.items():
        print(f"  {name:<16} p50 {pct(xs, 50) * 1e3:7.3f} ms   p99 {pct(xs, 99) * 1e3:7.3f} ms")
    added = (pct(lat["pool"], 50) - pct(lat["plain upstream"], 50)) * 1e3
    print(f"  pool over a plain upstream: {added:+.3f} ms at p50 (target ≤ 0.2 ms: "
          f"{'met' if added <= 0.2 else 'NOT met'})")
    print(f"  in process, per request: {choice_cost(args)}")


def choice_cost(args: argparse.Namespace) -> str:
    """Microseconds to hash a multi-turn request's prefix blocks and choose among 4 replicas, in process."""
    try:
        from unimodel.engines.base import GenerationRequest
        from unimodel.engines.options import PoolOptions
        from unimodel.engines.pool.choose import choose_balanced
        from unimodel.engines.pool.prefix import PrefixIndex, prompt_blocks
        from unimodel.engines.pool.replica import Replica
        from unimodel.protocol.openai import Message

        options = PoolOptions()
        conv = conversations(argparse.Namespace(**{**vars(args), "conversations": 8}))[3]
        for i in range(min(2, args.turns - 1)):
            conv.answers.append(text(random.Random(i), args.max_tokens))
        request = GenerationRequest("chatcmpl-bench", args.model,
                                    [Message.model_validate(m) for m in conv.messages()])
        replicas = [Replica(name=f"r{i}", url=f"http://r{i}/v1", engine=None, breaker=None,  # type: ignore[arg-type]
                            prefix=PrefixIndex(options.prefix_cache_blocks)) for i in range(4)]
        blocks = prompt_blocks(request, options.prefix_block_bytes, options.prefix_max_blocks)
        replicas[2].prefix.add(blocks[: len(blocks) // 2])
        rng = random.Random(0)
        n = 2000
        t0 = time.perf_counter()
        for _ in range(n):
            blocks = prompt_blocks(request, options.prefix_block_bytes, options.prefix_max_blocks)
        t1 = time.perf_counter()
        for _ in range(n):
            choose_balanced(replicas, blocks, None, options.max_waiting, rng)
        t2 = time.perf_counter()
    except Exception as exc:  # the pool's code may not offer these parts (yet): say so and go on
        return f"skipped ({type(exc).__name__}: {exc})"
    return (f"prefix blocks of a {sum(len(m['content']) for m in conv.messages()) // 1000} kB prompt "
            f"{(t1 - t0) / n * 1e6:.1f} µs, choosing among 4 replicas {(t2 - t1) / n * 1e6:.1f} µs")


# ---- real vLLM ------------------------------------------------------------------------------------------------

def real_vllm(args: argparse.Namespace) -> None:
    """The multi-turn workload, small, through the pool and round robin over two real vLLM CPU replicas."""
    sys.path.insert(0, str(ROOT))
    from tests.support.vllm_server import SERVED_NAME, VllmServer, mistral_flags, vllm_python
    from unimodel.models import ensure_tiny_random

    python = vllm_python()
    if python is None:
        print("\nreal vLLM: skipped (no .venv-vllm: run `bash .ci/vllm-venv`, or set UNIMODEL_VLLM_PYTHON)")
        return
    cache = Path(args.cache_dir).expanduser()
    checkpoint = ensure_tiny_random("tiny-scripted", cache)
    small = argparse.Namespace(**{**vars(args), "model": SERVED_NAME, "conversations": 4, "turns": 3,
                                  "concurrency": 4, "system_tokens": 96, "doc_tokens": 64, "user_tokens": 8,
                                  "max_tokens": 8, "affinity": False})
    logs = Path(cache) / "bench-pool-vllm-logs"
    logs.mkdir(parents=True, exist_ok=True)
    print(f"\nreal vLLM (CPU build, tiny-scripted, max-model-len 1024) × 2: {small.conversations} conversations "
          f"× {small.turns} turns, concurrency {small.concurrency}")
    print(f"{'workload':<12}{'policy':<13}{'reqs':>6}{'err':>5}{'hit %':>7}{'TTFT p50':>10}{'TTFT p95':>10}"
          f"{'lat p50':>10}{'req/s':>8}{'goodput':>10}")
    flags = [*mistral_flags(checkpoint, SERVED_NAME, parsers=False), "--enable-prefix-caching",
             "--enable-prompt-tokens-details"]
    servers = [VllmServer(python, flags, logs / f"replica{i}.log") for i in range(2)]
    for server in servers:
        server.start()
    try:
        for server in servers:
            server.__enter__()  # waits for /health (bounded), stops it on failure
        urls = [s.base_url for s in servers]
        for policy in [p for p in args.policies if p != "client-rr"]:
            with processes() as started:
                target = gateway(started, urls, policy)
                q0, h0 = prefix_counters(urls)
                results, wall = asyncio.run(closed_loop([target], SERVED_NAME, conversations(small), small, False))
                q1, h1 = prefix_counters(urls)
                print_row(Row("multi-turn", policy, results, wall, (h1 - h0) / (q1 - q0) if q1 > q0 else 0.0,
                              pool_choices(target)), args.slo_ttft_s)
    finally:
        for server in servers:
            server.__exit__(None, None, None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replicas", type=int, default=4)
    ap.add_argument("--conversations", type=int, default=32)
    ap.add_argument("--turns", type=int, default=5)
    ap.add_argument("--concurrency", type=int, default=32, help="requests in flight (default: every conversation)")
    ap.add_argument("--system-tokens", type=int, default=1024, help="the system prompt all conversations share")
    ap.add_argument("--doc-tokens", type=int, default=2048, help="each conversation's own document")
    ap.add_argument("--user-tokens", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=32, help="each answer's length")
    ap.add_argument("--affinity", action="store_true", help="send each conversation's id as `user` (session "
                    "affinity besides the prefix)")
    ap.add_argument("--policies", type=lambda v: v.split(","), default=["round-robin", "balanced"])
    ap.add_argument("--workloads", type=lambda v: tuple(w for w in v.split(",") if w),
                    default=("multi-turn", "no-reuse"), help="'' for none (e.g. only --real-vllm)")
    ap.add_argument("--slo-ttft-s", type=float, default=2.0)
    ap.add_argument("--max-num-seqs", type=int, default=8)
    ap.add_argument("--num-blocks", type=int, default=2048, help="KV blocks per replica: about 8 conversations fit")
    ap.add_argument("--prefill-ms-per-token", type=float, default=0.05)
    ap.add_argument("--decode-ms", type=float, default=10.0)
    ap.add_argument("--model", default="sim-model")
    ap.add_argument("--request-timeout-s", type=float, default=120.0)
    ap.add_argument("--run-timeout-s", type=float, default=900.0)
    ap.add_argument("--skip-overhead", action="store_true")
    ap.add_argument("--overhead-requests", type=int, default=300)
    ap.add_argument("--real-vllm", action="store_true", help="also two real vLLM CPU replicas (minutes)")
    ap.add_argument("--cache-dir", default="~/.cache/unimodel", help="where tiny-scripted is built (--real-vllm)")
    ap.add_argument("--smoke", action="store_true", help="a small run, to check the code path")
    args = ap.parse_args()
    unknown = (set(args.policies) - {"round-robin", "balanced", "client-rr"}) | (set(args.workloads) - set(TARGETS))
    if unknown:
        ap.error(f"unknown policies or workloads: {sorted(unknown)}")
    if args.smoke:
        args.replicas, args.conversations, args.turns, args.concurrency = 2, 4, 2, 4
        args.system_tokens, args.doc_tokens, args.max_tokens, args.overhead_requests = 128, 128, 4, 30
    if args.workloads:
        compare(args, sim_flags(args), args.workloads)
    if not args.skip_overhead:
        overhead(args)
    if args.real_vllm:
        real_vllm(args)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # everything started is stopped by then (the `processes()` blocks' finally)
        sys.exit("interrupted")
