"""``unimodel plan --nodes N --layout replicas|dp-ep|tp-pp``: the per-node commands are consistent (data-parallel
sizes add up, ranks follow one another, tensor x pipeline = the GPUs), the sizing per layout, the gateway's pool
config, the refusals, ``--json``, and ``--shutdown-timeout`` in every planned command. vLLM's own parser reads
every one of these commands in ``tests/vllm/test_plan_flags.py``."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import typer
import yaml

from tests.support.plan_cli import run_plan
from tests.support.serve_cli import serve_settings
from tests.unit.plan.arithmetic import EXPERTS, small_4_by_hand
from unimodel.config import Settings
from unimodel.plan.launch import shutdown_timeout_in
from unimodel.plan.multinode import MAX_NODES, MultiNodePlan, make_multinode_plan
from unimodel.plan.planner import make_plan

REMOTE = {"host": "0.0.0.0", "port": 8001}


def plan(nodes: int, layout: str, *addresses: str, **kw: object) -> MultiNodePlan:
    args: dict[str, object] = {"model": "mistral-small-4", "gpu": "h200", "gpus": 2, "weights": "fp8", **REMOTE}
    args.update(kw)
    return make_multinode_plan(nodes, layout, addresses, **args)


def flags(argv: tuple[str, ...]) -> dict[str, str]:
    """Every ``--flag value`` of an argv (bare flags map to '')."""
    out: dict[str, str] = {}
    for i, a in enumerate(argv):
        if a.startswith("--"):
            value = argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--") else ""
            assert a not in out, (a, argv)  # no flag twice
            out[a] = value
    return out


def vllm_commands(p: MultiNodePlan) -> list[tuple[int, dict[str, str]]]:
    return [(n.index, flags(c)) for n in p.nodes for c in n.commands if c[:2] == ("vllm", "serve")]


def test_replicas_are_the_one_node_command_on_every_node_with_priority_scheduling() -> None:
    p = plan(3, "replicas", "10.0.0.5", "gpu-b.internal")
    one = make_plan("mistral-small-4", "h200", 2, "fp8", **REMOTE)  # type: ignore[arg-type]
    assert p.fits and [n.address for n in p.nodes] == ["10.0.0.5", "gpu-b.internal", "NODE2_ADDR"]
    cmds = vllm_commands(p)
    assert [i for i, _ in cmds] == [0, 1, 2] and all(f == cmds[0][1] for _, f in cmds)
    f = cmds[0][1]
    assert f["--tensor-parallel-size"] == "2" and f["--scheduling-policy"] == "priority"
    assert f["--shutdown-timeout"] == "30" and (f["--host"], f["--port"]) == ("0.0.0.0", "8001")
    # the one-node command plus the scheduling policy, nothing else
    assert {k: v for k, v in f.items() if k != "--scheduling-policy"} == flags(tuple(one.vllm))
    # sizing: N copies of the one-node plan
    assert p.memory.kv_caches == 3 and p.memory.kv_cache_tokens == one.sizing.kv_cache_tokens
    assert p.memory.max_concurrent_sequences == 3 * one.sizing.max_concurrent_sequences
    assert p.cost.hourly_usd == pytest.approx(3 * one.sizing.hourly_usd)
    assert p.upstreams == ["http://10.0.0.5:8001/v1", "http://gpu-b.internal:8001/v1", "http://NODE2_ADDR:8001/v1"]


@pytest.mark.parametrize(("nodes", "gpus"), [(2, 2), (3, 8), (4, 1)])
def test_dp_ep_ranks_add_up_and_follow_one_another(nodes: int, gpus: int) -> None:
    p = plan(nodes, "dp-ep", "10.1.0.1", gpus=gpus)
    assert p.fits, p.memory.reason
    cmds = vllm_commands(p)
    assert [i for i, _ in cmds] == list(range(nodes))
    size = nodes * gpus
    assert all(int(f["--data-parallel-size"]) == size for _, f in cmds)
    assert sum(int(f["--data-parallel-size-local"]) for _, f in cmds) == size
    starts = [int(f.get("--data-parallel-start-rank", 0)) for _, f in cmds]
    assert starts == [k * gpus for k in range(nodes)] and "--data-parallel-start-rank" not in cmds[0][1]
    for i, f in cmds:
        assert f["--data-parallel-address"] == "10.1.0.1" and f["--data-parallel-rpc-port"] == "13345"
        assert "--enable-expert-parallel" in f and f["--tensor-parallel-size"] == "1"
        assert f["--scheduling-policy"] == "priority" and f["--shutdown-timeout"] == "30"
        assert ("--headless" in f) == (i > 0) and ("--port" in f) == (i == 0)  # only node 0 serves the API
    assert p.upstreams == ["http://10.1.0.1:8001/v1"] and p.memory.expert_parallel == size


def test_dp_ep_splits_only_the_routed_experts() -> None:
    by_hand = small_4_by_hand()
    total = sum(v for k, v in by_hand.items() if k not in ("expert", "attention_replicated"))
    for nodes, gpus in ((2, 2), (2, 8), (3, 1)):  # 128 experts over 4, 16 and 3 GPUs (43 on the fullest)
        p = plan(nodes, "dp-ep", gpus=gpus, weights="bf16")
        ranks = nodes * gpus
        per_gpu = 2 * (total - by_hand["routed"]) + 2 * by_hand["routed"] * -(-EXPERTS // ranks) / EXPERTS
        assert p.memory.weights_bytes_per_gpu == pytest.approx(per_gpu, rel=1e-6)
        assert p.memory.kv_caches == ranks and p.memory.sequences_per_node == gpus * p.memory.sequences_per_cache
        assert p.memory.max_concurrent_sequences == ranks * (p.memory.kv_cache_tokens // p.memory.max_model_len)


def test_dp_ep_holds_more_sequences_than_replicas_of_an_mla_model() -> None:
    """MLA's KV latent is whole on every tensor-parallel GPU; a data-parallel rank keeps only its own."""
    replicas, dp_ep = plan(2, "replicas"), plan(2, "dp-ep")
    assert dp_ep.memory.max_concurrent_sequences > 2 * replicas.memory.max_concurrent_sequences
    assert any("MLA" in n for n in dp_ep.notes) and any("--layout replicas is simpler" in n for n in dp_ep.notes)


