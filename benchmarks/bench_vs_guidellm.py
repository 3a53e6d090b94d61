"""`unimodel bench` against GuideLLM: the same endpoint, load and prompts, measured by both, side by side.

Starts an endpoint on 127.0.0.1 — the scripted upstream's `bench-paced` model (50 ms to the first token,
4 ms a token, 20 thinking + 60 answer tokens), straight (`--target scripted`, the default) or behind
`unimodel serve --engine upstream` (`--target unimodel`) — or takes any endpoint (`--url URL --model NAME`).
Then runs GuideLLM (in its own venv, made here with `pip install guidellm` when missing) and `unimodel bench`
on it, one after the other, `--rounds` times each (alternating), at the same fixed concurrency, request count
and synthetic prompts (GuideLLM reads `unimodel bench`'s chat prompts from a JSON-lines file), and prints
each figure from both tools, their ratio, and the CPU time each tool used. The endpoint it starts runs on
the first half of the CPUs and the tools on the other half (`--no-pin` to share them): on a small machine a
client that burns CPU otherwise slows the very server it measures. Figures only: nothing is asserted.

    python benchmarks/bench_vs_guidellm.py [--concurrency 8] [--requests 200] [--rounds 2]
                                           [--target scripted|unimodel] [--url URL --model NAME]
                                           [--guidellm-venv /tmp/unimodel-guidellm-venv] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _processes import ENV, ROOT, processes

# (label, unimodel results.json path, GuideLLM metric, statistic, scale to ms or per-second)
FIGURES = [
    ("TTFT p50 (ms)", ("ttft", "p50"), ("time_to_first_token_ms", "p50"), 1.0),
    ("TTFT p90 (ms)", ("ttft", "p90"), ("time_to_first_token_ms", "p90"), 1.0),
    ("TTFA / TTFOT p50 (ms)", ("ttfa", "p50"), ("time_to_first_output_token_ms", "p50"), 1.0),
    ("ITL p50 (ms)", ("itl", "p50"), ("inter_token_latency_ms", "p50"), 1.0),
    ("ITL mean (ms)", ("itl", "mean"), ("inter_token_latency_ms", "mean"), 1.0),
    ("TPOT p50 (ms)", ("tpot", "p50"), ("time_per_output_token_ms", "p50"), 1.0),
    ("E2E p50 (ms)", ("e2e", "p50"), ("request_latency", "p50"), 1e3),
    ("E2E p90 (ms)", ("e2e", "p90"), ("request_latency", "p90"), 1e3),
    ("requests/s", ("throughput", "requests_per_s"), ("requests_per_second", "mean"), 1.0),
    ("output tokens/s", ("throughput", "output_tokens_per_s"), ("output_tokens_per_second", "mean"), 1.0),
]


def ensure_guidellm(venv: Path) -> Path:
    exe = venv / "bin" / "guidellm"
    if exe.exists():
        return exe
    print(f"installing GuideLLM into {venv} (its own venv) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    result = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "guidellm"], capture_output=True, text=True)
    if result.returncode != 0 or not exe.exists():
        raise SystemExit(f"GuideLLM could not be installed: {result.stderr.strip()[-2000:]}")
    return exe


def guidellm_data(path: Path, requests: int, input_tokens: int, output_tokens: int) -> None:
    """unimodel bench's own synthetic chat prompts, in the order it sends them, as GuideLLM rows."""
    sys.path.insert(0, str(ROOT))
    from unimodel.bench.workloads import WorkloadOptions, build_workload

    workload = build_workload("chat", WorkloadOptions(input_tokens=input_tokens, output_tokens=output_tokens))
    with path.open("w") as fh:
        for i in range(requests):
            text = workload.request(i, "m", None)[1]["messages"][0]["content"]
            fh.write(json.dumps({"text": text, "output_tokens_count": output_tokens}) + "\n")


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_guidellm(exe: Path, url: str, model: str, args: argparse.Namespace, data: Path, out: Path) -> dict:
    root = url.rstrip("/").removesuffix("/v1")
    cmd = [str(exe), "run", "--backend", f"kind=openai_http,target={root},model={model}",
           "--profile", f"kind=concurrent,streams={args.concurrency}",
           "--constraint", f"kind=max_requests,count={args.requests}",
           "--data", f"kind=json_file,path={data}", "--output", f"kind=json,path={out}",
           "--disable-console-interactive"]
    cpu = children_cpu_s()
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    cpu = children_cpu_s() - cpu
    if result.returncode != 0:
        raise SystemExit(f"GuideLLM failed ({result.returncode}): {result.stdout[-1500:]}{result.stderr[-1500:]}")
    metrics = json.loads(out.read_text())["benchmarks"][0]["metrics"]
    figures = {}
    for label, _, (name, stat), scale in FIGURES:
        successful = metrics[name]["successful"]
        value = successful["mean"] if stat == "mean" else successful["percentiles"][stat]
        figures[label] = value * scale
    figures["CPU s used by the tool"] = cpu
    figures["completed"] = metrics["request_totals"]["successful"]
    figures["errors"] = metrics["request_totals"]["errored"]
    return figures


