"""Replica discovery: every ``--upstream`` form read (and the bad ones refused with a ConfigError), and the DNS
forms asked of a real DNS server (dnsmasq on loopback): A, AAAA, SRV, a name that does not exist, records that
change between two lookups, an answer with more replicas than the pool takes. The Kubernetes form is in
``test_discovery_k8s.py``."""

from __future__ import annotations

import logging
from pathlib import Path

import aiohttp
import dns.rdatatype
import pytest

from tests.support.dns_server import DOMAIN, DnsServer, Records
from tests.support.loopback_http import closed_port
from unimodel.engines.pool.discovery import (
    MAX_REPLICAS,
    DiscoveryError,
    DnsDiscovery,
    KubernetesAccess,
    SrvDiscovery,
    StaticDiscovery,
    parse_upstream,
)
from unimodel.engines.pool.discovery_k8s import KubernetesDiscovery
from unimodel.errors import ConfigError

VLLM = f"vllm.{DOMAIN}"
SRV = f"_vllm._tcp.{DOMAIN}"


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as session:
        yield session


def access(tmp_path: Path, namespace: str = "models") -> KubernetesAccess:
    (tmp_path / "namespace").write_text(namespace + "\n")
    return KubernetesAccess(api_url="https://10.96.0.1:6443", token_file=tmp_path / "token",
                            ca_file=tmp_path / "ca.crt", namespace_file=tmp_path / "namespace")


# --- parse_upstream -----------------------------------------------------------------------------------------


async def test_a_url_is_one_static_replica(session: aiohttp.ClientSession) -> None:
    found = parse_upstream("http://10.0.0.5:8000/v1")
    assert isinstance(found, StaticDiscovery) and not found.dynamic
    assert await found.resolve(session) == ["http://10.0.0.5:8000/v1"]
    secret = parse_upstream("https://user:hunter2@gpu.example:8443/v1")
    assert "hunter2" not in secret.spec and "***" in secret.spec
    assert await secret.resolve(session) == ["https://user:hunter2@gpu.example:8443/v1"]  # the URL still works


def test_the_discovery_forms_are_read() -> None:
    dns = parse_upstream("dns://vllm-headless.models.svc.cluster.local:8000/v1")
    assert isinstance(dns, DnsDiscovery) and dns.dynamic
    assert (dns.name, dns.port, dns.path, dns.scheme) == ("vllm-headless.models.svc.cluster.local", 8000, "/v1",
                                                           "http")
    assert parse_upstream("DNS://vllm:8000/v1/?scheme=https").scheme == "https"  # type: ignore[attr-defined]
    srv = parse_upstream("dns+srv://_http._tcp.vllm.models.svc.cluster.local/v1?scheme=https")
    assert isinstance(srv, SrvDiscovery) and srv.dynamic
    assert (srv.name, srv.path, srv.scheme) == ("_http._tcp.vllm.models.svc.cluster.local", "/v1", "https")
    assert parse_upstream("dns://vllm:8000").path == ""  # type: ignore[attr-defined]


def test_the_kubernetes_forms_are_read(tmp_path: Path) -> None:
    named = parse_upstream("k8s://inference/vllm:http/v1", kubernetes=access(tmp_path))
    assert isinstance(named, KubernetesDiscovery) and named.dynamic
    assert (named.namespace, named.service, named.port, named.path, named.scheme) == (
        "inference", "vllm", "http", "/v1", "http")
    own = parse_upstream("k8s://vllm:8000/v1?scheme=https", kubernetes=access(tmp_path))
    assert isinstance(own, KubernetesDiscovery)
    assert (own.namespace, own.service, own.port, own.scheme) == ("models", "vllm", 8000, "https")
    assert str(own.slices_url) == ("https://10.96.0.1:6443/apis/discovery.k8s.io/v1/namespaces/models/"
                                   "endpointslices?labelSelector=kubernetes.io/service-name%3Dvllm")
    assert own.spec == "k8s://vllm:8000/v1?scheme=https"


def test_kubernetes_access_comes_from_the_pods_environment() -> None:
    assert KubernetesAccess.from_environment({}) is None
    assert KubernetesAccess.from_environment({"KUBERNETES_SERVICE_HOST": "10.96.0.1"}) is None
    found = KubernetesAccess.from_environment({"KUBERNETES_SERVICE_HOST": "10.96.0.1",
                                               "KUBERNETES_SERVICE_PORT": "443"})
    assert found is not None and found.api_url == "https://10.96.0.1:443"
    assert str(found.token_file) == "/var/run/secrets/kubernetes.io/serviceaccount/token"
    assert str(found.ca_file) == "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
    six = KubernetesAccess.from_environment({"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443"})
    assert six is not None and six.api_url == "https://[fd00::1]:6443"


