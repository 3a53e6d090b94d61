"""The SSRF guard: every non-public address class refused (as a literal in any spelling and via DNS), redirects
re-checked, the connection pinned to the checked address (rebinding), and size and deadline caps.

Network-free except for threaded stdlib servers on 127.0.0.1 (an HTTP server, and a listener that records the
TLS server name a client asks for), reached only through fetchers built with an explicit test-only
``allow_address`` for 127.0.0.1 (the default never allows loopback). A refusal before any connection is told by
its message: a fetch that got as far as connecting fails with "fetching the image failed" instead.
"""

from __future__ import annotations

import asyncio
import io
import socket
import ssl
import threading
import time
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import IPv4Address, ip_address
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from unimodel.errors import InvalidRequestError
from unimodel.images.decode import ImageLimits
from unimodel.images.fetch import SafeImageFetcher, is_public_address, parse_ip_host

WHERE = "messages[0].content[1]"
LOOPBACK = IPv4Address("127.0.0.1")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

BLOCKED = [
    # IPv4: loopback, private, link-local/metadata, CGNAT, "this network", multicast, reserved, broadcast,
    # IETF/documentation/benchmarking ranges, 6to4 relay, and Azure's public-looking host endpoint
    "127.0.0.1", "127.255.255.254", "10.0.0.1", "172.16.0.1", "172.31.255.255", "192.168.1.1",
    "169.254.169.254", "169.254.0.1", "100.64.0.1", "100.100.100.200", "0.0.0.0", "0.1.2.3",
    "224.0.0.1", "239.255.255.250", "240.0.0.1", "255.255.255.255", "192.0.0.192", "192.0.2.1",
    "198.18.0.1", "198.51.100.7", "203.0.113.9", "192.88.99.1", "168.63.129.16",
    # IPv6: loopback, unspecified, IPv4-mapped / -compatible / -translated private v4, NAT64 and 6to4 embedding
    # private v4, local-use NAT64, Teredo, ULA (incl. AWS metadata), link-local, site-local, multicast,
    # documentation, discard
    "::1", "::", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254", "::127.0.0.1",
    "::ffff:0:7f00:1", "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe", "64:ff9b:1::808:808", "2002:7f00:1::1",
    "2002:a9fe:a9fe::1", "2002:a00:1::", "2001:0:4136:e378:8000:63bf:3fff:fdd2", "fc00::1", "fd00:ec2::254",
    "fe80::1", "fec0::1", "ff02::1", "ff0e::1", "2001:db8::1", "100::1",
]
PUBLIC = ["93.184.216.34", "8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808",
          "2002:808:808::1", "2a00:1450:4001:80b::200e"]

LITERAL_URLS = [
    "http://127.0.0.1/", "http://127.0.0.1./", "http://2130706433/", "http://0177.1/", "http://0x7f.0.0.1/",
    "http://0x7f000001/", "http://017700000001/", "http://127.1/", "http://127.0.1/", "http://0x7f.1/",
    "http://0/", "http://0.0.0.0:8080/", "http://10.1/", "http://169.254.169.254/latest/meta-data/",
    "http://2852039166/", "http://0xa9.0xfe.0xa9.0xfe/", "http://[::1]/", "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:7f00:1]/", "http://[0:0:0:0:0:ffff:127.0.0.1]/", "http://[fd00:ec2::254]/",
    "http://[64:ff9b::a9fe:a9fe]/", "http://[::]/", "http://[2002:a9fe:a9fe::1]/", "HTTP://0X7F.0.0.1:80/",
    "http://0177.0.0.1/", "http://0300.0250.0.1/",
]
#: refused for being malformed before any address is judged
MALFORMED_URLS = {
    "https://[fe80::1%25eth0]/": "no valid host", "http://localhost.0x7f.0.0.1/": "not a valid address",
    "http://images example/": "no valid host", "http://127%2E0%2E0%2E1/": "no valid host",
    "http://images.example../": "no valid host", "http://[::1/": "not a valid URL",
    "http://images.example:99999/": "not a valid URL",
}


class NeverResolve:
    async def __call__(self, host: str) -> list[str]:
        raise AssertionError(f"{host} must not be resolved")


def resolver_for(table: dict[str, Sequence[str]]) -> Any:
    async def resolve(host: str) -> list[str]:
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "no such host")
        return list(table[host])
    return resolve


