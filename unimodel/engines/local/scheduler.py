"""Continuous batching for the embedded engine: one worker thread, one left-padded decode batch.

Why hand-written rather than transformers' continuous batching (``model.init_continuous_batching``), which does
run Mistral4 on CPU: its manager fixes sampling for all requests at creation (one ``do_sample`` flag, one
global RNG through ``torch.multinomial``), so greedy and sampled requests cannot share a batch and a request's
``seed`` cannot make its output reproducible; and its logits processors see the packed batch without knowing
which row belongs to which request, so there is no clean seam for per-request logic (a JSON grammar's token
mask, forcing ``[/THINK]`` at a thinking budget). It also sizes its paged cache from free memory unless told
otherwise and runs its own thread and queues. What we need is small enough to own:

* each request is prefilled alone (batch of one, with its images if any) into its own ``DynamicCache``, and
  its first token is sampled from the prefill logits;
* it then joins the running batch between two steps: the caches are left-padded to a common length and
  concatenated on the batch axis; a 2-D attention mask hides the padding and explicit ``position_ids`` keep
  each row's true positions, exactly as ``generate`` does for a left-padded batch;
* every step decodes one token for all running rows; finished and cancelled rows are dropped between steps
  (``index_select`` on the batch axis, then leading all-padding columns are trimmed), which frees their cache;
* sampling is per row (:mod:`unimodel.engines.local.sampling`), after per-request logit hooks.

Limits, accepted for now: a long prompt's prefill is not chunked, so it delays the running rows' next token
once; the cache is a growing ``DynamicCache`` (concatenation per step), not a paged pool, so memory is bounded
by ``max_num_seqs × max_model_len`` rather than by a block budget.

Thread model: :meth:`BatchScheduler.submit` and :meth:`cancel` are called from any thread (the event loop);
results go back through each request's ``sink``, called from the worker thread (the engine hands them to its
event loop with ``call_soon_threadsafe``). Nothing here is bound to an event loop.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch

from unimodel.engines.local.sampling import SamplingParams, sample_rows
from unimodel.errors import OverloadedError, ServiceUnavailableError

log = logging.getLogger("unimodel.local")

StopReason = Literal["stop", "length"]


class LogitsHook(Protocol):
    """Per-request logic run on a row's logits (float32, 1-D, vocab) before sampling; may edit them in place."""

    def __call__(self, generated: Sequence[int], logits: torch.Tensor) -> None: ...


Sink = Callable[[list[int], "StopReason | None", "BaseException | None"], None]
"""Receives (new tokens, finish reason or None, error or None) from the worker thread."""


@dataclass(eq=False)
class SequenceRequest:
    """One generation as the scheduler sees it: prompt ids, sampling, where results go, and its progress."""

    prompt_ids: list[int]
    params: SamplingParams
    sink: Sink
    prefill_inputs: dict[str, Any] = field(default_factory=dict)  # e.g. pixel_values, image_sizes
    hooks: list[LogitsHook] = field(default_factory=list)
    generated: list[int] = field(default_factory=list)
    cancelled: bool = False
    done: bool = False
    generator: torch.Generator | None = None


