"""``unimodel plan --nodes N --layout replicas|dp-ep|tp-pp``: the per-node vLLM commands of a deployment over
several nodes, and the gateway's pool config for them.

Three layouts (``layouts`` sizes each):

- ``replicas``: N independent ``vllm serve``, one per node, each tensor parallel over its node's GPUs as the
  one-node plan says; the gateway's pool balances over them.
- ``dp-ep``: one engine: data parallel over every GPU, the routed experts split over all of them (expert
  parallel). Node 0 runs the API and data-parallel ranks ``0..L-1`` (``--data-parallel-size D
  --data-parallel-size-local L --data-parallel-address NODE0 --data-parallel-rpc-port P
  --enable-expert-parallel``), node k runs ranks ``kL..kL+L-1`` with ``--headless --data-parallel-start-rank
  kL``, as vLLM's data-parallel deployment guide runs it; the gateway points at node 0.
- ``tp-pp``: one engine over a Ray cluster: tensor parallel within a node, pipeline parallel across the nodes
  (``--tensor-parallel-size G --pipeline-parallel-size N --distributed-executor-backend ray``), after ``ray
  start --head`` on node 0 and ``ray start --address NODE0:6379`` on the others; the gateway points at node 0.

Every command serving or scheduling requests gets ``--scheduling-policy priority``, so the gateway may forward a
priority class as vLLM's ``priority`` (``pool.forward_priority``), and the plan's ``--shutdown-timeout``. Nodes
are named by placeholders (``NODE0_ADDR``, ...) unless ``--node-address`` fills them, in order. ``--nodes 1``
is the one-node plan, unchanged (``make_multinode_plan`` is not called for it).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any, Optional

import yaml

from unimodel.plan.cost import Cost, cost_of
from unimodel.plan.launch import shutdown_timeout_in
from unimodel.plan.layouts import WHEN_IT_PAYS, LayoutMemory, dp_ep_memory, replicas_memory, tp_pp_memory
from unimodel.plan.planner import make_plan
from unimodel.plan.report import Plan

LAYOUTS = ("replicas", "dp-ep", "tp-pp")
#: the most nodes a plan is made for (each gets its own lines)
MAX_NODES = 64
#: the port data-parallel ranks hand-shake with node 0 on (vLLM's guide uses it; all nodes must agree)
DP_RPC_PORT = 13345
#: the port of the Ray head (Ray's default)
RAY_PORT = 6379
#: on every command that schedules requests: the gateway may forward a priority class as vLLM's ``priority``
PRIORITY_FLAGS = ("--scheduling-policy", "priority")
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,62}))*\.?$")


@dataclass(frozen=True)
class Node:
    """One node's part: its address (or placeholder), what it runs, and its commands in order."""
    index: int
    address: str
    role: str
    commands: tuple[tuple[str, ...], ...]
    serves_api: bool
    placeholder: bool = False  # the address is NODEk_ADDR, for the operator to fill


@dataclass(frozen=True)
class MultiNodePlan:
    layout: str
    one: Plan  # the one-node plan the per-node commands are made from
    memory: LayoutMemory
    nodes: tuple[Node, ...]
    port: int
    shutdown_timeout: int
    notes: tuple[str, ...] = ()

    @property
    def fits(self) -> bool:
        return self.memory.fits

    @property
    def cost(self) -> Cost:
        s = self.one.sizing
        return cost_of(s.gpu, len(self.nodes) * s.gpus, s.cost.price_per_gpu_hour)

    @property
    def upstreams(self) -> list[str]:
        """The base URLs the gateway sends to: every replica, or the node that serves the API."""
        return [f"http://{_url_host(n.address)}:{self.port}/v1" for n in self.nodes if n.serves_api]

    @property
    def pool(self) -> dict[str, Any]:
        """The ``pool:`` mapping of ``unimodel.yaml``."""
        return {"upstreams": self.upstreams, "forward_priority": True}

    @property
    def pool_yaml(self) -> str:
        return yaml.safe_dump({"engine": "upstream", "model": self.one.served_model_name, "pool": self.pool},
                              sort_keys=False)

    @property
    def unimodel_command(self) -> list[str]:
        """The same as ``pool_yaml``, as flags."""
        argv = ["unimodel", "serve", "--engine", "upstream"]
        for url in self.upstreams:
            argv += ["--upstream", url]
        return argv + ["--pool-forward-priority", "--model", self.one.served_model_name]

    def to_dict(self) -> dict[str, Any]:
        from unimodel.plan.multinode_report import to_dict

        return to_dict(self)

    def __rich__(self) -> Any:
        from unimodel.plan.multinode_report import renderable

        return renderable(self)