async def refused(fetcher: SafeImageFetcher, url: str, match: str = "") -> InvalidRequestError:
    with pytest.raises(InvalidRequestError, match=match) as err:
        await fetcher.fetch(url, WHERE)
    assert err.value.status_code == 400 and err.value.param == WHERE and WHERE in err.value.message
    return err.value


# ---- the address check -----------------------------------------------------------------------------------


@pytest.mark.parametrize("address", BLOCKED)
def test_non_public_addresses_are_refused(address: str) -> None:
    assert not is_public_address(ip_address(address))


def test_scoped_link_local_is_refused() -> None:
    assert not is_public_address(ip_address("fe80::1%eth0"))


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address: str) -> None:
    assert is_public_address(ip_address(address))


@pytest.mark.parametrize("host,expected", [
    ("2130706433", "127.0.0.1"), ("0177.0.0.1", "127.0.0.1"), ("0x7f.1", "127.0.0.1"), ("127.1", "127.0.0.1"),
    ("0x7F000001", "127.0.0.1"), ("127.0.0.1.", "127.0.0.1"), ("0", "0.0.0.0"), ("0x", "0.0.0.0"),
    ("10.0x10.0377.1", "10.16.255.1"), ("93.184.216.34", "93.184.216.34"), ("::1", "::1"),
    ("example.com", None), ("0x7f.example", None), ("1.2.3.example", None), ("xn--bcher-kva.example", None),
])
def test_ip_hosts_are_read_like_browsers_and_inet_aton(host: str, expected: str | None) -> None:
    got = parse_ip_host(host)
    assert (str(got) if got is not None else None) == expected


@pytest.mark.parametrize("host", ["1.2.3.4.5", "0x1ffffffff", "4294967296", "09.0.0.1", "256.0.0.1", "1.256.0.1",
                                  "1.2.65536", "1..2.3", "0xg.1", "1.2.3.0x"])
def test_invalid_numeric_hosts_are_errors(host: str) -> None:
    if host == "1.2.3.0x":  # "0x" alone is 0 (WHATWG), so this one is valid
        assert parse_ip_host(host) == IPv4Address("1.2.3.0")
        return
    with pytest.raises(ValueError):
        parse_ip_host(host)


@st.composite
def ipv4_spellings(draw: st.DrawFn) -> str:
    value = draw(st.integers(0, 2**32 - 1))
    n = draw(st.integers(1, 4))
    octets = list(value.to_bytes(4, "big"))
    numbers = octets[: n - 1] + [int.from_bytes(bytes(octets[n - 1:]), "big")]
    spelled = []
    for number in numbers:
        base = draw(st.sampled_from(["dec", "oct", "hex", "HEX"]))
        spelled.append({"dec": str(number), "oct": "0" + format(number, "o"), "hex": "0x" + format(number, "x"),
                        "HEX": "0X" + format(number, "X")}[base])
    return ".".join(spelled)


@given(ipv4_spellings())
def test_every_ipv4_spelling_reads_as_inet_aton_reads_it(host: str) -> None:
    assert parse_ip_host(host) == IPv4Address(socket.inet_aton(host))


# ---- refusals before any connection ---------------------------------------------------------------------


@pytest.mark.parametrize("url", LITERAL_URLS)
async def test_literal_non_public_hosts_are_refused_without_resolving(url: str) -> None:
    await refused(SafeImageFetcher(resolver=NeverResolve()), url, "non-public")


@pytest.mark.parametrize("url,match", MALFORMED_URLS.items())
async def test_malformed_hosts_are_refused(url: str, match: str) -> None:
    await refused(SafeImageFetcher(resolver=NeverResolve()), url, match)


@pytest.mark.parametrize("address", BLOCKED)
async def test_host_names_resolving_to_non_public_addresses_are_refused(address: str) -> None:
    fetcher = SafeImageFetcher(resolver=resolver_for({"evil.example": [address]}))
    err = await refused(fetcher, "http://evil.example/cat.png", "non-public")
    assert "evil.example" in err.message


async def test_one_non_public_answer_among_public_ones_is_enough_to_refuse() -> None:
    fetcher = SafeImageFetcher(resolver=resolver_for({"mixed.example": ["93.184.216.34", "10.0.0.1"]}))
    await refused(fetcher, "http://mixed.example/cat.png", "non-public")


