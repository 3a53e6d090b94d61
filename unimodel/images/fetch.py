"""Fetch a client's image URL without letting the client reach anything but the public internet (SSRF).

Hand-written around aiohttp (the server's one HTTP client library) because no client does the whole job by
itself: it resolves and connects on its own (a check before the request can be undone by a second DNS answer:
rebinding), follows redirects unchecked, can honour proxy environment variables, and its timeouts are per
read, so a server dripping one byte a second never times out. Here, for every hop (the URL, then each
redirect, at most ``max_redirects``):

* only http/https, no credentials in the URL, a host of letters, digits and ``.-_`` (or an IPv6 literal);
  the URL is parsed once (yarl, as aiohttp does) and that same object is checked and requested, so the host
  checked is the host connected to; a host that is an IP literal in any spelling browsers and ``inet_aton``
  accept (``2130706433``, ``0177.0.0.1``, ``0x7f.1``, ``127.1``) is normalised and checked as that address,
  never handed to a resolver;
* a host name is resolved once through the resolver seam, and every address it gets must pass
  :func:`is_public_address` (loopback, private, link-local, CGNAT, multicast, reserved, documentation,
  cloud metadata, and the IPv6 forms that embed such an IPv4: mapped, NAT64, 6to4; Teredo refused outright);
* the connection goes to the first checked address itself: the hop's own connector gets a resolver
  (:class:`_PinnedResolver`) that answers the checked host name with that address and refuses every other
  name (an IP literal, already checked, is connected to as written), while the Host header, TLS SNI and
  certificate check keep the host name;
* no proxy (``trust_env`` off and none given, so nothing reads ``HTTP_PROXY``), no cookies, redirects not
  followed by aiohttp; ``Accept-Encoding: identity``, decompression off and any compressed body refused (no
  gzip bomb), the size capped while streaming, the bytes sniffed as PNG/JPEG/WebP/GIF after the first 12;
* one deadline (``asyncio.wait_for``) over the whole fetch, resolution, redirects and body included.

Every refusal is an :class:`~unimodel.errors.InvalidRequestError` naming the part (``where``).
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from typing import TYPE_CHECKING, Union

import aiohttp
from aiohttp.abc import AbstractResolver
from yarl import URL

from unimodel.errors import InvalidRequestError
from unimodel.images.decode import DEFAULT_LIMITS, ImageLimits, sniff_image_mime
from unimodel.tls import client_context

if TYPE_CHECKING:
    from aiohttp.abc import ResolveResult

IPAddress = Union[IPv4Address, IPv6Address]
#: host name → its addresses as strings (the default asks the system resolver)
Resolver = Callable[[str], Awaitable[Sequence[str]]]

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_HOST = re.compile(r"[A-Za-z0-9._:-]+")  # after IDNA encoding; ':' only in an IPv6 literal (checked as one)
_HEADERS = {"User-Agent": "unimodel-image-fetcher", "Accept": "image/png, image/jpeg, image/webp, image/gif",
            "Accept-Encoding": "identity"}
_BLOCKED_V4 = tuple(ip_network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.0.2.0/24", "192.31.196.0/24", "192.52.193.0/24", "192.88.99.0/24", "192.168.0.0/16",
    "192.175.48.0/24", "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
    "168.63.129.16/32",  # Azure's host endpoint (metadata, wireserver) looks public
))
_BLOCKED_V6 = tuple(ip_network(n) for n in (
    "::/96",  # unspecified, loopback and the deprecated IPv4-compatible form
    "::ffff:0:0:0/96", "64:ff9b:1::/48", "100::/64", "2001::/23", "2001:db8::/32", "3fff::/20", "5f00::/16",
    "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8",
))
_NAT64 = ip_network("64:ff9b::/96")


def is_public_address(ip: IPAddress) -> bool:
    """Whether ``ip`` is a globally routable unicast address that is no cloud metadata endpoint."""
    if isinstance(ip, IPv6Address):
        if ip.scope_id:
            return False
        embedded = ip.ipv4_mapped or ip.sixtofour or (IPv4Address(int(ip) & 0xFFFFFFFF) if ip in _NAT64 else None)
        if embedded is not None and not is_public_address(embedded):
            return False
        if ip.ipv4_mapped is not None:  # it *is* that IPv4 address
            return True
        return ip.is_global and not any(ip in net for net in _BLOCKED_V6)
    return ip.is_global and not any(ip in net for net in _BLOCKED_V4)


def _ipv4_number(part: str) -> int:
    """One part of an IPv4 host as the WHATWG URL standard and ``inet_aton`` read it: 0x hex, 0 octal."""
    if part[:2].lower() == "0x":
        digits, base, alphabet = part[2:], 16, "0123456789abcdefABCDEF"
    elif len(part) > 1 and part[0] == "0":
        digits, base, alphabet = part[1:], 8, "01234567"
    else:
        digits, base, alphabet = part, 10, "0123456789"
    if not all(c in alphabet for c in digits) or (not digits and base != 16):
        raise ValueError(part)
    return int(digits, base) if digits else 0


def parse_ip_host(host: str) -> IPAddress | None:
    """The address a URL host names when it is an IP literal in any accepted spelling, else ``None``.

    ``ValueError`` for a host that ends in a number but is no valid address (``1.2.3.4.5``, ``0x1ffffffff``,
    ``09.1``): browsers refuse those too.
    """
    if ":" in host:
        return ip_address(host)
    parts = host.split(".")
    if len(parts) > 1 and parts[-1] == "":
        parts.pop()
    last = parts[-1]
    ends_in_number = (last.isascii() and last.isdigit()) or (
        last[:2].lower() == "0x" and all(c in "0123456789abcdefABCDEF" for c in last[2:]))
    if not ends_in_number:
        return None
    if len(parts) > 4 or "" in parts:
        raise ValueError(host)
    numbers = [_ipv4_number(p) for p in parts]
    if any(n > 255 for n in numbers[:-1]) or numbers[-1] >= 256 ** (5 - len(numbers)):
        raise ValueError(host)
    value = numbers[-1] + sum(n << (8 * (3 - i)) for i, n in enumerate(numbers[:-1]))
    return IPv4Address(value)


async def system_resolver(host: str) -> list[str]:
    """The system resolver's addresses for ``host`` (``loop.getaddrinfo``, off the event loop)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class _PinnedResolver(AbstractResolver):
    """The resolver of one hop's connector: the checked host name is its checked address, and every other name
    is refused. aiohttp asks it for names only (an IP literal is connected to as written)."""

    def __init__(self, host: str, address: str) -> None:
        self._host, self._address = host, address

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        if host != self._host:
            raise OSError(f"{host} is not the checked host")
        ip = ip_address(self._address)
        return [{"hostname": host, "host": self._address, "port": port, "proto": 0, "flags": socket.AI_NUMERICHOST,
                 "family": socket.AF_INET6 if ip.version == 6 else socket.AF_INET}]

    async def close(self) -> None:
        return None


