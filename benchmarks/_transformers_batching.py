"""transformers' own continuous batching on a checkpoint, for ``local_engine.py`` to compare against.

Runs in a separate interpreter (a venv pinned to a transformers version whose manager works on the model:
5.24's raises on Mistral4's MLA cache on CPU), so it imports nothing from unimodel. It builds one long-lived
``model.init_continuous_batching`` manager with its cache sized by hand (left to size itself it took
90% of free RAM), greedy, no EOS (every request generates exactly ``--tokens``), then measures rounds of
1 / 4 / 16 concurrent requests, interleaved, after one warm-up round. Prints one JSON object per line:
``{"transformers": version, "torch": version}``, then ``{"streams": n, "tok_s": [per round...]}``.

    python _transformers_batching.py CHECKPOINT --prompt-lens 21,25,... [--tokens 128] [--streams 1,4,16]
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("--prompt-lens", required=True, help="prompt length of request i (cycled)")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--streams", default="1,4,16")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    import torch
    import transformers
    from transformers import ContinuousBatchingConfig, GenerationConfig, Mistral4ForCausalLM

    print(json.dumps({"transformers": transformers.__version__, "torch": torch.__version__}), flush=True)
    torch.set_grad_enabled(False)
    model = Mistral4ForCausalLM.from_pretrained(args.checkpoint, dtype=torch.float32).eval()
    levels = [int(s) for s in args.streams.split(",")]
    lens = [int(n) for n in args.prompt_lens.split(",")]
    gen = GenerationConfig(do_sample=False, max_new_tokens=args.tokens, eos_token_id=-1, pad_token_id=0)
    cb = ContinuousBatchingConfig(num_blocks=64, page_size=256, max_batch_tokens=1024,
                                  max_requests_per_batch=max(32, max(levels)))
    manager = model.init_continuous_batching(generation_config=gen, continuous_batching_config=cb)
    manager.start()
    counter = iter(range(10**9))

    def round_of(streams: int) -> float:
        ids = []
        t0 = time.perf_counter()
        for i in range(streams):
            n = lens[i % len(lens)]
            prompt = [(31 * i + 7 * k) % 900 + 20 for k in range(n)]
            ids.append(manager.add_request(prompt, request_id=f"r{next(counter)}", max_new_tokens=args.tokens,
                                           eos_token_id=-1))
        pending, total = set(ids), 0
        deadline = time.monotonic() + 600
        while pending:
            if time.monotonic() > deadline:
                raise SystemExit("transformers' manager did not finish a round in 600 s")
            out = manager.get_result(timeout=1.0)
            if out is None or out.request_id not in pending or not out.is_finished():
                continue
            if out.error:
                raise SystemExit(f"transformers' manager failed a request: {out.error}")
            pending.discard(out.request_id)
            total += len(out.generated_tokens)
        if total != streams * args.tokens:
            raise SystemExit(f"expected {streams * args.tokens} tokens, got {total}")
        return total / (time.perf_counter() - t0)

    try:
        round_of(max(levels))  # warm-up
        trials: dict[int, list[float]] = {n: [] for n in levels}
        for _ in range(args.repeat):
            for n in levels:
                trials[n].append(round_of(n))
        for n in levels:
            print(json.dumps({"streams": n, "tok_s": trials[n]}), flush=True)
    finally:
        manager.stop(block=True, timeout=30)


if __name__ == "__main__":
    main()
