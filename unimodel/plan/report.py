"""A plan: its figures as a dict for ``--json`` and as rich tables for people (the plan renders itself).

A plan that does not fit says so and why, and carries no launch command and no decode speed (a setup that
cannot run has neither): ``launch`` and ``speed`` are null in the JSON, and the table shows neither.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Any, Optional

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from unimodel.plan.catalog import GIB
from unimodel.plan.cost import HOURS_PER_MONTH
from unimodel.plan.sizing import Sizing
from unimodel.plan.specs import ModelSpec

_LOOPBACK = ("127.0.0.1", "localhost", "::1")
#: what the report calls each part that stays BF16 in a quantized checkpoint
_BF16_NAMES = {"attention (replicated)": "MLA down-projections (q_a_proj, kv_a_proj_with_mqa)",
               "embeddings": "embeddings",
               "lm_head": "lm_head", "norms": "norms", "router": "router", "vision tower": "vision tower",
               "projector": "projector"}


@dataclass(frozen=True)
class FourServerRow:
    role: str
    model: str
    sizing: Sizing
    target_sequences: int = 1  # the full-length sequences it was sized to hold at once

    def shortfalls(self, one: Sizing) -> list[str]:
        """Where this server's capacity is not the one model's share: a shorter context, fewer sequences."""
        s, out = self.sizing, []
        if not s.fits:
            out.append(f"does not fit even on {s.gpus} GPUs: {s.reason}")
            return out
        if s.max_model_len < one.max_model_len:
            out.append(f"context {s.max_model_len:,} (its model's maximum) against {one.max_model_len:,}")
        if s.max_concurrent_sequences < self.target_sequences:
            out.append(f"holds {s.max_concurrent_sequences:,} full-length sequences at most, not "
                       f"{self.target_sequences:,}")
        return out


@dataclass(frozen=True)
class Plan:
    model: str
    spec: ModelSpec
    sizing: Sizing
    vllm: list[str]
    sglang: list[str]
    four: tuple[FourServerRow, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)
    four_target_sequences: int = 0
    served_model_name: str = ""
    host: str = "127.0.0.1"
    port: int = 8000
    max_num_seqs_source: str = ""

    @property
    def fits(self) -> bool:
        return self.sizing.fits

    @property
    def remote(self) -> bool:
        """The vLLM command listens beyond loopback: it is meant for a separate GPU host."""
        return self.host not in _LOOPBACK

    @property
    def upstream_url(self) -> str:
        host = "GPU_HOST" if self.remote else self.host
        return f"http://{host}:{self.port}/v1"

    @property
    def unimodel_command(self) -> list[str]:
        """How to point unimodel at the vLLM the plan launches."""
        return ["unimodel", "serve", "--engine", "upstream", "--upstream", self.upstream_url,
                "--model", self.served_model_name or self.model]

    def bf16_parts(self) -> list[str]:
        w = self.sizing.weights
        kept = [p.name for p in self.spec.parts if p.stays_bf16(w)]
        if "attention (split)" in kept and "attention (replicated)" in kept:  # NVFP4: the experts only
            kept = ["all attention projections"] + [k for k in kept if not k.startswith("attention (")]
        return [_BF16_NAMES.get(k, k) for k in kept]

    def to_dict(self) -> dict[str, Any]:
        s, spec = self.sizing, self.spec
        out: dict[str, Any] = {
            "model": {"name": self.model, "total_params": spec.total_params, "active_params": spec.active_params,
                      "attention": spec.attention, "layers": spec.layers, "max_context": spec.max_context,
                      "experts": spec.experts, "experts_per_token": spec.experts_per_token,
                      "parts": {p.name: {"params": p.params, "bf16_in_quantized_checkpoints": not p.quantized,
                                         "bf16_in": list(p.bf16_in),
                                         "tensor_parallel": "split" if p.split else "replicated"}
                                for p in spec.parts}},
            "hardware": {"gpu": s.gpu.key, "gpu_name": s.gpu.name, "gpus": s.gpus,
                         "memory_bytes_per_gpu": s.gpu.memory_bytes, "cuda_total_gib": s.gpu.cuda_total_gib,
                         "nvidia_smi_mib": s.gpu.memory_mib, "bandwidth_tbs": s.gpu.bandwidth_tbs,
                         "fp8": s.gpu.fp8, "fp4": s.gpu.fp4},
            "memory": {"weights": s.weights, "weights_bytes": s.weights_bytes,
                       "weights_bytes_per_gpu": s.weights_bytes_per_gpu, "bf16_parts": self.bf16_parts(),
                       "kv_cache_dtype": s.kv_dtype, "kv_bytes_per_token": s.kv_bytes_per_token,
                       "kv_replicated_per_gpu": spec.attention == "mla",
                       "usable_bytes_per_gpu": s.memory.usable_bytes_per_gpu,
                       "reserve_bytes_per_gpu": s.reserve_bytes_per_gpu, "reserve_is_estimate": True,
                       "kv_pool_bytes_per_gpu": s.kv_pool_bytes_per_gpu, "kv_cache_tokens": s.kv_cache_tokens,
                       "max_model_len": s.max_model_len, "max_concurrent_sequences": s.max_concurrent_sequences,
                       "gpu_memory_utilization": s.utilization},
            "scheduling": {"max_num_seqs": s.effective_max_num_seqs,
                           "max_num_seqs_in_command": s.max_num_seqs,
                           "max_num_seqs_source": self.max_num_seqs_source,
                           "full_length_sequences": s.max_concurrent_sequences},
            "fits": s.fits,
            "reason": s.reason,
            "speed": None,
            "cost": {"price_per_gpu_hour_usd": s.cost.price_per_gpu_hour, "hourly_usd": round(s.hourly_usd, 2),
                     "monthly_usd": round(s.monthly_usd, 2), "hours_per_month": HOURS_PER_MONTH},
            "launch": None,
            "notes": list(self.notes),
        }
        if s.fits:
            out["speed"] = {"context_tokens": s.context_tokens,
                            "decode_tok_s_upper_bound_batch1": round(s.decode_tok_s_batch1, 1),
                            "concurrency": s.concurrency,
                            "decode_tok_s_upper_bound_at_concurrency": round(s.decode_tok_s_at_concurrency, 1)}
            out["launch"] = {"vllm": shlex.join(self.vllm), "vllm_argv": self.vllm,
                             "sglang": shlex.join(self.sglang), "sglang_argv": self.sglang,
                             "host": self.host, "port": self.port, "upstream_url": self.upstream_url,
                             "unimodel": shlex.join(self.unimodel_command)}
        if self.four:
            four_monthly = sum(r.sizing.monthly_usd for r in self.four)
            out["compare_four"] = {
                "rule": self._four_rule(),
                "one": {"model": self.model, "gpus": s.gpus, "max_model_len": s.max_model_len,
                        "max_concurrent_sequences": s.max_concurrent_sequences},
                "target_sequences_each": self.four_target_sequences,
                "servers": [{"role": r.role, "model": r.model, "gpus": r.sizing.gpus, "fits": r.sizing.fits,
                             "weights_bytes": r.sizing.weights_bytes, "max_model_len": r.sizing.max_model_len,
                             "max_concurrent_sequences": r.sizing.max_concurrent_sequences,
                             "target_sequences": r.target_sequences,
                             "gpu_memory_utilization": r.sizing.utilization,
                             "equal_capacity": not r.shortfalls(s), "shortfalls": r.shortfalls(s),
                             "hourly_usd": round(r.sizing.hourly_usd, 2),
                             "monthly_usd": round(r.sizing.monthly_usd, 2)} for r in self.four],
                "four_gpus": sum(r.sizing.gpus for r in self.four),
                "four_max_concurrent_sequences": sum(r.sizing.max_concurrent_sequences for r in self.four),
                "four_monthly_usd": round(four_monthly, 2),
                "one_gpus": s.gpus,
                "one_monthly_usd": round(s.monthly_usd, 2),
                "monthly_savings_usd": round(four_monthly - s.monthly_usd, 2),
            }
        return out

    def _four_rule(self) -> str:
        s = self.sizing
        return (f"each server sized for the one model's context ({s.max_model_len:,} tokens, or its own model's "
                f"maximum if shorter) and for at least {self.four_target_sequences:,} concurrent full-length "
                f"sequences, a quarter (rounded up) of the {s.max_concurrent_sequences:,} the one model holds")

    def __rich__(self) -> Group:
        s, spec = self.sizing, self.spec
        t = Table(title=f"{self.model} on {s.gpus}x {s.gpu.name}", show_header=False)
        t.add_column(style="bold")
        t.add_column(overflow="fold")
        kv_how = ", replicated on each GPU" if spec.attention == "mla" else ", this GPU's share of the KV heads"
        usable_gib = s.memory.usable_bytes_per_gpu / GIB
        rows: list[tuple[str, str]] = [
            ("parameters", f"{spec.total_params / 1e9:.1f}B total, {spec.active_params / 1e9:.2f}B active per token"),
            ("weights", f"{s.weights}: {_gb(s.weights_bytes)} ({_gb(s.weights_bytes_per_gpu)} per GPU"
                        + ("" if s.weights == "bf16" else f"; in BF16: {', '.join(self.bf16_parts())}") + ")"),
            ("usable per GPU", f"{_gb(s.memory.usable_bytes_per_gpu)} ({usable_gib:,.2f} GiB = CUDA's "
                               f"{s.gpu.cuda_total_gib:,.2f} GiB x --gpu-memory-utilization {s.utilization:g})"),
            ("non-KV reserve per GPU", f"{_gb(s.reserve_bytes_per_gpu)}, an estimate (activations, non-torch "
                                       "memory, CUDA graphs; vLLM measures it at start): --reserve-gb"),
            ("KV pool per GPU", f"{_gb(s.kv_pool_bytes_per_gpu)} = usable - weights - reserve"),
            ("KV cache per token", f"{s.kv_bytes_per_token:,} bytes ({s.kv_dtype}, {spec.attention.upper()}{kv_how})"),
            ("tokens in cache", f"{s.kv_cache_tokens:,}"),
            (f"concurrent {s.max_model_len:,}-token sequences", f"{s.max_concurrent_sequences:,} (full length)"),
            ("sequences at once", f"{s.effective_max_num_seqs:,} (--max-num-seqs, {self.max_num_seqs_source}); "
                                  "shorter requests share the cache, and vLLM preempts when it runs out"),
            ("fits", "yes" if s.fits else f"NO: {s.reason}"),
        ]
        if s.fits:
            rows.append(("decode bound (bandwidth)", f"{s.decode_tok_s_batch1:,.0f} tok/s at batch 1, "
                         f"{s.decode_tok_s_at_concurrency:,.0f} tok/s at {s.concurrency} sequences "
                         f"(context {s.context_tokens:,})"))
        rows.append(("cost", f"${s.hourly_usd:,.2f}/hour, ${s.monthly_usd:,.0f}/month ({HOURS_PER_MONTH} h)"))
        rows += [("note", n) for n in self.notes]
        for k, v in rows:
            t.add_row(k, v)
        parts: list[Any] = [t]
        if self.four:
            parts += self._four_parts()
        if not s.fits:
            parts.append(Text(f"does not fit: {s.reason}. No launch command.", style="bold red"))
            return Group(*parts)
        for title, argv in (("vLLM", self.vllm), ("SGLang", self.sglang)):  # one line each, to copy
            parts += [Text(f"{title}:", style="bold"), Text(shlex.join(argv))]
        where = ("on the GPU host, listening on every interface" if self.remote else "on this machine")
        parts += [Text(f"Point unimodel at it (vLLM runs {where}, port {self.port}; the gateway keeps 8000):",
                       style="bold"), Text(shlex.join(self.unimodel_command))]
        return Group(*parts)

    def _four_parts(self) -> list[Any]:
        s = self.sizing
        f = Table(title=f"four single-purpose servers vs one {self.model} ({s.gpu.name}, {s.weights})")
        for col in ("role", "model", "GPUs", "context", "sequences", "$/hour", "$/month"):
            f.add_column(col)
        for r in self.four:
            f.add_row(r.role, r.model, f"{r.sizing.gpus}" + ("" if r.sizing.fits else " (does not fit)"),
                      f"{r.sizing.max_model_len:,}", f"{r.sizing.max_concurrent_sequences:,}",
                      f"{r.sizing.hourly_usd:,.2f}", f"{r.sizing.monthly_usd:,.0f}")
        four = sum(r.sizing.monthly_usd for r in self.four)
        f.add_row("total", "", f"{sum(r.sizing.gpus for r in self.four)}", "",
                  f"{sum(r.sizing.max_concurrent_sequences for r in self.four):,}",
                  f"{sum(r.sizing.hourly_usd for r in self.four):,.2f}", f"{four:,.0f}")
        f.add_row("one model", self.model, f"{s.gpus}", f"{s.max_model_len:,}", f"{s.max_concurrent_sequences:,}",
                  f"{s.hourly_usd:,.2f}", f"{s.monthly_usd:,.0f}")
        f.add_row("saved", "", "", "", "", "", f"{four - s.monthly_usd:,.0f}")
        out: list[Any] = [f, Text(f"Sizing: {self._four_rule()}.")]
        for r in self.four:
            for gap in r.shortfalls(s):
                out.append(Text(f"Not equal: {r.role} ({r.model}): {gap}."))
        return out


def _gb(n: Optional[int]) -> str:
    return f"{(n or 0) / 1e9:,.1f} GB"


def render(plan: object, console: Optional[Console] = None) -> None:
    """Print a plan (a :class:`Plan`, or ``plan/cpu.py``'s ``CpuPlan``: anything rich renders); soft wrap keeps
    each launch command one line (the tables still fit the terminal)."""
    (console or Console()).print(plan, soft_wrap=True)
