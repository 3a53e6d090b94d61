"""CPU cost of the request log per row, on both sides of its queue, into a temporary SQLite file.

Builds realistic finished request contexts (usage, reasoning, a route and key, a user, streamed, one tool call
in a few), then measures in this one process:

* the event loop's side: :meth:`RequestLog.request_finished` (``row_from`` + ``LogWriter.submit``);
* the writer thread's side, through a real ``LogWriter`` and ``LogStore``: ``prepare_row`` and the batched
  inserts, as CPU time of the writer thread itself (``pthread_getcpuclockid``), rows submitted in chunks of
  ``--chunk`` (about what one flush interval collects under load: 330 req/s x 0.2 s is ~66) and, separately,
  in full batches of ``batch_rows``;
* the parts of the writer's side on their own (``prepare_row``, ``LogStore.insert``) on this thread.

Each figure is the best of ``--repeat`` runs (the machine may be shared). Figures only: nothing is asserted.

    python benchmarks/request_log_rows.py [--rows 20000] [--chunk 66] [--prefill 0] [--repeat 3] [--prompts]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path

from unimodel.formats.reasoning import AppliedReasoning
from unimodel.protocol.events import Usage
from unimodel.service.context import RequestContext
from unimodel.telemetry.request_log import RequestLog, UserHashes, prepare_row, row_from
from unimodel.telemetry.spill import SpillFile
from unimodel.telemetry.store import LogStore
from unimodel.telemetry.writer import LogWriter

SECRET = b"0123456789abcdef0123456789abcdef"


def contexts(n: int, prompts: bool) -> list[RequestContext]:
    out = []
    for i in range(n):
        ctx = RequestContext(uuid.uuid4().hex)  # as the server makes them: random, like log_id
        ctx.key_name = f"team-{i % 7}"
        ctx.user = f"user-{i % 50}@example.org"
        ctx.route = "default" if i % 5 else "code"
        ctx.model = "mistralai/Magistral-Small-2509"
        ctx.stream = True
        ctx.first_token_at = ctx.received_at + 0.012
        ctx.first_answer_at = ctx.received_at + 0.120
        ctx.finished_at = ctx.received_at + 0.480
        ctx.usage = Usage(512 + i % 300, 200 + i % 90, reasoning_tokens=80, estimated=False)
        ctx.finish_reason = "stop" if i % 10 else "tool_calls"
        ctx.reasoning = AppliedReasoning("medium", "medium", 4096)
        ctx.upstream, ctx.retries, ctx.image_count = "primary", 0, 0
        if i % 10 == 0:
            ctx.tool_names = ["get_weather"]
        if prompts:
            ctx.prompt_text = f"user: what is the weather in Paris, mail me at bob{i}@example.com"
            ctx.answer_text = "It is sunny, 21 degrees. " * 8
        out.append(ctx)
    return out


def thread_cpu(thread: threading.Thread) -> float:
    assert thread.ident is not None
    return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))


def through_writer(ctxs: list[RequestContext], db: Path, chunk: int, log_prompts: bool) -> tuple[float, float]:
    """CPU µs per row on the event loop's side and in the writer thread, through the real writer."""
    store = LogStore(f"sqlite:///{db}")
    before = store.count() if db.exists() else 0
    writer = LogWriter(store, SpillFile(db.with_suffix(".spill")), prepare=prepare_row)
    request_log = RequestLog(writer, SECRET, log_prompts=log_prompts)
    writer.start()
    assert writer.wait_idle(30)
    assert writer._thread is not None
    writer_start = thread_cpu(writer._thread)
    loop_cpu = 0.0
    for start in range(0, len(ctxs), chunk):
        t0 = time.thread_time()
        for ctx in ctxs[start:start + chunk]:
            request_log.request_finished(ctx)
        loop_cpu += time.thread_time() - t0
        writer._wake.set()  # as if the flush interval had passed
        assert writer.wait_idle(30)
    writer_cpu = thread_cpu(writer._thread) - writer_start
    writer.stop()
    assert store.count() == before + len(ctxs), store.count()
    store.dispose()
    return loop_cpu / len(ctxs) * 1e6, writer_cpu / len(ctxs) * 1e6


def parts(ctxs: list[RequestContext], db: Path, batch: int, log_prompts: bool) -> dict[str, float]:
    """CPU µs per row of ``row_from``, ``prepare_row`` and ``LogStore.insert`` (batches of ``batch``)."""
    store = LogStore(f"sqlite:///{db}")
    store.migrate()
    user_hashes = UserHashes(SECRET)  # one per run, as the request log holds one
    t0 = time.thread_time()
    rows = [row_from(ctx, user_hashes, log_prompts) for ctx in ctxs]
    t1 = time.thread_time()
    prepared = [prepare_row(row) for row in rows]
    t2 = time.thread_time()
    for start in range(0, len(prepared), batch):
        store.insert(prepared[start:start + batch])
    t3 = time.thread_time()
    store.dispose()
    n = len(ctxs) / 1e6
    return {"row_from": (t1 - t0) / n, "prepare_row": (t2 - t1) / n, "insert": (t3 - t2) / n}


def fresh_db(tmp: Path, template: Path, name: str) -> Path:
    db = tmp / name
    if template.exists():
        shutil.copyfile(template, db)
    return db


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--chunk", type=int, default=66, help="rows per flush in the writer run")
    parser.add_argument("--prefill", type=int, default=0, help="rows already in the database")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measure (the best is shown)")
    parser.add_argument("--prompts", action="store_true", help="log prompts and answers (redacted)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        template = tmp / "template.db"
        if args.prefill:
            store = LogStore(f"sqlite:///{template}")
            store.migrate()
            user_hashes = UserHashes(SECRET)
            filler = contexts(min(args.prefill, 10_000), False)
            for start in range(0, args.prefill, len(filler)):
                store.insert([prepare_row(row_from(ctx, user_hashes)) for ctx in filler[:args.prefill - start]])
            store.dispose()
        ctxs = contexts(args.rows, args.prompts)
        parts(ctxs[:1000], tmp / "warm-up.db", 200, args.prompts)
        for batch in (args.chunk, 200):
            runs = [parts(ctxs, fresh_db(tmp, template, f"parts-{batch}-{i}.db"), batch, args.prompts)
                    for i in range(args.repeat)]
            best = {name: min(run[name] for run in runs) for name in runs[0]}
            print(f"parts, batches of {batch:3d}: " + "  ".join(f"{name} {us:6.1f}" for name, us in best.items())
                  + "  µs/row")
        for chunk in (args.chunk, 200):
            runs2 = [through_writer(ctxs, fresh_db(tmp, template, f"writer-{chunk}-{i}.db"), chunk, args.prompts)
                     for i in range(args.repeat)]
            print(f"writer run, {chunk:3d} rows per flush: event loop {min(r[0] for r in runs2):6.1f} µs/row  "
                  f"writer thread {min(r[1] for r in runs2):6.1f} µs/row")


if __name__ == "__main__":
    main()