@pytest.mark.parametrize(("spec", "says"), [
    ("10.0.0.5:8000", "not a replica URL"),
    ("ftp://10.0.0.5/v1", "not a replica URL"),
    ("http://:8000/v1", "host"),
    ("http://gpu.example:8000/v1#x", "HOST:PORT"),
    ("dns://user:pw@vllm:8000/v1", "no user or password"),
    ("http://[fd00::1/v1", "not a URL"),
    ("dns://vllm/v1", "needs a port"),
    ("dns://vllm:0/v1", "from 1 to 65535"),
    ("dns://vllm:65536/v1", "from 1 to 65535"),
    ("dns://vllm:http/v1", "from 1 to 65535"),
    ("dns://bad name:8000/v1", "not a DNS name"),
    ("dns://" + "a" * 64 + ".test:8000/v1", "not a DNS name"),
    ("dns://vllm:8000/v 1", "path"),
    ("dns://vllm:8000/v1#x", "fragment"),
    ("dns://vllm:8000/v1?scheme=ftp", "http or https"),
    ("dns://vllm:8000/v1?timeout=3", "one option"),
    ("dns://vllm:8000/v1?scheme=http&scheme=https", "one option"),
    ("dns://vllm:8000/v1?scheme", "NAME=VALUE"),
    ("dns+srv://_vllm._tcp.pool.test:8000/v1", "no :PORT"),
    ("dns+srv://vllm.pool.test/v1", "_SERVICE._tcp.NAME"),
    ("dns+srv://_vllm._udp.pool.test/v1", "_SERVICE._tcp.NAME"),
    ("k8s://vllm/v1", "the forms are"),
    ("k8s://models/vllm/v1", "the forms are"),
    ("k8s://models/Bad_Svc:8000/v1", "not a Service name"),
    ("k8s://Bad_NS/vllm:8000/v1", "not a namespace name"),
    ("k8s://models/vllm:a-port-name-too-long/v1", "neither a port number nor a port name"),
    ("k8s://models/vllm:99999/v1", "from 1 to 65535"),
    ("k8s://models/vllm:8000/v1?scheme=gopher", "http or https"),
    ("dns://vllm:8000/" + "v" * 3000, "longer than"),
])
def test_a_spec_it_cannot_read_is_a_config_error(spec: str, says: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=says):
        parse_upstream(spec, kubernetes=access(tmp_path))


def test_kubernetes_needs_a_pod(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="KUBERNETES_SERVICE_HOST"):
        parse_upstream("k8s://models/vllm:8000/v1")
    missing = KubernetesAccess(api_url="https://10.96.0.1:443", namespace_file=tmp_path / "nope")
    with pytest.raises(ConfigError, match="namespace file"):
        parse_upstream("k8s://vllm:8000/v1", kubernetes=missing)
    parse_upstream("k8s://models/vllm:8000/v1", kubernetes=missing)  # a namespace named needs no file


def test_a_config_error_masks_credentials() -> None:
    with pytest.raises(ConfigError) as raised:
        parse_upstream("dns://user:hunter2@vllm:8000/v1")
    assert "hunter2" not in str(raised.value)


# --- DNS against a real DNS server ----------------------------------------------------------------------------


async def test_a_and_aaaa_records_are_the_replicas(session: aiohttp.ClientSession) -> None:
    records = Records(hosts={VLLM: ["10.0.0.6", "10.0.0.5", "fd00::5"], f"six.{DOMAIN}": ["fd00::7"]})
    with DnsServer(records) as server:
        found = parse_upstream(f"dns://{VLLM}:8000/v1", nameservers=server.nameservers)
        assert await found.resolve(session) == ["http://10.0.0.5:8000/v1", "http://10.0.0.6:8000/v1",
                                                "http://[fd00::5]:8000/v1"]
        six = parse_upstream(f"dns://six.{DOMAIN}:9000/v1?scheme=https", nameservers=server.nameservers)
        assert await six.resolve(session) == ["https://[fd00::7]:9000/v1"]


async def test_a_name_that_does_not_exist_is_a_discovery_error(session: aiohttp.ClientSession) -> None:
    with DnsServer(Records(hosts={VLLM: ["10.0.0.5"]})) as server:
        for spec in (f"dns://nope.{DOMAIN}:8000/v1", f"dns+srv://_nope._tcp.{DOMAIN}/v1"):
            with pytest.raises(DiscoveryError, match="no such name"):
                await parse_upstream(spec, nameservers=server.nameservers).resolve(session)


async def test_replicas_come_and_go_between_lookups(session: aiohttp.ClientSession) -> None:
    with DnsServer(Records(hosts={VLLM: ["10.0.0.5", "10.0.0.6"]})) as server:
        found = parse_upstream(f"dns://{VLLM}:8000/v1", nameservers=server.nameservers)
        assert await found.resolve(session) == ["http://10.0.0.5:8000/v1", "http://10.0.0.6:8000/v1"]
        server.replace(Records(hosts={VLLM: ["10.0.0.6", "10.0.0.7", "10.0.0.8"]}))
        assert await found.resolve(session) == ["http://10.0.0.6:8000/v1", "http://10.0.0.7:8000/v1",
                                                "http://10.0.0.8:8000/v1"]