class _Batch:
    """The running rows: their shared (left-padded) cache, attention mask, next positions and last tokens."""

    def __init__(self) -> None:
        self.seqs: list[SequenceRequest] = []
        self.cache: Any = None
        self.mask: torch.Tensor | None = None  # [rows, cached length], 1 = real token
        self.positions: list[int] = []
        self.last: list[int] = []

    def __len__(self) -> int:
        return len(self.seqs)

    def add(self, seq: SequenceRequest, cache: Any, length: int, token: int, device: torch.device) -> None:
        mask = torch.ones((1, length), dtype=torch.long, device=device)
        if not self.seqs:
            self.cache, self.mask = cache, mask
        else:
            assert self.mask is not None
            total = max(self.mask.shape[1], length)
            _left_pad_cache(self.cache, total - self.mask.shape[1])
            _left_pad_cache(cache, total - length)
            for mine, theirs in zip(self.cache.layers, cache.layers):
                mine.keys = torch.cat([mine.keys, theirs.keys], dim=0)
                mine.values = torch.cat([mine.values, theirs.values], dim=0)
            self.mask = torch.cat([_left_pad(self.mask, total - self.mask.shape[1]), _left_pad(mask, total - length)])
        self.seqs.append(seq)
        self.positions.append(length)
        self.last.append(token)

    def keep(self, rows: list[int]) -> None:
        """Keep only ``rows`` (drops the others' cache), then trim columns that are padding for every row."""
        if len(rows) == len(self.seqs):
            return
        if not rows:
            self.__init__()  # type: ignore[misc]
            return
        assert self.mask is not None
        index = torch.tensor(rows, device=self.mask.device)
        self.seqs = [self.seqs[i] for i in rows]
        self.positions = [self.positions[i] for i in rows]
        self.last = [self.last[i] for i in rows]
        mask = self.mask.index_select(0, index)
        start = int(mask.any(dim=0).nonzero()[0, 0])
        self.mask = mask[:, start:]
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, index)[..., start:, :]
            layer.values = layer.values.index_select(0, index)[..., start:, :]


def _left_pad(t: torch.Tensor, n: int) -> torch.Tensor:
    return t if n == 0 else torch.nn.functional.pad(t, (n, 0))


def _left_pad_cache(cache: Any, n: int) -> None:
    if n == 0:
        return
    for layer in cache.layers:
        layer.keys = torch.nn.functional.pad(layer.keys, (0, 0, n, 0))
        layer.values = torch.nn.functional.pad(layer.values, (0, 0, n, 0))


