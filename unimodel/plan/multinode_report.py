"""A multi-node plan as a dict for ``--json`` and as rich tables and lines for people.

As for one node, a layout that does not fit says why and carries no command: ``commands`` of every node are
empty and ``gateway`` is null in the JSON. Commands are shell-quoted, one line each, to copy.
"""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING, Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from unimodel.plan.cost import HOURS_PER_MONTH
from unimodel.plan.layouts import WHEN_IT_PAYS, LayoutMemory

if TYPE_CHECKING:
    from unimodel.plan.multinode import MultiNodePlan, Node


def _node_sizing(m: LayoutMemory) -> dict[str, Any]:
    return {"gpus": m.gpus_per_node, "weights_bytes_per_gpu": m.weights_bytes_per_gpu,
            "kv_bytes_per_token_per_gpu": m.kv_bytes_per_token,
            "kv_pool_bytes_per_gpu": max(0, m.kv_pool_bytes_per_gpu), "full_length_sequences": m.sequences_per_node}


def _node(plan: "MultiNodePlan", n: "Node") -> dict[str, Any]:
    return {"node": n.index, "address": n.address, "placeholder": n.placeholder,
            "role": n.role, "serves_api": n.serves_api, "sizing": _node_sizing(plan.memory),
            "commands": [shlex.join(c) for c in n.commands], "argv": [list(c) for c in n.commands]}


def to_dict(plan: "MultiNodePlan") -> dict[str, Any]:
    m, s, cost = plan.memory, plan.one.sizing, plan.cost
    return {
        "layout": plan.layout,
        "nodes": len(plan.nodes),
        "model": {"name": plan.one.model, "served_model_name": plan.one.served_model_name,
                  "total_params": plan.one.spec.total_params, "experts": plan.one.spec.experts},
        "hardware": {"gpu": s.gpu.key, "gpu_name": s.gpu.name, "gpus_per_node": m.gpus_per_node,
                     "gpus": m.gpus_per_node * len(plan.nodes)},
        "parallelism": {"tensor_parallel": m.tensor_parallel, "pipeline_parallel": m.pipeline_parallel,
                        "data_parallel": m.data_parallel, "expert_parallel": m.expert_parallel},
        "memory": {"weights": s.weights, "weights_bytes": m.weights_bytes,
                   "weights_bytes_per_gpu": m.weights_bytes_per_gpu, "kv_cache_dtype": m.kv_dtype,
                   "kv_bytes_per_token_per_gpu": m.kv_bytes_per_token,
                   "usable_bytes_per_gpu": m.usable_bytes_per_gpu, "reserve_bytes_per_gpu": m.reserve_bytes_per_gpu,
                   "reserve_is_estimate": True, "kv_pool_bytes_per_gpu": max(0, m.kv_pool_bytes_per_gpu),
                   "kv_cache_tokens_per_cache": m.kv_cache_tokens, "kv_caches": m.kv_caches,
                   "max_model_len": m.max_model_len, "max_concurrent_sequences": m.max_concurrent_sequences,
                   "gpu_memory_utilization": s.utilization},
        "fits": plan.fits,
        "reason": m.reason,
        "cost": {"price_per_gpu_hour_usd": cost.price_per_gpu_hour, "hourly_usd": round(cost.hourly_usd, 2),
                 "monthly_usd": round(cost.monthly_usd, 2), "hours_per_month": HOURS_PER_MONTH},
        "shutdown_timeout_s": plan.shutdown_timeout,
        "per_node": [_node(plan, n) for n in plan.nodes],
        "gateway": ({"upstreams": plan.upstreams, "pool": plan.pool, "yaml": plan.pool_yaml,
                     "unimodel": shlex.join(plan.unimodel_command)} if plan.fits else None),
        "when_it_pays": WHEN_IT_PAYS[plan.layout],
        "notes": list(plan.notes),
    }


def _gb(n: int) -> str:
    return f"{max(0, n) / 1e9:,.1f} GB"


def _summary(plan: "MultiNodePlan") -> Table:
    m, s, cost = plan.memory, plan.one.sizing, plan.cost
    t = Table(title=f"{plan.one.model} on {len(plan.nodes)} nodes of {m.gpus_per_node}x {s.gpu.name}: "
                    f"{plan.layout}", show_header=False)
    t.add_column(style="bold")
    t.add_column(overflow="fold")
    caches = {"replicas": "replica", "dp-ep": "data-parallel rank (one GPU)", "tp-pp": "pipeline (all nodes)"}
    rows = [
        ("parallelism", f"tensor {m.tensor_parallel} x pipeline {m.pipeline_parallel}, data {m.data_parallel}"
                        + (f", experts over {m.expert_parallel} GPUs" if m.expert_parallel else "")),
        ("weights", f"{s.weights}: {_gb(m.weights_bytes)} ({_gb(m.weights_bytes_per_gpu)} per GPU)"),
        ("KV pool per GPU", f"{_gb(m.kv_pool_bytes_per_gpu)} = {_gb(m.usable_bytes_per_gpu)} usable - weights - "
                            f"{_gb(m.reserve_bytes_per_gpu)} reserve (an estimate)"),
        ("KV cache per token", f"{m.kv_bytes_per_token:,} bytes per GPU ({m.kv_dtype})"),
        ("tokens in cache", f"{m.kv_cache_tokens:,} per {caches[plan.layout]}, {m.kv_caches} such cache"
                            + ("s" if m.kv_caches > 1 else "")),
        (f"concurrent {m.max_model_len:,}-token sequences",
         f"{m.max_concurrent_sequences:,} in all, {m.sequences_per_node:,} a node (full length)"),
        ("fits", "yes" if plan.fits else f"NO: {m.reason}"),
        ("cost", f"${cost.hourly_usd:,.2f}/hour, ${cost.monthly_usd:,.0f}/month ({HOURS_PER_MONTH} h)"),
        ("drain", f"--shutdown-timeout {plan.shutdown_timeout}: in-flight requests get {plan.shutdown_timeout} s "
                  "on SIGTERM"),
    ]
    for k, v in rows + [("note", n) for n in plan.notes]:
        t.add_row(k, v)
    return t


def renderable(plan: "MultiNodePlan") -> Group:
    parts: list[Any] = [_summary(plan)]
    if not plan.fits:
        parts.append(Text(f"does not fit: {plan.memory.reason}. No launch commands.", style="bold red"))
        return Group(*parts)
    for n in plan.nodes:
        parts.append(Text(f"Node {n.index} ({n.address}): {n.role}", style="bold"))
        parts += [Text(shlex.join(c)) for c in n.commands]
    parts += [Text("Gateway: in unimodel.yaml", style="bold"), Text(plan.pool_yaml.rstrip()),
              Text("or as flags:", style="bold"), Text(shlex.join(plan.unimodel_command)),
              Text(f"When it pays: {WHEN_IT_PAYS[plan.layout]}")]
    if any(n.placeholder for n in plan.nodes):
        parts.append(Text("Replace NODEk_ADDR by each node's address, or give them with --node-address "
                          "(repeatable, in node order)."))
    return Group(*parts)
