"""``k8s://`` discovery against a fake Kubernetes API server: aiohttp on 127.0.0.1 over TLS with a certificate
from a CA made in the test (trustme), checking the bearer token on every request as the real one does.

Covered: EndpointSlices with ready, not-ready, terminating and condition-less endpoints, IPv4 and IPv6 slices,
a named port whose number differs between slices, a numeric port, a slice without ports; records that change
between two lookups; a token that rotates; the legacy Endpoints API when EndpointSlices answer 404; a 403 that
names RBAC, a 401, a server certificate the CA did not sign, an answer over the size cap (with and without a
Content-Length), one that is not JSON, one that never comes."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import aiohttp
import orjson
import pytest
import trustme
from aiohttp import web

from unimodel.engines.pool.discovery import DiscoveryError, KubernetesAccess, parse_upstream
from unimodel.engines.pool.discovery_k8s import KubernetesDiscovery

TOKEN = "eyJhbGciOiJSUzI1NiJ9.service-account-token-one"
NAMESPACE = "models"
SLICES_PATH = f"/apis/discovery.k8s.io/v1/namespaces/{NAMESPACE}/endpointslices"
ENDPOINTS_PATH = f"/api/v1/namespaces/{NAMESPACE}/endpoints/vllm"


def endpoint(address: str, *, ready: Optional[bool] = True, terminating: Optional[bool] = None,
             more: tuple[str, ...] = ()) -> dict[str, Any]:
    conditions: dict[str, Any] = {}
    if ready is not None:
        conditions["ready"] = ready
    if terminating is not None:
        conditions["terminating"] = terminating
    return {"addresses": [address, *more], "conditions": conditions, "targetRef": {"kind": "Pod"}}


def endpoint_slice(address_type: str, ports: Optional[list[dict[str, Any]]],
                   endpoints: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": address_type,
            "metadata": {"name": "vllm-abc", "labels": {"kubernetes.io/service-name": "vllm"}},
            "ports": ports, "endpoints": endpoints}


def slice_list(*items: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "EndpointSliceList", "apiVersion": "discovery.k8s.io/v1", "metadata": {}, "items": list(items)}


HTTP_8000 = [{"name": "http", "port": 8000, "protocol": "TCP"}, {"name": "metrics", "port": 9000, "protocol": "TCP"}]


@dataclass
class FakeApi:
    """What the fake API server answers: a JSON document (or raw bytes, or a status) per path, the token it
    accepts, and what it was asked."""

    token: str = TOKEN
    answers: dict[str, Any] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)
    chunked: bool = False
    stall: Optional[asyncio.Event] = None
    seen: list[tuple[str, str, Optional[str]]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.path, request.query_string, request.headers.get("Authorization")))
        if self.stall is not None:
            await asyncio.wait_for(self.stall.wait(), 30)  # bounded: the client gives up long before
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response({"kind": "Status", "code": 401, "reason": "Unauthorized"}, status=401)
        status = self.statuses.get(request.path)
        if status is not None:
            return web.json_response({"kind": "Status", "code": status, "message": "no"}, status=status)
        answer = self.answers.get(request.path)
        if answer is None:
            return web.json_response({"kind": "Status", "code": 404, "reason": "NotFound"}, status=404)
        body = answer if isinstance(answer, bytes) else orjson.dumps(answer)
        if not self.chunked:
            return web.Response(body=body, content_type="application/json")
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(body), 1 << 20):
            await response.write(body[start:start + (1 << 20)])
        await response.write_eof()
        return response


@dataclass
class Cluster:
    api: FakeApi
    access: KubernetesAccess
    ca: trustme.CA


@asynccontextmanager
async def fake_cluster(tmp_path: Path, api: FakeApi, *, signed_by: Optional[trustme.CA] = None
                       ) -> AsyncIterator[Cluster]:
    ca = trustme.CA()
    server_ca = signed_by or ca
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ca.issue_cert("127.0.0.1").configure_cert(context)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.crt"))
    (tmp_path / "token").write_text(api.token + "\n")
    (tmp_path / "namespace").write_text(NAMESPACE)
    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", api.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = runner.addresses[0][1]
    access = KubernetesAccess(api_url=f"https://127.0.0.1:{port}", token_file=tmp_path / "token",
                              ca_file=tmp_path / "ca.crt", namespace_file=tmp_path / "namespace")
    try:
        yield Cluster(api, access, ca)
    finally:
        await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def discovery(cluster: Cluster, spec: str = "k8s://vllm:http/v1") -> KubernetesDiscovery:
    found = parse_upstream(spec, kubernetes=cluster.access)
    assert isinstance(found, KubernetesDiscovery)
    return found


async def test_ready_endpoints_of_the_services_slices_are_the_replicas(tmp_path: Path,
                                                                       session: aiohttp.ClientSession) -> None:
    api = FakeApi(answers={SLICES_PATH: slice_list(
        endpoint_slice("IPv4", HTTP_8000, [
            endpoint("10.0.0.5"),
            endpoint("10.0.0.6", ready=False),  # still starting
            endpoint("10.0.0.7", ready=False, terminating=True),  # going away
            endpoint("10.0.0.11", ready=True, terminating=True),  # publishNotReadyAddresses: still going away
            endpoint("10.0.0.8", ready=None),  # no condition: ready, as the API says
            endpoint("10.0.0.9", more=("10.0.0.10",)),  # fungible addresses: the first
            endpoint("not-an-address"),
        ]),
        # the same port name, another number on these pods
        endpoint_slice("IPv6", [{"name": "http", "port": 8001}], [endpoint("fd00::9"), endpoint("10.0.0.99")]),
        endpoint_slice("IPv4", [{"name": "grpc", "port": 7000}], [endpoint("10.0.1.1")]),
    )})
    async with fake_cluster(tmp_path, api) as cluster:
        named = discovery(cluster)
        assert await named.resolve(session) == ["http://10.0.0.5:8000/v1", "http://10.0.0.8:8000/v1",
                                                "http://10.0.0.9:8000/v1", "http://[fd00::9]:8001/v1"]
        path, query, auth = api.seen[-1]
        assert (path, query, auth) == (SLICES_PATH, "labelSelector=kubernetes.io/service-name%3Dvllm",
                                       f"Bearer {TOKEN}")
        numbered = discovery(cluster, "k8s://models/vllm:8000/v1?scheme=https")
        assert await numbered.resolve(session) == ["https://10.0.0.5:8000/v1", "https://10.0.0.8:8000/v1",
                                                   "https://10.0.0.9:8000/v1"]


async def test_a_slice_without_ports_takes_a_numbered_port(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    api = FakeApi(answers={SLICES_PATH: slice_list(endpoint_slice("IPv4", None, [endpoint("10.0.0.5")]))})
    async with fake_cluster(tmp_path, api) as cluster:
        assert await discovery(cluster, "k8s://vllm:8000/v1").resolve(session) == ["http://10.0.0.5:8000/v1"]
        with pytest.raises(DiscoveryError, match="no TCP port http"):
            await discovery(cluster).resolve(session)


async def test_a_port_the_service_does_not_have_is_named(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    api = FakeApi(answers={SLICES_PATH: slice_list(endpoint_slice("IPv4", HTTP_8000, [endpoint("10.0.0.5")]))})
    async with fake_cluster(tmp_path, api) as cluster:
        with pytest.raises(DiscoveryError, match=r"no TCP port api .*http:8000, metrics:9000"):
            await discovery(cluster, "k8s://vllm:api/v1").resolve(session)


async def test_replicas_come_and_go_and_the_token_rotates(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    api = FakeApi(answers={SLICES_PATH: slice_list(endpoint_slice("IPv4", HTTP_8000, [
        endpoint("10.0.0.5"), endpoint("10.0.0.6", ready=False)]))})
    async with fake_cluster(tmp_path, api) as cluster:
        found = discovery(cluster)
        assert await found.resolve(session) == ["http://10.0.0.5:8000/v1"]
        api.answers[SLICES_PATH] = slice_list(endpoint_slice("IPv4", HTTP_8000, [
            endpoint("10.0.0.5", ready=False, terminating=True), endpoint("10.0.0.6"), endpoint("10.0.0.7")]))
        api.token = "eyJhbGciOiJSUzI1NiJ9.service-account-token-two"  # the kubelet rotated the projected token
        cluster.access.token_file.write_text(api.token)
        assert await found.resolve(session) == ["http://10.0.0.6:8000/v1", "http://10.0.0.7:8000/v1"]
        assert api.seen[-1][2] == f"Bearer {api.token}"
        api.answers[SLICES_PATH] = slice_list()  # scaled to zero
        assert await found.resolve(session) == []


async def test_without_endpointslices_the_legacy_endpoints_are_read(tmp_path: Path,
                                                                     session: aiohttp.ClientSession) -> None:
    api = FakeApi(answers={ENDPOINTS_PATH: {"kind": "Endpoints", "subsets": [
        {"addresses": [{"ip": "10.0.0.5"}, {"ip": "10.0.0.6"}], "notReadyAddresses": [{"ip": "10.0.0.7"}],
         "ports": [{"name": "http", "port": 8000, "protocol": "TCP"}]},
        {"addresses": [{"ip": "fd00::8"}], "ports": [{"name": "http", "port": 8001}]}]}})
    async with fake_cluster(tmp_path, api) as cluster:  # SLICES_PATH answers 404: no discovery.k8s.io/v1
        assert await discovery(cluster).resolve(session) == ["http://10.0.0.5:8000/v1", "http://10.0.0.6:8000/v1",
                                                             "http://[fd00::8]:8001/v1"]
        assert [path for path, _, _ in api.seen] == [SLICES_PATH, ENDPOINTS_PATH]
        del api.answers[ENDPOINTS_PATH]
        with pytest.raises(DiscoveryError, match="no Service models/vllm"):
            await discovery(cluster).resolve(session)


async def test_forbidden_names_rbac_and_the_token_is_never_told(tmp_path: Path,
                                                                 session: aiohttp.ClientSession) -> None:
    api = FakeApi(statuses={SLICES_PATH: 403})
    async with fake_cluster(tmp_path, api) as cluster:
        with pytest.raises(DiscoveryError, match="RBAC") as raised:
            await discovery(cluster).resolve(session)
        assert "endpointslices" in str(raised.value) and "get, list and watch" in str(raised.value)
        assert TOKEN not in str(raised.value)
        api.token = "another"  # the API no longer takes ours
        with pytest.raises(DiscoveryError, match="refused the service account's token") as raised:
            await discovery(cluster).resolve(session)
        assert TOKEN not in str(raised.value)
        api.statuses[SLICES_PATH] = 500
        api.token = TOKEN
        with pytest.raises(DiscoveryError, match="answered 500"):
            await discovery(cluster).resolve(session)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_an_oversized_answer_is_refused(tmp_path: Path, session: aiohttp.ClientSession, chunked: bool) -> None:
    endpoints = [endpoint(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}") for i in range(120_000)]
    api = FakeApi(answers={SLICES_PATH: slice_list(endpoint_slice("IPv4", HTTP_8000, endpoints))}, chunked=chunked)
    assert len(orjson.dumps(api.answers[SLICES_PATH])) > 8 * 1024 * 1024
    async with fake_cluster(tmp_path, api) as cluster:
        with pytest.raises(DiscoveryError, match="over 8388608 bytes"):
            await discovery(cluster).resolve(session)


async def test_an_answer_that_is_not_json_is_refused(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    api = FakeApi(answers={SLICES_PATH: b"<html>proxy error</html>"})
    async with fake_cluster(tmp_path, api) as cluster:
        with pytest.raises(DiscoveryError, match="not JSON"):
            await discovery(cluster).resolve(session)
        api.answers[SLICES_PATH] = {"items": [{"endpoints": "nonsense", "ports": 3}, 7]}  # odd shapes: nothing
        assert await discovery(cluster, "k8s://vllm:8000/v1").resolve(session) == []


async def test_a_server_the_ca_did_not_sign_is_refused(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    api = FakeApi(answers={SLICES_PATH: slice_list()})
    async with fake_cluster(tmp_path, api, signed_by=trustme.CA()) as cluster:
        with pytest.raises(DiscoveryError, match="Certificate"):
            await discovery(cluster).resolve(session)
    assert api.seen == []  # the token never went out


async def test_an_api_that_does_not_answer_is_a_discovery_error(tmp_path: Path,
                                                               session: aiohttp.ClientSession) -> None:
    api = FakeApi(answers={SLICES_PATH: slice_list()}, stall=asyncio.Event())
    async with fake_cluster(tmp_path, api) as cluster:
        found = discovery(cluster)
        found.timeout_s = 0.5
        try:
            with pytest.raises(DiscoveryError, match="did not answer within 0.5s"):
                await found.resolve(session)
        finally:
            api.stall.set()  # type: ignore[union-attr]


async def test_a_missing_token_is_a_discovery_error(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    api = FakeApi(answers={SLICES_PATH: slice_list()})
    async with fake_cluster(tmp_path, api) as cluster:
        cluster.access.token_file.unlink()
        with pytest.raises(DiscoveryError, match="cannot read the service account token"):
            await discovery(cluster).resolve(session)
        cluster.access.token_file.write_text("  \n")
        with pytest.raises(DiscoveryError, match="does not hold a token"):
            await discovery(cluster).resolve(session)
    assert api.seen == []