async def test_srv_records_are_the_replicas(session: aiohttp.ClientSession) -> None:
    records = Records(
        hosts={f"a.{DOMAIN}": ["10.0.0.5"], f"b.{DOMAIN}": ["10.0.0.6", "fd00::6"]},
        srv={SRV: [(f"a.{DOMAIN}", 8000), (f"b.{DOMAIN}", 8001), (f"gone.{DOMAIN}", 8002)]})
    with DnsServer(records) as server:
        found = parse_upstream(f"dns+srv://{SRV}/v1", nameservers=server.nameservers)
        # each target's addresses (the target without any is no replica), each with its own port
        assert await found.resolve(session) == ["http://10.0.0.5:8000/v1", "http://10.0.0.6:8001/v1",
                                                "http://[fd00::6]:8001/v1"]
        tls = parse_upstream(f"dns+srv://{SRV}/v1?scheme=https", nameservers=server.nameservers)
        # over https the names stay, for the certificates
        assert await tls.resolve(session) == [f"https://a.{DOMAIN}:8000/v1", f"https://b.{DOMAIN}:8001/v1",
                                              f"https://gone.{DOMAIN}:8002/v1"]
        server.replace(Records(hosts={f"b.{DOMAIN}": ["10.0.0.6"], f"c.{DOMAIN}": ["10.0.0.9"]},
                               srv={SRV: [(f"b.{DOMAIN}", 8001), (f"c.{DOMAIN}", 8000)]}))
        assert await found.resolve(session) == ["http://10.0.0.6:8001/v1", "http://10.0.0.9:8000/v1"]


async def test_srv_targets_missing_from_the_answer_are_asked_for(session: aiohttp.ClientSession) -> None:
    """An SRV target that is an alias comes without addresses in the answer's additional section: they are then
    asked for (A and AAAA, following the CNAME)."""
    records = Records(hosts={f"a.{DOMAIN}": ["10.0.0.5", "fd00::5"]}, cnames={f"alias.{DOMAIN}": f"a.{DOMAIN}"},
                      srv={SRV: [(f"alias.{DOMAIN}", 8000)]})
    with DnsServer(records) as server:
        found = parse_upstream(f"dns+srv://{SRV}/v1", nameservers=server.nameservers)
        assert isinstance(found, SrvDiscovery)
        answer = await found.query(SRV, dns.rdatatype.SRV, missing_ok=False)
        assert answer is not None and not answer.response.additional  # nothing carried along
        assert await found.resolve(session) == ["http://10.0.0.5:8000/v1", "http://[fd00::5]:8000/v1"]


async def test_more_replicas_than_the_pool_takes_are_cut(session: aiohttp.ClientSession,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    addresses = [f"10.0.{i // 250}.{i % 250 + 1}" for i in range(MAX_REPLICAS + 44)]
    with DnsServer(Records(hosts={VLLM: addresses})) as server:  # too long for UDP: asked again over TCP
        found = parse_upstream(f"dns://{VLLM}:8000/v1", nameservers=server.nameservers)
        with caplog.at_level(logging.WARNING, logger="unimodel.pool"):
            urls = await found.resolve(session)
            assert await found.resolve(session) == urls
    assert len(urls) == MAX_REPLICAS and urls == sorted(urls)
    assert [r.getMessage() for r in caplog.records] == [
        f"dns://{VLLM}:8000/v1 lists {MAX_REPLICAS + 44} replicas; the pool takes the first {MAX_REPLICAS}"]


async def test_a_dns_server_that_does_not_answer_is_a_discovery_error(session: aiohttp.ClientSession) -> None:
    port = int(closed_port().rsplit(":", 1)[1].split("/")[0])
    found = DnsDiscovery("dns://vllm:8000/v1", VLLM, 8000, "/v1", "http", nameservers=[("127.0.0.1", port)],
                         timeout_s=1.0)
    with pytest.raises(DiscoveryError, match="vllm"):
        await found.resolve(session)


async def test_more_srv_targets_than_the_pool_takes_are_cut(session: aiohttp.ClientSession,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    count = MAX_REPLICAS + 20
    records = Records(hosts={f"r{i:03d}.{DOMAIN}": [f"10.1.{i // 250}.{i % 250 + 1}"] for i in range(count)},
                      srv={SRV: [(f"r{i:03d}.{DOMAIN}", 8000) for i in range(count)]})
    with DnsServer(records) as server:
        found = parse_upstream(f"dns+srv://{SRV}/v1", nameservers=server.nameservers)
        with caplog.at_level(logging.WARNING, logger="unimodel.pool"):
            urls = await found.resolve(session)
    assert len(urls) == MAX_REPLICAS and "http://10.1.0.1:8000/v1" in urls  # r000, the first target by name
    assert [r.getMessage() for r in caplog.records] == [
        f"dns+srv://{SRV}/v1 lists {count} SRV targets; the pool takes the first {MAX_REPLICAS}"]