@pytest.mark.parametrize("url,match", [
    ("ftp://images.example/cat.png", "http"), ("file:///etc/passwd", "http"), ("gopher://x/", "http"),
    ("data:image/png;base64,AAAA", "http"), ("http://user:pw@images.example/", "credentials"),
    ("http:///cat.png", "host"), ("http://1.2.3.4.5/", "not a valid"), ("http://0x1ffffffff/", "not a valid"),
    ("http://nowhere.example/", "cannot resolve"), ("http://empty.example/", "no address"),
    ("http://garbage.example/", "invalid address"),
])
async def test_bad_urls_are_refused(url: str, match: str) -> None:
    fetcher = SafeImageFetcher(resolver=resolver_for({"empty.example": [], "garbage.example": ["not-an-ip"]}))
    await refused(fetcher, url, match)


def test_https_verifies_certificates_and_host_names() -> None:
    import ssl

    context = SafeImageFetcher()._ssl()
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


async def test_a_resolver_that_never_answers_is_cut_by_the_deadline() -> None:
    async def hang(host: str) -> list[str]:
        await asyncio.sleep(60)
        return []

    fetcher = SafeImageFetcher(resolver=hang, timeout_s=0.2)
    started = time.monotonic()
    await refused(fetcher, "http://slow-dns.example/", "longer than 0.2 s")
    assert time.monotonic() - started < 2


# ---- against a real loopback server ---------------------------------------------------------------------


def png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color="blue").save(buf, format="PNG")
    return buf.getvalue()


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        return None

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              length: bool = True) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        self.server.hosts.append(self.headers.get("Host", ""))
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        path = parts.path
        if path == "/ok.png":
            self._send(200, png_bytes(), {"Content-Type": "text/plain"})  # the bytes decide, not the label
        elif path == "/redirect":
            self._send(int(query.get("status", "302")), headers={"Location": query["to"]})
        elif path == "/no-location":
            self._send(302)
        elif path == "/loop":
            self._send(302, headers={"Location": "/loop"})
        elif path == "/missing":
            self._send(404, b"nope")
        elif path == "/text":
            self._send(200, b"<html>hello, this is not an image</html>")
        elif path == "/gzip":
            self._send(200, PNG_SIGNATURE + b"\0" * 10, {"Content-Encoding": "gzip"})
        elif path == "/big":
            self._send(200, PNG_SIGNATURE + b"\0" * 5000)
        elif path == "/big-unsized":  # HTTP/1.0, no Content-Length: the body ends when the connection closes
            self._send(200, PNG_SIGNATURE + b"\0" * 5000, length=False)
        elif path == "/drip":
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(PNG_SIGNATURE + b"\0" * 8)
            try:
                for _ in range(100):  # at most 5 s, whatever the client does
                    if self.server.stop.wait(0.05):
                        return
                    self.wfile.write(b"\0")
                    self.wfile.flush()
            except OSError:
                return
        else:
            self._send(404)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    hosts: list[str]
    stop: threading.Event


@pytest.fixture(scope="module")
def server() -> Iterator[_Server]:
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.hosts, srv.stop = [], threading.Event()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.stop.set()
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=5)


def loopback_fetcher(**kwargs: Any) -> SafeImageFetcher:
    """A fetcher that may reach 127.0.0.1: the explicit test-only allowance."""
    kwargs.setdefault("resolver", resolver_for({"images.example": ["127.0.0.1"], "other.example": ["127.0.0.1"],
                                                "metadata.example": ["169.254.169.254"]}))
    return SafeImageFetcher(allow_address=lambda ip: ip == LOOPBACK, **kwargs)


def test_the_default_fetcher_refuses_the_loopback_server(server: _Server) -> None:
    port = server.server_address[1]
    asyncio.run(refused(SafeImageFetcher(), f"http://127.0.0.1:{port}/ok.png", "non-public"))


async def test_fetches_an_image_through_the_pinned_address(server: _Server) -> None:
    port = server.server_address[1]
    # images.example exists only in the scripted resolver: reaching the server means the checked address was used
    mime, data = await loopback_fetcher().fetch(f"http://images.example:{port}/ok.png", WHERE)
    assert (mime, data) == ("image/png", png_bytes())
    assert server.hosts[-1] == f"images.example:{port}"  # the Host header keeps the name


@pytest.mark.parametrize("spelling", ["2130706433", "0x7f.1", "0177.0.0.1", "127.1", "127.0.0.1."])
async def test_odd_literal_spellings_are_requested_as_the_canonical_address(server: _Server, spelling: str) -> None:
    port = server.server_address[1]
    mime, _ = await loopback_fetcher(resolver=NeverResolve()).fetch(f"http://{spelling}:{port}/ok.png", WHERE)
    assert mime == "image/png" and server.hosts[-1] == f"127.0.0.1:{port}"


