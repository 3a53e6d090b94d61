"""A plan: the figures as a dict for ``--json`` and as rich tables for people."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Any, Optional

from rich.console import Console, Group
from rich.table import Table

from unimodel.plan.sizing import HOURS_PER_MONTH, Sizing
from unimodel.plan.specs import ModelSpec


@dataclass
class FourServerRow:
    role: str
    model: str
    sizing: Sizing


@dataclass
class Plan:
    model: str
    spec: ModelSpec
    sizing: Sizing
    vllm: list[str]
    sglang: list[str]
    four: list[FourServerRow] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        s, spec = self.sizing, self.spec
        out: dict[str, Any] = {
            "model": {"name": self.model, "total_params": spec.total_params, "active_params": spec.active_params,
                      "attention": spec.attention, "layers": spec.layers, "max_context": spec.max_context,
                      "parts": {p.name: p.params for p in spec.parts}},
            "hardware": {"gpu": s.gpu.key, "gpu_name": s.gpu.name, "gpus": s.gpus,
                         "memory_bytes_per_gpu": s.gpu.memory_bytes, "bandwidth_tbs": s.gpu.bandwidth_tbs},
            "memory": {"weights": s.weights, "weights_bytes": s.weights_bytes,
                       "weights_bytes_per_gpu": s.weights_bytes_per_gpu, "kv_cache_dtype": s.kv_dtype,
                       "kv_bytes_per_token": s.kv_bytes_per_token,
                       "kv_replicated_per_gpu": spec.attention == "mla",
                       "kv_pool_bytes_per_gpu": s.kv_pool_bytes_per_gpu, "kv_cache_tokens": s.kv_cache_tokens,
                       "max_model_len": s.max_model_len, "max_concurrent_sequences": s.max_concurrent_sequences,
                       "gpu_memory_utilization": s.utilization},
            "fits": s.fits,
            "reason": s.reason,
            "speed": {"context_tokens": s.context_tokens, "decode_tok_s_upper_bound_batch1":
                      round(s.decode_tok_s_batch1, 1), "concurrency": s.concurrency,
                      "decode_tok_s_upper_bound_at_concurrency": round(s.decode_tok_s_at_concurrency, 1)},
            "cost": {"hourly_usd": round(s.hourly_usd, 2), "monthly_usd": round(s.monthly_usd, 2),
                     "hours_per_month": HOURS_PER_MONTH},
            "launch": {"vllm": shlex.join(self.vllm), "vllm_argv": self.vllm, "sglang": shlex.join(self.sglang)},
        }
        if self.four:
            four_monthly = sum(r.sizing.monthly_usd for r in self.four)
            out["compare_four"] = {
                "servers": [{"role": r.role, "model": r.model, "gpus": r.sizing.gpus, "fits": r.sizing.fits,
                             "hourly_usd": round(r.sizing.hourly_usd, 2),
                             "monthly_usd": round(r.sizing.monthly_usd, 2)} for r in self.four],
                "four_monthly_usd": round(four_monthly, 2),
                "one_monthly_usd": round(s.monthly_usd, 2),
                "monthly_savings_usd": round(four_monthly - s.monthly_usd, 2),
            }
        return out

    def __rich__(self) -> Group:
        s, spec = self.sizing, self.spec
        t = Table(title=f"{self.model} on {s.gpus}x {s.gpu.name}", show_header=False)
        t.add_column(style="bold")
        t.add_column()
        rows: list[tuple[str, str]] = [
            ("parameters", f"{spec.total_params / 1e9:.1f}B total, {spec.active_params / 1e9:.2f}B active per token"),
            ("weights", f"{s.weights}: {_gb(s.weights_bytes)} ({_gb(s.weights_bytes_per_gpu)} per GPU)"),
            ("KV cache per token", f"{s.kv_bytes_per_token:,} bytes ({s.kv_dtype}, {spec.attention.upper()}"
             + (", replicated on each GPU)" if spec.attention == "mla" else ", split across GPUs)")),
            ("KV pool per GPU", _gb(s.kv_pool_bytes_per_gpu)),
            ("tokens in cache", f"{s.kv_cache_tokens:,}"),
            (f"concurrent {s.max_model_len:,}-token sequences", f"{s.max_concurrent_sequences:,}"),
            ("fits", "yes" if s.fits else f"NO: {s.reason}"),
            ("decode bound (memory bandwidth)", f"{s.decode_tok_s_batch1:,.0f} tok/s at batch 1, "
             f"{s.decode_tok_s_at_concurrency:,.0f} tok/s at {s.concurrency} sequences "
             f"(context {s.context_tokens:,})"),
            ("cost", f"${s.hourly_usd:,.2f}/hour, ${s.monthly_usd:,.0f}/month"),
            ("vLLM", shlex.join(self.vllm)),
            ("SGLang", shlex.join(self.sglang)),
        ]
        for k, v in rows:
            t.add_row(k, v)
        parts: list[Any] = [t]
        if self.four:
            f = Table(title="four single-purpose servers vs one Mistral Small 4")
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
            parts.append(f)
        return Group(*parts)


def _gb(n: Optional[int]) -> str:
    return f"{(n or 0) / 1e9:,.1f} GB"


def render(plan: Plan, console: Optional[Console] = None) -> None:
    (console or Console()).print(plan)