class SafeImageFetcher:
    """GETs image URLs under the rules of the module docstring; returns ``(mime, bytes)``.

    ``resolver`` is a seam for tests (a scripted DNS). ``allow_address`` admits addresses that are not
    public: only for tests against a loopback server, never in a deployment.
    """

    def __init__(self, *, limits: ImageLimits = DEFAULT_LIMITS, timeout_s: float = 10.0, max_redirects: int = 3,
                 resolver: Resolver | None = None, allow_address: Callable[[IPAddress], bool] | None = None,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        if timeout_s <= 0 or max_redirects < 0:
            raise ValueError("timeout_s must be > 0 and max_redirects >= 0")
        self.limits, self.timeout_s, self.max_redirects = limits, timeout_s, max_redirects
        self._resolve = resolver or system_resolver
        self._allow_address = allow_address
        self._ssl_context = ssl_context

    async def fetch(self, url: str, where: str) -> tuple[str, bytes]:
        """The image at ``url`` as ``(mime, bytes)``; the MIME type is sniffed from the bytes."""
        try:
            return await asyncio.wait_for(self._follow(url, where), self.timeout_s)
        except asyncio.TimeoutError as exc:  # TimeoutError itself from Python 3.11 on
            raise InvalidRequestError(f"{where}: fetching the image took longer than {self.timeout_s:g} s",
                                      param=where) from exc

    async def _follow(self, url: str, where: str) -> tuple[str, bytes]:
        target = self._parse(url, where)
        for _ in range(self.max_redirects + 1):
            address = await self._checked_address(target, where)
            result = await self._get(target, address, where)
            if isinstance(result, URL):
                target = self._parse(result, where)
                continue
            return result
        raise InvalidRequestError(f"{where}: the image URL redirects more than {self.max_redirects} times",
                                  param=where)

    def _parse(self, url: str | URL, where: str) -> URL:
        try:
            target = url if isinstance(url, URL) else URL(url)
            scheme, host, port = target.scheme, target.raw_host, target.port
            credentials = target.raw_user is not None or target.raw_password is not None
        except (ValueError, TypeError) as exc:
            raise InvalidRequestError(f"{where}: the image URL is not a valid URL ({exc})", param=where) from exc
        if scheme not in ("http", "https"):
            raise InvalidRequestError(f"{where}: image URLs must be http(s) (or send a data: URI)", param=where)
        if credentials:
            raise InvalidRequestError(f"{where}: image URLs may not carry credentials", param=where)
        if not host or not target.is_absolute() or port is None or not _HOST.fullmatch(host) or ".." in host:
            raise InvalidRequestError(f"{where}: the image URL has no valid host", param=where)
        try:
            literal = parse_ip_host(host)
        except ValueError as exc:
            raise InvalidRequestError(f"{where}: the image URL host {host!r} is not a valid address",
                                      param=where) from exc
        if literal is not None and str(literal) != host:
            target = target.with_host(str(literal))  # one spelling from here on: the canonical one
        return target

    def _allowed(self, ip: IPAddress) -> bool:
        return is_public_address(ip) or (self._allow_address is not None and self._allow_address(ip))

    async def _checked_address(self, target: URL, where: str) -> str:
        """The address to connect to; every address the host has must be allowed."""
        host = target.raw_host or ""
        literal = parse_ip_host(host)
        if literal is not None:
            answers: Sequence[str] = [str(literal)]
        else:
            try:
                answers = await self._resolve(host)
            except OSError as exc:
                raise InvalidRequestError(f"{where}: cannot resolve the image host {host!r}", param=where) from exc
        if not answers:
            raise InvalidRequestError(f"{where}: the image host {host!r} has no address", param=where)
        for answer in answers:
            try:
                ip = ip_address(answer)
            except ValueError as exc:
                raise InvalidRequestError(f"{where}: the image host {host!r} resolved to an invalid address",
                                          param=where) from exc
            if not self._allowed(ip):
                named = f"{ip}" if literal is not None else f"{host} resolves to {ip}"
                raise InvalidRequestError(
                    f"{where}: image URLs may not point at non-public addresses ({named})", param=where)
        return str(ip_address(answers[0]))

    def _ssl(self) -> ssl.SSLContext:
        if self._ssl_context is None:  # certifi's CAs, read on the first https fetch (not at construction)
            self._ssl_context = client_context(trust_env=False)
        return self._ssl_context

    async def _get(self, target: URL, address: str, where: str) -> tuple[str, bytes] | URL:
        """One request on a connector of its own, pinned to ``address``: the image, or the next URL of a
        redirect."""
        tls: ssl.SSLContext | bool = self._ssl() if target.scheme == "https" else True  # True: unused for http
        connector = aiohttp.TCPConnector(resolver=_PinnedResolver(target.raw_host or "", address),
                                         use_dns_cache=False, ssl=tls, limit=1, force_close=True)
        try:
            async with aiohttp.ClientSession(connector=connector, trust_env=False, auto_decompress=False,
                                             cookie_jar=aiohttp.DummyCookieJar(),
                                             timeout=aiohttp.ClientTimeout(total=self.timeout_s)) as session:
                async with session.get(target, headers=_HEADERS, allow_redirects=False) as response:
                    return await self._read(target, response, where)
        except asyncio.TimeoutError as exc:  # aiohttp's own timeouts (the deadline of fetch() is the same)
            raise InvalidRequestError(f"{where}: fetching the image took longer than {self.timeout_s:g} s",
                                      param=where) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise InvalidRequestError(f"{where}: fetching the image failed ({type(exc).__name__})",
                                      param=where) from exc

    async def _read(self, target: URL, response: aiohttp.ClientResponse, where: str) -> tuple[str, bytes] | URL:
        headers = response.headers
        status = response.status
        if status in _REDIRECTS:
            if "location" not in headers:
                raise InvalidRequestError(f"{where}: the image URL redirects (HTTP {status}) without a Location",
                                          param=where)
            try:
                return target.join(URL(headers["location"]))
            except (ValueError, TypeError) as exc:
                raise InvalidRequestError(f"{where}: the image URL redirects to an invalid URL",
                                          param=where) from exc
        if status != 200:
            raise InvalidRequestError(f"{where}: fetching the image failed with HTTP {status}", param=where)
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise InvalidRequestError(f"{where}: the image server sent a {encoding}-encoded body; images must "
                                      "be sent unencoded", param=where)
        cap = self.limits.max_bytes
        declared = headers.get("content-length", "").strip()
        if declared.isdigit() and int(declared) > cap:
            raise InvalidRequestError(f"{where}: the image is larger than {cap} bytes", param=where)
        body = bytearray()
        async for chunk in response.content.iter_any():
            sniffed = len(body) >= 12
            body += chunk
            if len(body) > cap:
                raise InvalidRequestError(f"{where}: the image is larger than {cap} bytes", param=where)
            if not sniffed and len(body) >= 12:
                self._sniff(body, where)
        return self._sniff(body, where), bytes(body)

    @staticmethod
    def _sniff(body: bytearray, where: str) -> str:
        mime = sniff_image_mime(bytes(body[:12]))
        if mime is None:
            raise InvalidRequestError(f"{where}: the image URL did not return a PNG, JPEG, WebP or GIF image",
                                      param=where)
        return mime