class _TlsListener:
    """Accepts TLS handshakes on 127.0.0.1 and records the server name each client asks for (no certificate:
    every handshake then fails, after the name was read)."""

    def __init__(self) -> None:
        self.names: list[str | None] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.sni_callback = self._record
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _record(self, _sock: ssl.SSLObject, name: str | None, _context: ssl.SSLContext) -> None:
        self.names.append(name)

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                try:
                    self.context.wrap_socket(conn, server_side=True)
                except (OSError, ssl.SSLError):
                    pass


async def test_tls_keeps_the_host_name_while_connecting_to_the_checked_address() -> None:
    listener = _TlsListener()
    try:
        await refused(loopback_fetcher(), f"https://images.example:{listener.port}/cat.png",
                      "fetching the image failed")
        assert listener.names == ["images.example"]  # SNI (and so the certificate check) names the host
    finally:
        listener.sock.close()
        listener.thread.join(timeout=5)


async def test_a_rebinding_resolver_cannot_move_the_connection(server: _Server) -> None:
    port = server.server_address[1]
    answers: list[str] = []

    async def rebinding(host: str) -> list[str]:
        answers.append("127.0.0.1" if not answers else "10.0.0.1")  # checked first, private afterwards
        return [answers[-1]]

    mime, _ = await loopback_fetcher(resolver=rebinding).fetch(f"http://images.example:{port}/ok.png", WHERE)
    assert mime == "image/png"  # 10.0.0.1 would not have answered
    assert answers == ["127.0.0.1"]  # resolved once: nothing asked DNS again before connecting


async def test_redirects_are_followed_and_each_hop_is_checked(server: _Server) -> None:
    port = server.server_address[1]
    base = f"http://images.example:{port}"
    fetcher = loopback_fetcher()
    assert (await fetcher.fetch(f"{base}/redirect?to=/ok.png&status=301", WHERE))[0] == "image/png"
    assert (await fetcher.fetch(f"{base}/redirect?to={base}/ok.png&status=307", WHERE))[0] == "image/png"
    # another host name: checked and pinned afresh for its hop
    other = f"http://other.example:{port}/ok.png"
    assert (await fetcher.fetch(f"{base}/redirect?to={other}", WHERE))[0] == "image/png"
    assert server.hosts[-1] == f"other.example:{port}"
    for target in ("http://10.0.0.1/x.png", "http://169.254.169.254/latest/meta-data/", "http://167772161/",
                   f"http://metadata.example:{port}/ok.png", "http://[::1]/x.png"):
        await refused(fetcher, f"{base}/redirect?to={target}", "non-public")
    await refused(fetcher, f"{base}/redirect?to=file:///etc/passwd", "http")
    await refused(fetcher, f"{base}/no-location", "without a Location")
    await refused(fetcher, f"{base}/loop", "more than 3 times")
    await refused(loopback_fetcher(max_redirects=0), f"{base}/redirect?to=/ok.png", "more than 0 times")


async def test_a_drip_feeding_server_is_cut_by_the_total_deadline(server: _Server) -> None:
    port = server.server_address[1]
    started = time.monotonic()
    await refused(loopback_fetcher(timeout_s=0.4), f"http://images.example:{port}/drip", "longer than 0.4 s")
    assert time.monotonic() - started < 3


@pytest.mark.parametrize("path,match", [
    ("/big", "larger than 1000 bytes"), ("/big-unsized", "larger than 1000 bytes"),
    ("/text", "did not return a PNG, JPEG, WebP or GIF"), ("/missing", "HTTP 404"), ("/gzip", "gzip-encoded"),
])
async def test_bodies_are_checked(server: _Server, path: str, match: str) -> None:
    port = server.server_address[1]
    fetcher = loopback_fetcher(limits=ImageLimits(max_bytes=1000))
    await refused(fetcher, f"http://images.example:{port}{path}", match)


async def test_proxy_environment_variables_are_ignored(server: _Server, monkeypatch: pytest.MonkeyPatch) -> None:
    port = server.server_address[1]
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, "http://10.0.0.1:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    mime, _ = await loopback_fetcher().fetch(f"http://images.example:{port}/ok.png", WHERE)
    assert mime == "image/png" and server.hosts[-1] == f"images.example:{port}"  # direct, not via 10.0.0.1