def placeholder(index: int) -> str:
    return f"NODE{index}_ADDR"


def check_address(address: str) -> str:
    """A node's address: an IP address or a host name (``ValueError`` otherwise)."""
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        pass
    if not _HOSTNAME.match(address):
        raise ValueError(f"--node-address {address!r} is neither an IP address nor a host name")
    return address


def _url_host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def _check(nodes: int, layout: str, addresses: tuple[str, ...]) -> tuple[str, ...]:
    if layout not in LAYOUTS:
        raise ValueError(f"--layout must be one of {', '.join(LAYOUTS)}, not '{layout}'")
    if not 1 <= nodes <= MAX_NODES:
        raise ValueError(f"--nodes must be in 1..{MAX_NODES}, not {nodes}")
    if layout != "replicas" and nodes < 2:
        raise ValueError(f"--layout {layout} spreads one engine over several nodes: it needs --nodes 2 or more "
                         "(one node is the one-node plan; several independent ones are --layout replicas)")
    if len(addresses) > nodes:
        raise ValueError(f"{len(addresses)} --node-address for {nodes} nodes: give at most one a node, in order")
    checked = tuple(check_address(a) for a in addresses)
    if len(set(checked)) != len(checked):
        raise ValueError("--node-address names the same node twice")
    return checked + tuple(placeholder(i) for i in range(len(checked), nodes))


def make_multinode_plan(nodes: int, layout: str = "replicas", node_addresses: tuple[str, ...] = (),
                        **plan_args: Any) -> MultiNodePlan:
    """The plan of ``nodes`` nodes of ``plan_args["gpus"]`` GPUs each in ``layout``; ``plan_args`` are
    :func:`~unimodel.plan.planner.make_plan`'s (model, gpu, gpus, weights, kv_cache, max_model_len, host, port,
    ...). Raises ``ValueError`` with one clear line for bad input; a layout that does not fit is returned with
    its reason and no commands."""
    addresses = _check(nodes, layout, node_addresses)
    one = make_plan(**plan_args)
    s = one.sizing
    args = (one.spec, s.gpu, nodes, s.gpus, s.weights, s.kv_dtype, s.max_model_len, s.utilization,
            s.reserve_bytes_per_gpu)
    memory = (replicas_memory(s, nodes) if layout == "replicas" else
              dp_ep_memory(*args) if layout == "dp-ep" else tp_pp_memory(*args))
    build = {"replicas": _replicas, "dp-ep": _dp_ep, "tp-pp": _tp_pp}[layout]
    notes = list(one.notes)
    if layout != "replicas" and s.fits:
        notes.append(f"one copy of the model fits one node of {s.gpus}x {s.gpu.name} ({s.max_concurrent_sequences:,}"
                     f" full-length sequences): --layout replicas is simpler and fails one node at a time")
    if layout == "dp-ep" and one.spec.attention == "mla" and memory.fits and s.fits:
        notes.append(f"MLA: tensor parallelism keeps the whole KV latent on every GPU, a data-parallel rank only its "
                     f"own sequences': {memory.max_concurrent_sequences:,} full-length sequences here, against "
                     f"{s.max_concurrent_sequences * nodes:,} for {nodes} replicas on the same GPUs")
    if layout == "replicas" and not s.fits:
        notes.append("a model that does not fit one node needs --layout tp-pp (or dp-ep, for a mixture of experts)")
    return MultiNodePlan(layout=layout, one=one, memory=memory,
                         nodes=build(one.vllm, addresses, memory) if memory.fits else _no_commands(addresses),
                         port=one.port, shutdown_timeout=shutdown_timeout_in(one.vllm), notes=tuple(notes))


