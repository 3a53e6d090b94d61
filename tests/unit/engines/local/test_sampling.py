"""Per-row sampling and the per-request logit hooks."""

from __future__ import annotations

import torch

from unimodel.engines.local.hooks import RepetitionPenalties, ThinkingBudget
from unimodel.engines.local.sampling import SamplingParams, sample_rows


def rows(n: int = 4, vocab: int = 50, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, vocab, generator=torch.Generator().manual_seed(seed)) * 3


def test_greedy_and_degenerate_sampling_pick_the_argmax() -> None:
    logits = rows()
    params = [SamplingParams(8, temperature=0.0), SamplingParams(8, temperature=1.0, top_k=1),
              SamplingParams(8, temperature=0.7, top_p=1e-6), SamplingParams(8, temperature=1e-4)]
    gens = [p.new_generator() for p in params]
    assert sample_rows(logits, params, gens) == logits.argmax(-1).tolist()


def test_seeded_rows_are_reproducible_and_independent_of_neighbours() -> None:
    logits = rows(3)
    p = SamplingParams(8, temperature=1.0, top_p=0.95, top_k=20, seed=7)
    alone = [sample_rows(logits[1:2], [p], [p.new_generator()])[0] for _ in range(2)]
    others = [SamplingParams(8, temperature=1.3), p, SamplingParams(8, temperature=0.0)]
    batched = sample_rows(logits, others, [q.new_generator() for q in others])[1]
    assert alone[0] == alone[1] == batched


def test_top_k_and_top_p_keep_to_the_head() -> None:
    logits = rows(1, vocab=100)
    top5 = set(torch.topk(logits[0], 5).indices.tolist())
    p = SamplingParams(8, temperature=2.0, top_k=5)
    gen = p.new_generator()
    assert {sample_rows(logits, [p], [gen])[0] for _ in range(200)} <= top5
    probs = torch.softmax(logits[0], -1)
    order = torch.argsort(probs, descending=True)
    nucleus = set(order[: int((torch.cumsum(probs[order], 0) < 0.5).sum()) + 1].tolist())
    q = SamplingParams(8, temperature=1.0, top_p=0.5)
    gen = q.new_generator()
    assert {sample_rows(logits, [q], [gen])[0] for _ in range(200)} <= nucleus


def test_thinking_budget_forces_the_end_of_thinking() -> None:
    hook = ThinkingBudget(think_id=5, end_think_id=6, budget=3)
    logits = torch.zeros(10)
    hook([5, 1, 2], logits)
    assert torch.isfinite(logits).all()
    hook([5, 1, 2, 3], logits)
    assert logits.argmax().item() == 6 and torch.isinf(logits[:6]).all()
    after = torch.zeros(10)
    hook([5, 1, 2, 3, 6, 7, 8, 9], after)
    assert torch.isfinite(after).all()


def test_presence_and_frequency_penalties() -> None:
    hook = RepetitionPenalties(presence=0.5, frequency=0.25, vocab_size=6)
    logits = torch.zeros(6)
    hook([], logits)
    assert (logits == 0).all()
    hook([1, 1, 3], logits)
    assert logits.tolist() == [0.0, -1.0, 0.0, -0.75, 0.0, 0.0]