def run_unimodel(url: str, model: str, args: argparse.Namespace, out: Path) -> dict:
    cmd = [sys.executable, "-m", "unimodel.cli", "bench", "--url", url, "--model", model, "--workload", "chat",
           "--concurrency", str(args.concurrency), "--requests", str(args.requests), "--input-tokens",
           str(args.input_tokens), "--output-tokens", str(args.output_tokens), "--ignore-eos", "--out", str(out)]
    cpu = children_cpu_s()
    result = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=1800)
    cpu = children_cpu_s() - cpu
    if result.returncode != 0:
        raise SystemExit(f"unimodel bench failed ({result.returncode}): {result.stdout[-1500:]}{result.stderr[-1500:]}")
    summary = json.loads((out / "results.json").read_text())["summary"]
    figures = {label: summary[a][b] for label, (a, b), _, _ in FIGURES}
    figures["completed"], figures["errors"] = summary["completed"], summary["errors"]
    figures["CPU s used by the tool"] = cpu
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=2, help="runs of each tool, alternating; medians are compared")
    ap.add_argument("--input-tokens", type=int, default=128)
    ap.add_argument("--output-tokens", type=int, default=64)
    ap.add_argument("--target", choices=["scripted", "unimodel"], default="scripted")
    ap.add_argument("--url")
    ap.add_argument("--model", default="bench-paced")
    ap.add_argument("--guidellm-venv", type=Path, default=Path("/tmp/unimodel-guidellm-venv"))
    ap.add_argument("--no-pin", dest="pin", action="store_false",
                    help="do not split the CPUs between the endpoint (first half) and the tools (second half)")
    ap.add_argument("--smoke", action="store_true", help="a few requests through unimodel, `unimodel bench` only "
                    "(GuideLLM is neither installed nor run), to check the code path (CI)")
    args = ap.parse_args()
    if args.smoke:
        args.concurrency, args.requests, args.rounds, args.output_tokens, args.target = 2, 6, 1, 16, "unimodel"

    exe = None if args.smoke else ensure_guidellm(args.guidellm_venv)
    work = Path(tempfile.mkdtemp(prefix="bench-vs-guidellm-"))
    data = work / "prompts.jsonl"
    guidellm_data(data, args.requests, args.input_tokens, args.output_tokens)
    cpus = sorted(os.sched_getaffinity(0))
    server_cpus, tool_cpus = set(cpus[: len(cpus) // 2]), set(cpus[len(cpus) // 2:])
    pin = args.pin and len(cpus) >= 2
    with processes() as started:
        url = args.url
        if url is None:
            if pin:  # the endpoint's processes inherit these CPUs; the tools get the others
                os.sched_setaffinity(0, server_cpus)
            url = started.scripted_upstream()
            if args.target == "unimodel":
                url = started.unimodel("--engine", "upstream", "--upstream", url)
            if pin:
                os.sched_setaffinity(0, tool_cpus)
                print(f"endpoint pinned to CPUs {sorted(server_cpus)}, the tools to {sorted(tool_cpus)}")
        print(f"endpoint {url}, model {args.model}: concurrency {args.concurrency}, {args.requests} requests a run, "
              f"{args.rounds} round(s) each, prompts ~{args.input_tokens} tokens", flush=True)
        ours, theirs = [], []
        for i in range(args.rounds):
            if exe is not None:
                theirs.append(run_guidellm(exe, url, args.model, args, data, work / f"guidellm-{i}.json"))
            ours.append(run_unimodel(url, args.model, args, work / f"unimodel-{i}"))
            print(f"round {i + 1}: GuideLLM " + (f"{theirs[-1]['completed']} completed / {theirs[-1]['errors']} "
                                                 "errors" if theirs else "not run (--smoke)") +
                  f", unimodel bench {ours[-1]['completed']} / {ours[-1]['errors']}", flush=True)
    print(f"\n{'figure (median of rounds)':<26}{'unimodel':>12}{'GuideLLM':>12}{'ratio':>9}   within 5 %")
    for label, *_ in FIGURES:
        a = statistics.median(r[label] for r in ours)
        if not theirs:
            print(f"{label:<26}{a:>12.2f}{'-':>12}{'-':>9}   -")
            continue
        b = statistics.median(r[label] for r in theirs)
        ratio = a / b if b else float("nan")
        print(f"{label:<26}{a:>12.2f}{b:>12.2f}{ratio:>9.3f}   {'yes' if abs(ratio - 1) <= 0.05 else 'NO'}")
    label = "CPU s used by the tool"  # on a small machine a heavy client slows the server it measures
    a = statistics.median(r[label] for r in ours)
    b = statistics.median(r[label] for r in theirs) if theirs else float("nan")
    print(f"{label:<26}{a:>12.2f}{b:>12.2f}{a / b:>9.3f}   (its process and children, start-up included)")
    print(f"\noutputs in {work}")


if __name__ == "__main__":
    main()
