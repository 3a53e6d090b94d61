"""A plan: its figures as a dict for ``--json`` and as rich tables for people (the plan renders itself)."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Any, Optional

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from unimodel.plan.cost import HOURS_PER_MONTH
from unimodel.plan.sizing import Sizing
from unimodel.plan.specs import ModelSpec


@dataclass(frozen=True)
class FourServerRow:
    role: str
    model: str
    sizing: Sizing


@dataclass(frozen=True)
class Plan:
    model: str
    spec: ModelSpec
    sizing: Sizing
    vllm: list[str]
    sglang: list[str]
    four: tuple[FourServerRow, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def fits(self) -> bool:
        return self.sizing.fits

    def to_dict(self) -> dict[str, Any]:
        s, spec = self.sizing, self.spec
        out: dict[str, Any] = {
            "model": {"name": self.model, "total_params": spec.total_params, "active_params": spec.active_params,
                      "attention": spec.attention, "layers": spec.layers, "max_context": spec.max_context,
                      "experts": spec.experts, "experts_per_token": spec.experts_per_token,
                      "parts": {p.name: {"params": p.params, "bf16_in_quantized_checkpoints": not p.quantized,
                                         "tensor_parallel": "split" if p.split else "replicated"}
                                for p in spec.parts}},
            "hardware": {"gpu": s.gpu.key, "gpu_name": s.gpu.name, "gpus": s.gpus,
                         "memory_bytes_per_gpu": s.gpu.memory_bytes, "bandwidth_tbs": s.gpu.bandwidth_tbs,
                         "fp8": s.gpu.fp8, "fp4": s.gpu.fp4},
            "memory": {"weights": s.weights, "weights_bytes": s.weights_bytes,
                       "weights_bytes_per_gpu": s.weights_bytes_per_gpu, "kv_cache_dtype": s.kv_dtype,
                       "kv_bytes_per_token": s.kv_bytes_per_token,
                       "kv_replicated_per_gpu": spec.attention == "mla",
                       "usable_bytes_per_gpu": s.memory.usable_bytes_per_gpu,
                       "kv_pool_bytes_per_gpu": s.kv_pool_bytes_per_gpu, "kv_cache_tokens": s.kv_cache_tokens,
                       "max_model_len": s.max_model_len, "max_concurrent_sequences": s.max_concurrent_sequences,
                       "gpu_memory_utilization": s.utilization},
            "fits": s.fits,
            "reason": s.reason,
            "speed": {"context_tokens": s.context_tokens,
                      "decode_tok_s_upper_bound_batch1": round(s.decode_tok_s_batch1, 1),
                      "concurrency": s.concurrency,
                      "decode_tok_s_upper_bound_at_concurrency": round(s.decode_tok_s_at_concurrency, 1)},
            "cost": {"price_per_gpu_hour_usd": s.cost.price_per_gpu_hour, "hourly_usd": round(s.hourly_usd, 2),
                     "monthly_usd": round(s.monthly_usd, 2), "hours_per_month": HOURS_PER_MONTH},
            "launch": {"vllm": shlex.join(self.vllm), "vllm_argv": self.vllm, "sglang": shlex.join(self.sglang),
                       "sglang_argv": self.sglang},
            "notes": list(self.notes),
        }
        if self.four:
            four_monthly = sum(r.sizing.monthly_usd for r in self.four)
            out["compare_four"] = {
                "servers": [{"role": r.role, "model": r.model, "gpus": r.sizing.gpus, "fits": r.sizing.fits,
                             "weights_bytes": r.sizing.weights_bytes, "max_model_len": r.sizing.max_model_len,
                             "hourly_usd": round(r.sizing.hourly_usd, 2),
                             "monthly_usd": round(r.sizing.monthly_usd, 2)} for r in self.four],
                "four_gpus": sum(r.sizing.gpus for r in self.four),
                "four_monthly_usd": round(four_monthly, 2),
                "one_gpus": s.gpus,
                "one_monthly_usd": round(s.monthly_usd, 2),
                "monthly_savings_usd": round(four_monthly - s.monthly_usd, 2),
            }
        return out

    def __rich__(self) -> Group:
        s, spec = self.sizing, self.spec
        t = Table(title=f"{self.model} on {s.gpus}x {s.gpu.name}", show_header=False)
        t.add_column(style="bold")
        t.add_column(overflow="fold")
        kv_how = ", replicated on each GPU" if spec.attention == "mla" else ", this GPU's share of the KV heads"
        rows: list[tuple[str, str]] = [
            ("parameters", f"{spec.total_params / 1e9:.1f}B total, {spec.active_params / 1e9:.2f}B active per token"),
            ("weights", f"{s.weights}: {_gb(s.weights_bytes)} ({_gb(s.weights_bytes_per_gpu)} per GPU"
                        + ("" if s.weights == "bf16" else
                           "; embeddings, lm_head, norms, router and the vision side stay BF16") + ")"),
            ("KV cache per token", f"{s.kv_bytes_per_token:,} bytes ({s.kv_dtype}, {spec.attention.upper()}{kv_how})"),
            ("KV pool per GPU", f"{_gb(s.kv_pool_bytes_per_gpu)} = {_gb(s.memory.usable_bytes_per_gpu)} usable "
                                f"- weights - reserve"),
            ("tokens in cache", f"{s.kv_cache_tokens:,}"),
            (f"concurrent {s.max_model_len:,}-token sequences", f"{s.max_concurrent_sequences:,}"),
            ("fits", "yes" if s.fits else f"NO: {s.reason}"),
            ("decode bound (bandwidth)", f"{s.decode_tok_s_batch1:,.0f} tok/s at batch 1, "
             f"{s.decode_tok_s_at_concurrency:,.0f} tok/s at {s.concurrency} sequences "
             f"(context {s.context_tokens:,})"),
            ("cost", f"${s.hourly_usd:,.2f}/hour, ${s.monthly_usd:,.0f}/month ({HOURS_PER_MONTH} h)"),
        ]
        rows += [("note", n) for n in self.notes]
        for k, v in rows:
            t.add_row(k, v)
        parts: list[Any] = [t]
        if self.four:
            parts.append(self._four_table())
        for title, argv in (("vLLM", self.vllm), ("SGLang", self.sglang)):  # one line each, to copy
            parts += [Text(f"{title}:", style="bold"), Text(shlex.join(argv))]
        return Group(*parts)

    def _four_table(self) -> Table:
        s = self.sizing
        f = Table(title=f"four single-purpose servers vs one {self.model} ({s.gpu.name}, {s.weights})")
        for col in ("role", "model", "GPUs", "$/hour", "$/month"):
            f.add_column(col)
        for r in self.four:
            f.add_row(r.role, r.model, f"{r.sizing.gpus}" + ("" if r.sizing.fits else " (does not fit)"),
                      f"{r.sizing.hourly_usd:,.2f}", f"{r.sizing.monthly_usd:,.0f}")
        four = sum(r.sizing.monthly_usd for r in self.four)
        f.add_row("total", "", f"{sum(r.sizing.gpus for r in self.four)}",
                  f"{sum(r.sizing.hourly_usd for r in self.four):,.2f}", f"{four:,.0f}")
        f.add_row("one model", self.model, f"{s.gpus}", f"{s.hourly_usd:,.2f}", f"{s.monthly_usd:,.0f}")
        f.add_row("saved", "", "", "", f"{four - s.monthly_usd:,.0f}")
        return f


def _gb(n: Optional[int]) -> str:
    return f"{(n or 0) / 1e9:,.1f} GB"


def render(plan: Plan, console: Optional[Console] = None) -> None:
    """Print the plan; soft wrap keeps each launch command one line (the tables still fit the terminal)."""
    (console or Console()).print(plan, soft_wrap=True)