class BatchScheduler:
    """Admits, prefills and decodes sequences in one worker thread; see the module docstring."""

    def __init__(
        self,
        model: Any,
        *,
        device: torch.device,
        max_num_seqs: int,
        max_queue: int,
        max_model_len: int,
        new_cache: Callable[[], Any],
    ) -> None:
        self.model = model
        self.device = device
        self.max_num_seqs = max_num_seqs
        self.max_queue = max_queue
        self.max_model_len = max_model_len
        self._new_cache = new_cache
        self._waiting: deque[SequenceRequest] = deque()
        self._batch = _Batch()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.steps = 0  # decode steps run (for tests and metrics)

    # ---- any thread ------------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="unimodel-local-scheduler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = 30.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def submit(self, seq: SequenceRequest) -> None:
        """Queue ``seq``; raises :class:`OverloadedError` when ``max_queue`` requests already wait."""
        with self._cond:
            if self._stopping or self._thread is None:
                raise ServiceUnavailableError("the local engine is not running", retry_after=5)
            waiting = sum(1 for s in self._waiting if not s.cancelled)
            if waiting >= self.max_queue:
                raise OverloadedError(
                    f"the server is busy: {waiting} requests are waiting (--max-queue {self.max_queue}); retry later",
                    retry_after=max(1.0, waiting / max(1, self.max_num_seqs)),
                )
            self._waiting.append(seq)
            self._cond.notify_all()

    def cancel(self, seq: SequenceRequest) -> None:
        """Mark ``seq`` cancelled: it leaves the queue or the batch (freeing its cache) before the next step."""
        with self._cond:
            seq.cancelled = True
            self._cond.notify_all()

    @property
    def num_waiting(self) -> int:
        with self._cond:
            return sum(1 for s in self._waiting if not s.cancelled)

    @property
    def num_running(self) -> int:
        return len(self._batch)

    # ---- worker thread ---------------------------------------------------------------------------------

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self._cond:
                    while not self._stopping and not self._waiting and not len(self._batch):
                        self._cond.wait()
                    if self._stopping:
                        break
                try:
                    self._drop_cancelled()
                    self._admit()
                    if len(self._batch):
                        self._decode_step()
                except Exception as exc:  # a failed forward fails the rows it touched, never the thread
                    log.exception("local engine step failed")
                    for seq in self._batch.seqs:
                        self._deliver(seq, [], None, exc)
                    self._batch = _Batch()
        error = ServiceUnavailableError("the local engine is shutting down", retry_after=5)
        with self._cond:
            pending = list(self._waiting) + self._batch.seqs
            self._waiting.clear()
            self._batch = _Batch()
        for seq in pending:
            self._deliver(seq, [], None, error)

    def _drop_cancelled(self) -> None:
        keep = [i for i, s in enumerate(self._batch.seqs) if not s.cancelled and not s.done]
        self._batch.keep(keep)

    def _admit(self) -> None:
        while len(self._batch) < self.max_num_seqs:
            with self._cond:
                if not self._waiting:
                    return
                seq = self._waiting.popleft()
            if seq.cancelled:
                continue
            try:
                self._prefill(seq)
            except Exception as exc:
                log.exception("prefill failed")
                self._deliver(seq, [], None, exc)

    def _prefill(self, seq: SequenceRequest) -> None:
        seq.generator = seq.params.new_generator()
        cache = self._new_cache()
        ids = torch.tensor([seq.prompt_ids], dtype=torch.long, device=self.device)
        n = ids.shape[1]
        out = self.model(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            position_ids=torch.arange(n, device=self.device)[None, :],
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
            **seq.prefill_inputs,
        )
        seq.prefill_inputs = {}  # images are no longer needed
        token = self._sample([seq], out.logits[:, -1, :])[0]
        if self._accept(seq, token, n):
            self._batch.add(seq, out.past_key_values, n, token, self.device)

    def _decode_step(self) -> None:
        batch = self._batch
        assert batch.mask is not None
        rows = len(batch)
        mask = torch.cat([batch.mask, torch.ones((rows, 1), dtype=batch.mask.dtype, device=self.device)], dim=1)
        out = self.model(
            input_ids=torch.tensor(batch.last, dtype=torch.long, device=self.device)[:, None],
            attention_mask=mask,
            position_ids=torch.tensor(batch.positions, dtype=torch.long, device=self.device)[:, None],
            past_key_values=batch.cache,
            use_cache=True,
        )
        batch.mask = mask
        self.steps += 1
        tokens = self._sample(batch.seqs, out.logits[:, -1, :])
        for i, (seq, token) in enumerate(zip(batch.seqs, tokens)):
            batch.positions[i] += 1
            batch.last[i] = token
            self._accept(seq, token, batch.positions[i])

    def _sample(self, seqs: list[SequenceRequest], logits: torch.Tensor) -> list[int]:
        logits = logits.float()
        for i, seq in enumerate(seqs):
            for hook in seq.hooks:
                hook(seq.generated, logits[i])
        gens = [s.generator for s in seqs]
        return sample_rows(logits, [s.params for s in seqs], gens)  # type: ignore[arg-type]

    def _accept(self, seq: SequenceRequest, token: int, length: int) -> bool:
        """Record ``token`` (``length`` = tokens in the sequence before it); True while the sequence runs on."""
        if seq.cancelled:
            seq.done = True
            return False
        seq.generated.append(token)
        reason: StopReason | None = None
        if token in seq.params.stop_token_ids:
            reason = "stop"
        elif len(seq.generated) >= seq.params.max_new_tokens or length + 1 >= self.max_model_len:
            reason = "length"
        if reason is not None:
            seq.done = True
        self._deliver(seq, [token], reason, None)
        return not seq.done

    def _deliver(self, seq: SequenceRequest, tokens: list[int], reason: StopReason | None,
                 error: BaseException | None) -> None:
        if error is not None:
            seq.done = True
        try:
            seq.sink(tokens, reason, error)
        except Exception:  # the receiving side is gone (its event loop closed): treat as cancelled
            log.debug("dropping a sequence whose receiver is gone", exc_info=True)
            seq.cancelled = True
