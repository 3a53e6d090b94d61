"""Continuous batching for the embedded engine: one worker thread, one left-padded decode batch.

Why hand-written rather than transformers' continuous batching (``model.init_continuous_batching``), which does
run Mistral4 on CPU: its manager fixes sampling for all requests at creation (one ``do_sample`` flag, one
global RNG through ``torch.multinomial``), so greedy and sampled requests cannot share a batch and a request's
``seed`` cannot make its output reproducible; and its logits processors see the packed batch without knowing
which row belongs to which request, so there is no clean seam for per-request logic (a JSON grammar's token
mask, closing the thinking at a thinking budget). It also sizes its paged cache from free memory unless told
otherwise and runs its own thread and queues. What we need is small enough to own:

* newly admitted requests are prefilled together (a left-padded batch up to ``max_prefill_tokens``; a
  request with images alone) into a fresh ``DynamicCache``, and their first tokens are sampled from the
  prefill logits;
* a text prompt longer than ``max_prefill_tokens`` is prefilled in chunks of that many tokens into a cache of
  its own (:mod:`.chunked_prefill`), one chunk per step, each followed by a decode step of the running batch,
  so a long prompt never stalls the running streams for more than one chunk; it joins the batch with its
  first token, sampled from the last chunk's logits (one chunked prefill at a time; requests behind it wait);
* with a KV budget (:mod:`.kv_budget`), a request is admitted only if the batch, with it, still fits the
  budget for its whole life (every row's prompt + max new tokens); otherwise it waits at the head of the queue
  (the engine bounds the wait by ``--queue-timeout``), and a request that could not fit even alone is refused
  (400) at submission;
* they then join the running batch between two steps: the caches are left-padded to a common length and
  concatenated on the batch axis; a 2-D attention mask hides the padding and explicit ``position_ids`` keep
  each row's true positions, exactly as ``generate`` does for a left-padded batch;
* every step decodes one token for all running rows; finished and cancelled rows are dropped between steps
  (``index_select`` on the batch axis, then leading all-padding columns are trimmed), which frees their cache;
* sampling is per row (:mod:`unimodel.engines.local.sampling`), after per-request logit hooks.

A request is a :class:`~unimodel.engines.local.sequence.SequenceRequest` (:mod:`.sequence`, which the batch,
the chunked prefill and the engine's mailbox import instead of this module).

Limits, accepted for now: the cache is a growing, left-padded ``DynamicCache`` (concatenation per step), not
a paged pool, so the budget counts ``rows × longest reservation`` rather than blocks actually used; images
are prefilled in one piece.

Thread model: :meth:`BatchScheduler.submit` and :meth:`cancel` are called from any thread (the event loop);
results go back through each request's ``sink``, called from the worker thread, and each distinct ``flush``
callback of the step's receivers is called once when the step is done (the engine wakes its event loop there,
once per step rather than once per sequence: each wake-up is a syscall and a GIL hand-off that slowed the
decode thread measurably at 16 streams). Nothing here is bound to an event loop.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import torch

from unimodel.engines.local.batch import RunningBatch
from unimodel.engines.local.chunked_prefill import ChunkedPrefill
from unimodel.engines.local.kv_budget import KvBudget
from unimodel.engines.local.sampling import sample_rows
from unimodel.engines.local.sequence import SequenceRequest, StopReason
from unimodel.errors import InvalidRequestError, OverloadedError, ServiceUnavailableError

log = logging.getLogger("unimodel.local")


def cache_kwarg(model: Any) -> str:
    """The forward's name for the KV cache argument: ``cache`` from transformers 5.24 (where
    ``past_key_values`` is deprecated, to be removed in 5.40), ``past_key_values`` before."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def record_logprobs(seqs: list[SequenceRequest], logprobs: torch.Tensor, tokens: list[int]) -> None:
    """Append each sequence's entry for its ``token`` (row i of ``logprobs``, [rows, vocab]): the token's log
    probability and the ``top_logprobs`` likeliest, likeliest first. A few small tensor ops and one
    ``tolist`` for all the rows."""
    index = torch.tensor(tokens, dtype=torch.long, device=logprobs.device)[:, None]
    chosen = logprobs.gather(1, index).squeeze(1).tolist()
    k = min(max(s.top_logprobs or 0 for s in seqs), logprobs.shape[-1])
    if k:
        values, ids = torch.topk(logprobs, k, dim=-1)
        top_values, top_ids = values.tolist(), ids.tolist()
    for row, seq in enumerate(seqs):
        n = min(seq.top_logprobs or 0, k)
        top = list(zip(top_ids[row][:n], top_values[row][:n])) if n else []
        seq.logprobs.append((chosen[row], top))


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
        max_prefill_tokens: int = 512,
        kv_budget: KvBudget | None = None,
    ) -> None:
        self.model = model
        self.device = device
        self.max_num_seqs = max_num_seqs
        self.max_queue = max_queue
        self.max_model_len = max_model_len
        self._new_cache = new_cache
        self.max_prefill_tokens = max_prefill_tokens
        self.kv_budget = kv_budget or KvBudget(None, 1)
        self._chunked: ChunkedPrefill | None = None
        self._waiting: deque[SequenceRequest] = deque()
        self._batch = RunningBatch()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.steps = 0  # decode steps run (for tests and metrics)
        self.tokens = 0  # tokens generated, prefill's first ones included (for metrics: rate() is tokens/s)
        self._flushes: set[Callable[[], None]] = set()  # bound methods of one mailbox compare equal
        self._cache_kwarg = cache_kwarg(model)

    # ---- any thread ------------------------------------------------------------------------------------

    def start(self) -> None:
        self._stopping = False
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
        """Queue ``seq``; raises :class:`OverloadedError` when ``max_queue`` requests already wait beyond the
        free slots (so ``max_queue`` 0 still serves up to ``max_num_seqs`` at once)."""
        need = self.reservation(seq)
        if not self.kv_budget.fits([need]):
            raise InvalidRequestError(
                f"this request needs {need} tokens of KV cache (prompt {len(seq.prompt_ids)} + max_tokens "
                f"{seq.params.max_new_tokens}) but the whole KV cache budget holds {self.kv_budget.tokens} "
                "(--kv-memory-gb); lower max_tokens or shorten the messages", param="max_tokens")
        with self._cond:
            if self._stopping or self._thread is None:
                raise ServiceUnavailableError("the local engine is not running", retry_after=5)
            waiting = sum(1 for s in self._waiting if not s.cancelled)
            free = max(0, self.max_num_seqs - self._slots_taken())
            if waiting >= self.max_queue + free:
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

    def reservation(self, seq: SequenceRequest) -> int:
        """Cache tokens ``seq`` may come to hold: its prompt plus its new tokens, at most the context length."""
        return min(len(seq.prompt_ids) + seq.params.max_new_tokens, self.max_model_len)

    def _slots_taken(self) -> int:
        return len(self._batch) + (self._chunked is not None)

    def stats(self) -> dict[str, int]:
        """Gauges for metrics: running rows, waiting requests, decode steps and tokens so far, cached length."""
        return {"running": self.num_running, "waiting": self.num_waiting, "steps": self.steps,
                "tokens": self.tokens, "cache_columns": self._batch.columns,
                "prefilling": int(self._chunked is not None)}

    # ---- worker thread ---------------------------------------------------------------------------------

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self._cond:
                    while (not self._stopping and not self._waiting and not len(self._batch)
                           and self._chunked is None):
                        self._cond.wait()
                    if self._stopping:
                        break
                try:
                    self._drop_cancelled()
                    self._admit()
                    if self._chunked is not None:
                        self._prefill_chunk(self._chunked)
                    self._flush()
                    if len(self._batch):
                        self._decode_step()
                except Exception as exc:  # a failed forward fails the rows it touched, never the thread
                    log.exception("local engine step failed")
                    for seq in self._batch.seqs:
                        self._deliver(seq, [], None, exc)
                    self._batch = RunningBatch()
                self._flush()
        error = ServiceUnavailableError("the local engine is shutting down", retry_after=5)
        with self._cond:
            pending = list(self._waiting) + self._batch.seqs + ([self._chunked.seq] if self._chunked else [])
            self._chunked = None
            self._waiting.clear()
            self._batch = RunningBatch()
        for seq in pending:
            self._deliver(seq, [], None, error)
        self._flush()

    def _flush(self) -> None:
        flushes, self._flushes = self._flushes, set()
        for flush in flushes:
            try:
                flush()
            except Exception:  # a closed event loop: its sequences are cancelled by their next delivery
                log.debug("flush failed", exc_info=True)

    def _drop_cancelled(self) -> None:
        keep = [i for i, s in enumerate(self._batch.seqs) if not s.cancelled and not s.done]
        self._batch.keep(keep)

    def _admit(self) -> None:
        """Prefill waiting sequences into free slots: short text-only ones together, ones with images alone,
        and a prompt longer than ``max_prefill_tokens`` chunk by chunk (:meth:`_prefill_chunk`)."""
        group: list[SequenceRequest] = []
        budget = self.max_prefill_tokens
        while self._chunked is None and self._slots_taken() + len(group) < self.max_num_seqs:
            with self._cond:
                if not self._waiting:
                    break
                seq = self._waiting[0]
                if seq.cancelled:
                    self._waiting.popleft()
                    continue
                chunked = len(seq.prompt_ids) > budget and not seq.prefill_inputs
                longest = max([len(s.prompt_ids) for s in group] + [len(seq.prompt_ids)])
                if group and (seq.prefill_inputs or chunked or longest * (len(group) + 1) > budget):
                    break
                if not self._fits_with(group + [seq]):
                    break  # waits at the head of the queue until rows finish (the engine bounds the wait)
                self._waiting.popleft()
            seq.admitted = True
            if chunked:
                seq.generator = seq.params.new_generator()
                self._chunked = ChunkedPrefill(seq, self._new_cache(), self.max_prefill_tokens)
                break
            group.append(seq)
            if seq.prefill_inputs:
                break
        if group:
            try:
                self._prefill(group)
            except Exception as exc:
                log.exception("prefill failed")
                for seq in group:
                    self._deliver(seq, [], None, exc)

    def _fits_with(self, new: list[SequenceRequest]) -> bool:
        rows = self._batch.seqs + ([self._chunked.seq] if self._chunked else []) + new
        return self.kv_budget.fits([self.reservation(s) for s in rows])

    def _prefill_chunk(self, job: ChunkedPrefill) -> None:
        """Prefill the next chunk of a long prompt (:mod:`.chunked_prefill`); after the last one, sample its
        first token and merge it into the running batch."""
        seq = job.seq
        if seq.cancelled:
            self._chunked = None
            seq.done = True
            return
        try:
            logits = job.forward_next(self.model, self.device, self._cache_kwarg)
            if logits is None:
                return
            self._chunked = None
            token = self._sample([seq], logits)[0]
        except Exception as exc:
            log.exception("chunked prefill failed")
            self._chunked = None
            self._deliver(seq, [], None, exc)
            return
        if self._accept(seq, token, job.length):
            self._batch.merge([seq], job.cache, job.mask(self.device), [job.length], [token])

    def _prefill(self, group: list[SequenceRequest]) -> None:
        """One forward over the prompts of ``group`` (left-padded), then their first tokens join the batch."""
        lengths = [len(s.prompt_ids) for s in group]
        width = max(lengths)
        ids = torch.zeros((len(group), width), dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        positions = torch.zeros((len(group), width), dtype=torch.long)
        for i, (seq, n) in enumerate(zip(group, lengths)):
            ids[i, width - n:] = torch.tensor(seq.prompt_ids, dtype=torch.long)
            mask[i, width - n:] = 1
            positions[i, width - n:] = torch.arange(n)
            seq.generator = seq.params.new_generator()
        mask = mask.to(self.device)
        cache = self._new_cache()  # filled in place by the forward
        out = self.model(
            input_ids=ids.to(self.device),
            attention_mask=mask,
            position_ids=positions.to(self.device),
            **{self._cache_kwarg: cache},
            use_cache=True,
            logits_to_keep=1,
            **group[0].prefill_inputs,
        )
        tokens = self._sample(group, out.logits[:, -1, :])
        keep = [i for i, (seq, token, n) in enumerate(zip(group, tokens, lengths)) if self._accept(seq, token, n)]
        for seq in group:
            seq.prefill_inputs = {}  # images are no longer needed
        if not keep:
            return
        if len(keep) < len(group):
            index = torch.tensor(keep, device=self.device)
            mask = mask.index_select(0, index)
            for layer in cache.layers:
                layer.keys = layer.keys.index_select(0, index)
                layer.values = layer.values.index_select(0, index)
        self._batch.merge([group[i] for i in keep], cache, mask, [lengths[i] for i in keep],
                          [tokens[i] for i in keep])

    def _decode_step(self) -> None:
        batch = self._batch
        assert batch.mask is not None
        rows = len(batch)
        mask = torch.cat([batch.mask, torch.ones((rows, 1), dtype=batch.mask.dtype, device=self.device)], dim=1)
        out = self.model(
            input_ids=torch.tensor(batch.last, dtype=torch.long, device=self.device)[:, None],
            attention_mask=mask,
            position_ids=torch.tensor(batch.positions, dtype=torch.long, device=self.device)[:, None],
            **{self._cache_kwarg: batch.cache},
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
        asked = [i for i, s in enumerate(seqs) if s.top_logprobs is not None]
        # vLLM's default (``--logprobs-mode raw_logprobs``): the model's own distribution, before any hook,
        # penalty, temperature or truncation changes it; only for the rows that asked
        raw = torch.log_softmax(logits[asked], dim=-1) if asked else None
        for i, seq in enumerate(seqs):
            for hook in seq.hooks:
                hook(seq.generated, logits[i])
        gens = [s.generator for s in seqs]
        tokens = sample_rows(logits, [s.params for s in seqs], gens)  # type: ignore[arg-type]
        if raw is not None:
            record_logprobs([seqs[i] for i in asked], raw, [tokens[i] for i in asked])
        return tokens

    def _accept(self, seq: SequenceRequest, token: int, length: int) -> bool:
        """Record ``token`` (``length`` = tokens in the sequence before it); True while the sequence runs on."""
        if seq.cancelled:
            seq.done = True
            return False
        seq.generated.append(token)
        self.tokens += 1
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
        if seq.flush is not None:
            self._flushes.add(seq.flush)
        try:
            seq.sink(tokens, reason, error)
        except Exception:  # the receiving side is gone (its event loop closed): treat as cancelled
            log.debug("dropping a sequence whose receiver is gone", exc_info=True)
            seq.cancelled = True