@pytest.mark.parametrize(("nodes", "gpus"), [(2, 4), (3, 8), (4, 2)])
def test_tp_pp_is_tensor_within_a_node_and_pipeline_across_over_ray(nodes: int, gpus: int) -> None:
    p = plan(nodes, "tp-pp", gpu="h100", gpus=gpus, weights="bf16")
    assert p.fits, p.memory.reason
    cmds = vllm_commands(p)
    assert [i for i, _ in cmds] == [0]  # one engine, started on the head once the Ray cluster is up
    f = cmds[0][1]
    assert int(f["--tensor-parallel-size"]) * int(f["--pipeline-parallel-size"]) == nodes * gpus
    assert f["--tensor-parallel-size"] == str(gpus) and f["--distributed-executor-backend"] == "ray"
    assert f["--scheduling-policy"] == "priority" and f["--shutdown-timeout"] == "30"
    head = p.nodes[0]
    assert head.commands[0] == ("ray", "start", "--head", "--port", "6379", "--node-ip-address", "NODE0_ADDR")
    for n in p.nodes[1:]:
        assert n.commands == (("ray", "start", "--address", "NODE0_ADDR:6379", "--node-ip-address", n.address),)
    # each GPU holds about 1/(N G) of the weights (the fullest stage a little more), its stage's KV cache
    m = p.memory
    assert m.weights_bytes / (nodes * gpus) < m.weights_bytes_per_gpu < 1.5 * m.weights_bytes / (nodes * gpus)
    assert m.kv_bytes_per_token == (256 + 64) * 2 * -(-36 // nodes) and m.kv_caches == 1
    assert p.upstreams == ["http://NODE0_ADDR:8001/v1"]


def test_the_pool_config_and_its_flags_say_the_same() -> None:
    p = plan(2, "replicas", "10.0.0.5", "2001:db8::7")
    assert p.upstreams == ["http://10.0.0.5:8001/v1", "http://[2001:db8::7]:8001/v1"]  # IPv6 in brackets
    doc = yaml.safe_load(p.pool_yaml)
    assert doc == {"engine": "upstream", "model": "mistral-small-4",
                   "pool": {"upstreams": p.upstreams, "forward_priority": True}}
    argv = p.unimodel_command
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--upstream"] == p.upstreams
    assert "--pool-forward-priority" in argv and argv[-2:] == ["--model", "mistral-small-4"]


@pytest.mark.parametrize("layout", ["replicas", "dp-ep"])
def test_the_gateway_reads_the_printed_pool_config_and_flags_as_the_same_settings(
        layout: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = plan(3, layout, "10.0.0.5", "gpu-b.internal")
    config = tmp_path / "unimodel.yaml"
    config.write_text(p.pool_yaml)
    from_file = Settings.load(config)
    from_flags = serve_settings(monkeypatch, *p.unimodel_command[2:])
    for s in (from_file, from_flags):
        assert (s.engine, s.model, s.upstream, s.pool_forward_priority) == (
            "upstream", "mistral-small-4", p.upstreams, True)


def test_a_layout_that_does_not_fit_says_so_and_has_no_commands() -> None:
    tp_pp = plan(2, "tp-pp", gpu="h100", gpus=1)  # 121 GB of FP8 over 2 GPUs of 80 GB
    assert not tp_pp.fits and "even across 2 nodes" in (tp_pp.memory.reason or "")
    assert all(n.commands == () for n in tp_pp.nodes)
    replicas = plan(2, "replicas", gpu="h100", gpus=1)
    assert not replicas.fits and "one replica must fit one node" in (replicas.memory.reason or "")
    assert any("--layout tp-pp" in n for n in replicas.notes)
    d = replicas.to_dict()
    assert d["fits"] is False and d["gateway"] is None and all(n["commands"] == [] for n in d["per_node"])


@pytest.mark.parametrize(("nodes", "layout", "addresses", "kw", "message"), [
    (1, "dp-ep", (), {}, "needs --nodes 2 or more"),
    (1, "tp-pp", (), {}, "needs --nodes 2 or more"),
    (0, "replicas", (), {}, "--nodes must be in 1.."),
    (MAX_NODES + 1, "replicas", (), {}, "--nodes must be in 1.."),
    (2, "ring", (), {}, "--layout must be one of replicas, dp-ep, tp-pp"),
    (2, "replicas", ("a", "b", "c"), {}, "3 --node-address for 2 nodes"),
    (2, "replicas", ("a b",), {}, "neither an IP address nor a host name"),
    (2, "replicas", ("10.0.0.1", "10.0.0.1"), {}, "the same node twice"),
    (2, "dp-ep", (), {"model": "llama-3.3-70b"}, "is dense"),
    (17, "dp-ep", (), {"gpus": 8}, "needs at least 136 routed experts"),
    (37, "tp-pp", (), {}, "36 layers, fewer than 37 nodes"),
    (2, "replicas", (), {"shutdown_timeout": -1}, "--shutdown-timeout must be whole seconds"),
])
def test_nonsense_is_refused_with_one_clear_line(nodes: int, layout: str, addresses: tuple[str, ...],
                                                 kw: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("+", r"\+")):
        plan(nodes, layout, *addresses, **kw)


def test_json_carries_the_per_node_commands_and_the_pool(app: typer.Typer) -> None:
    code, out, _ = run_plan(app, "--nodes", "2", "--layout", "dp-ep", "--gpus", "8", "--node-address", "10.9.0.1",
                            "--shutdown-timeout", "120", "--json")
    assert code == 0
    d = json.loads(out)
    assert (d["layout"], d["nodes"], d["fits"], d["shutdown_timeout_s"]) == ("dp-ep", 2, True, 120)
    assert d["parallelism"] == {"tensor_parallel": 1, "pipeline_parallel": 1, "data_parallel": 16,
                                "expert_parallel": 16}
    nodes = d["per_node"]
    assert [(n["node"], n["address"], n["placeholder"], n["serves_api"]) for n in nodes] == [
        (0, "10.9.0.1", False, True), (1, "NODE1_ADDR", True, False)]
    for n in nodes:
        assert [shlex.split(c) for c in n["commands"]] == n["argv"]
        assert shutdown_timeout_in(n["argv"][0]) == 120 and n["sizing"]["gpus"] == 8
    assert d["gateway"]["pool"] == {"upstreams": ["http://10.9.0.1:8001/v1"], "forward_priority": True}
    assert yaml.safe_load(d["gateway"]["yaml"])["pool"] == d["gateway"]["pool"]
    assert d["gateway"]["unimodel"] == ("unimodel serve --engine upstream --upstream http://10.9.0.1:8001/v1 "
                                        "--pool-forward-priority --model mistral-small-4")
    assert "dp-ep pays" in d["when_it_pays"] and d["memory"]["max_concurrent_sequences"] > 0


def test_the_table_prints_every_command_and_the_pool(app: typer.Typer) -> None:
    code, out, _ = run_plan(app, "--nodes", "2", "--layout", "tp-pp", "--gpu", "h100", "--gpus", "4", "--weights",
                            "bf16")
    _, raw, _ = run_plan(app, "--nodes", "2", "--layout", "tp-pp", "--gpu", "h100", "--gpus", "4", "--weights",
                         "bf16", "--json")
    assert code == 0
    for n in json.loads(raw)["per_node"]:
        for c in n["commands"]:
            assert c in out
    assert "forward_priority: true" in out and "--pool-forward-priority" in out and "tp-pp only when" in out
    assert "Replace NODEk_ADDR" in out


def test_a_plan_that_does_not_fit_exits_1_and_bad_input_2(app: typer.Typer) -> None:
    code, out, _ = run_plan(app, "--nodes", "2", "--layout", "tp-pp", "--gpu", "h100", "--gpus", "1", "--json")
    assert code == 1 and json.loads(out)["gateway"] is None
    for args, message in ((("--layout", "dp-ep"), "needs --nodes 2 or more"),
                          (("--nodes", "2", "--gpu", "cpu"), "do not apply to --gpu cpu"),
                          (("--nodes", "2", "--compare-four"), "--compare-four prices one node"),
                          (("--shutdown-timeout", "3601"), "--shutdown-timeout must be whole seconds")):
        code, _, err = run_plan(app, *args)
        assert code == 2 and message in err and err.startswith("unimodel: error: "), (args, err)


def test_one_node_is_the_one_node_plan(app: typer.Typer) -> None:
    _, plain, _ = run_plan(app, "--json")
    _, one, _ = run_plan(app, "--nodes", "1", "--layout", "replicas", "--json")
    assert plain == one and "launch" in json.loads(plain) and "per_node" not in json.loads(plain)


def test_every_planned_command_drains_for_the_shutdown_timeout(app: typer.Typer) -> None:
    assert shutdown_timeout_in(make_plan("mistral-small-4", "h200", 2).vllm) == 30
    assert shutdown_timeout_in(make_plan("mistral-small-4", "h200", 2, shutdown_timeout=0).vllm) == 0
    _, out, _ = run_plan(app, "--shutdown-timeout", "45", "--json")
    assert "--shutdown-timeout 45 " in json.loads(out)["launch"]["vllm"]
    _, out, _ = run_plan(app, "--gpu", "cpu", "--model", "mistral-small-4", "--shutdown-timeout", "5", "--json")
    assert shutdown_timeout_in(json.loads(out)["launch"]["vllm_argv"]) == 5


def test_shutdown_timeout_in_reads_the_last_one() -> None:
    assert shutdown_timeout_in(["vllm", "serve", "m"]) == 0  # vLLM's default: abort at once
    assert shutdown_timeout_in(["--shutdown-timeout", "30", "--shutdown-timeout=90"]) == 90
    assert shutdown_timeout_in(["--shutdown-timeout", "soon"]) == 0 and shutdown_timeout_in(["--shutdown-timeout"]) == 0
