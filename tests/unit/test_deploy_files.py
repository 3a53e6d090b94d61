"""The deploy examples hold together: YAML that parses, the fields Prometheus, KEDA and Kubernetes need, names
that agree across files, and flags and settings that unimodel has. (That every metric they name exists in a
real scrape is tested against running servers: tests/integration/test_metrics.py.)"""

from __future__ import annotations

import re
from typing import Any

import typer.main
from fastapi.testclient import TestClient

from tests.support import promql
from unimodel.cli import app as cli_app
from unimodel.config import Settings
from unimodel.compose import build_engine
from unimodel.server.app import create_app

DURATION = re.compile(r"^\d+[smhd]$")


def gateway() -> tuple[dict[str, Any], dict[str, Any]]:
    docs = {doc["kind"]: doc for doc in promql.documents("kubernetes/gateway.yaml")}
    assert set(docs) == {"Deployment", "Service"}
    return docs["Deployment"], docs["Service"]


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return c


def scrape_job() -> dict[str, Any]:
    (job,) = promql.documents("prometheus/scrape.yaml")[0]["scrape_configs"]
    return job


def test_every_alert_rule_has_an_expression_a_duration_a_severity_and_a_summary() -> None:
    rules = list(promql.alert_rules())
    names = [r["alert"] for r in rules]
    assert len(rules) >= 10 and len(set(names)) == len(names)
    for rule in rules:
        assert re.fullmatch(r"Unimodel[A-Z][A-Za-z0-9]+", rule["alert"]), rule
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert isinstance(rule["expr"], str) and rule["expr"].strip(), rule["alert"]
        assert DURATION.match(str(rule["for"])), rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]
    covered = " ".join(r["expr"] for r in rules)
    for metric in ("unimodel_requests_total", "gen_ai_server_request_duration_seconds_bucket",
                   "gen_ai_server_time_to_first_token_seconds_bucket", "unimodel_rate_limit_rejections_total",
                   "unimodel_upstream_breaker_state", "unimodel_upstream_up",
                   "unimodel_request_log_spilled_rows_total"):
        assert metric in covered  # error rate, p95 latency, TTFT, rate limits, breaker, upstream down, spilling


def test_the_scaled_object_targets_the_deployment_with_prometheus_triggers() -> None:
    scaled = promql.scaled_object()
    deployment, _ = gateway()
    assert (scaled["apiVersion"], scaled["kind"]) == ("keda.sh/v1alpha1", "ScaledObject")
    spec = scaled["spec"]
    target = spec["scaleTargetRef"]
    assert target["name"] == deployment["metadata"]["name"] and target.get("kind", "Deployment") == "Deployment"
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    assert spec["pollingInterval"] > 0 and spec["cooldownPeriod"] >= 0
    triggers = spec["triggers"]
    assert len({t["name"] for t in triggers}) == len(triggers) >= 2
    for trigger in triggers:
        assert trigger["type"] == "prometheus"
        meta = trigger["metadata"]
        assert set(meta) >= {"serverAddress", "query", "threshold"}
        assert re.match(r"^https?://[^/\s]+", meta["serverAddress"])
        assert isinstance(meta["threshold"], str) and float(meta["threshold"]) > 0  # KEDA wants a string
    queries = " ".join(t["metadata"]["query"] for t in triggers)
    assert "unimodel_requests_in_flight" in queries and "unimodel_engine_queue_depth" in queries


def test_the_queries_select_the_scrape_job() -> None:
    job = scrape_job()
    assert job["metrics_path"] == "/metrics"
    for where, expr in promql.queries().items():
        assert set(re.findall(r'job="([^"]*)"', expr)) == {job["job_name"]}, where


def test_the_deployment_service_and_scrape_config_agree() -> None:
    deployment, service = gateway()
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    c = container(deployment)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= set(ports)
    keep = {tuple(r["source_labels"]): r["regex"] for r in scrape_job()["relabel_configs"] if r.get("action") == "keep"}
    assert keep[("__meta_kubernetes_pod_label_app_kubernetes_io_name",)] == pod_labels["app.kubernetes.io/name"]
    assert keep[("__meta_kubernetes_pod_container_port_name",)] in ports
    assert f"--port={ports['http']}" in c["args"]


def test_the_container_runs_flags_and_settings_unimodel_has() -> None:
    deployment, _ = gateway()
    c = container(deployment)
    assert c["command"] == ["unimodel", "serve"]
    serve = typer.main.get_command(cli_app).commands["serve"]  # type: ignore[attr-defined]
    flags = {opt for param in serve.params for opt in param.opts}
    given = {arg.split("=")[0] for arg in c["args"]}
    assert given - flags == set()
    for env in c["env"]:
        assert env["name"].startswith("UNIMODEL_") and env["name"][9:].lower() in Settings.model_fields
    grace = next(int(a.split("=")[1]) for a in c["args"] if a.startswith("--shutdown-grace-s="))
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > grace


def test_the_probes_and_the_scrape_ask_paths_the_app_serves() -> None:
    deployment, _ = gateway()
    c = container(deployment)
    # as deployed: client keys (the config file's), the metrics key from the secret
    settings = Settings(engine="upstream", upstream="http://127.0.0.1:9/v1", request_log=False,
                        api_keys=["sk-deploy-client"], metrics_key="scrape-key")
    client = TestClient(create_app(settings, build_engine(settings)))  # no lifespan: the engine is not started
    ports = {p["name"] for p in c["ports"]}
    for probe, status in (("readinessProbe", 503), ("livenessProbe", 200)):
        get = c[probe]["httpGet"]
        assert get["port"] in ports and client.get(get["path"]).status_code == status, probe
    # the scrape sends the gateway's metrics key (UNIMODEL_METRICS_KEY), without which /metrics is closed
    assert scrape_job()["authorization"]["credentials_file"]
    assert "UNIMODEL_METRICS_KEY" in {env["name"] for env in c["env"]}
    path = scrape_job()["metrics_path"]
    assert client.get(path, headers={"Authorization": "Bearer scrape-key"}).status_code == 200
    assert client.get(path).status_code == 401