def _node(index: int, address: str, role: str, commands: tuple[tuple[str, ...], ...], serves_api: bool) -> Node:
    return Node(index, address, role, commands, serves_api, address == placeholder(index))


def _no_commands(addresses: tuple[str, ...]) -> tuple[Node, ...]:
    return tuple(_node(i, a, "", (), i == 0) for i, a in enumerate(addresses))


def _edit(argv: list[str], after: str, insert: list[str], *, set_to: Optional[str] = None,
          drop: tuple[str, ...] = ()) -> tuple[str, ...]:
    """``argv`` with ``insert`` after the flag ``after`` and its value (which becomes ``set_to`` if given), and
    the flags in ``drop`` removed with their values. Every flag of a planned argv has one value but the bare
    ones, which are neither ``after`` nor dropped."""
    out = list(argv)
    for flag in drop:
        i = out.index(flag)
        del out[i:i + 2]
    i = out.index(after)
    if set_to is not None:
        out[i + 1] = set_to
    out[i + 2:i + 2] = insert
    return tuple(out)


def _replicas(vllm: list[str], addresses: tuple[str, ...], memory: LayoutMemory) -> tuple[Node, ...]:
    argv = _edit(vllm, "--tensor-parallel-size", list(PRIORITY_FLAGS))
    return tuple(_node(i, a, f"replica {i + 1} of {len(addresses)} (its own vLLM, tensor parallel over its "
                             f"{memory.tensor_parallel} GPUs)", (argv,), True) for i, a in enumerate(addresses))


def _dp_ep(vllm: list[str], addresses: tuple[str, ...], memory: LayoutMemory) -> tuple[Node, ...]:
    local, size, head = memory.gpus_per_node, memory.data_parallel, addresses[0]
    common = ["--data-parallel-size", str(size), "--data-parallel-size-local", str(local),
              "--data-parallel-address", head, "--data-parallel-rpc-port", str(DP_RPC_PORT),
              "--enable-expert-parallel", *PRIORITY_FLAGS]
    nodes = [_node(0, head, f"head: the API and data-parallel ranks 0..{local - 1}",
                   (_edit(vllm, "--tensor-parallel-size", common, set_to="1"),), True)]
    for k in range(1, len(addresses)):
        start = k * local
        argv = _edit(vllm, "--tensor-parallel-size", ["--headless", *common, "--data-parallel-start-rank",
                                                      str(start)], set_to="1", drop=("--host", "--port"))
        nodes.append(_node(k, addresses[k], f"headless: data-parallel ranks {start}..{start + local - 1}", (argv,),
                           False))
    return tuple(nodes)


def _tp_pp(vllm: list[str], addresses: tuple[str, ...], memory: LayoutMemory) -> tuple[Node, ...]:
    head = addresses[0]
    ray_head = ("ray", "start", "--head", "--port", str(RAY_PORT), "--node-ip-address", head)
    serve = _edit(vllm, "--tensor-parallel-size", ["--pipeline-parallel-size", str(len(addresses)),
                                                   "--distributed-executor-backend", "ray", *PRIORITY_FLAGS])
    nodes = [_node(0, head, "Ray head, the API, pipeline stage 0 (start vLLM once every node has joined)",
                   (ray_head, serve), True)]
    for k in range(1, len(addresses)):
        join = ("ray", "start", "--address", f"{_url_host(head)}:{RAY_PORT}", "--node-ip-address", addresses[k])
        nodes.append(_node(k, addresses[k], f"Ray worker: pipeline stage {k}", (join,), False))
    return tuple(nodes)


__all__ = ["DP_RPC_PORT", "LAYOUTS", "MAX_NODES", "MultiNodePlan", "Node", "RAY_PORT", "WHEN_IT_PAYS",
           "check_address", "make_multinode_plan", "placeholder"]
