"""Where the pool's replicas are: each ``--upstream`` becomes a :class:`Discovery` that lists the replicas' base URLs.

The pool asks its discoveries again every ``--pool-discovery-interval-s``, so replicas come and go without a
restart; when a lookup fails (:class:`DiscoveryError`) it keeps the last list it knew. The forms of ``--upstream``:

* ``http://HOST:PORT/v1`` or ``https://…`` — one replica, this URL (:class:`StaticDiscovery`, looked up once).
* ``dns://NAME:PORT/PATH`` — the A and AAAA records of NAME, asked again on every lookup; each address is one
  replica, ``http://ADDRESS:PORT/PATH`` (an IPv6 address in brackets). A Kubernetes headless Service's name is
  such a name (one address per ready pod). ``?scheme=https`` makes the URLs https (the replicas' certificates
  then need the addresses as IP SANs: the URL's host is an address).
* ``dns+srv://_SERVICE._tcp.NAME/PATH`` — the SRV records of the name; each target and port is one replica. Over
  http a target is resolved to its addresses (from the answer's additional section, which CoreDNS and dnsmasq
  fill, else by asking A/AAAA), so that every URL names exactly one server: a replica's ``/metrics`` scrape and
  its requests must reach the same process, which a host name with several addresses would not promise (aiohttp
  picks among them per connection). With ``?scheme=https`` the target's name is kept as the URL's host, since
  TLS checks that name against the certificate (an SRV target names one pod or machine). Priority and weight
  are not used: the pool balances by load.
* ``k8s://NAMESPACE/SERVICE:PORT/PATH`` or ``k8s://SERVICE:PORT/PATH`` (the pod's own namespace) — the Service's
  ready endpoints from the Kubernetes API (``discovery_k8s.py``); PORT is a port number or the Service's port
  name.

Names are checked when the spec is read (:func:`parse_upstream`, a :class:`~unimodel.errors.ConfigError` for
one it cannot read); what an outside party answers is bounded: every lookup has a time limit, a list is
deduplicated, sorted and cut at :data:`MAX_REPLICAS`, a name or address in an answer that is not one is skipped.
DNS goes through dnspython's asyncio resolver (the system's ``/etc/resolv.conf`` with its search domains, read
at the first lookup, or the nameservers an operator or a test names): the event loop's ``getaddrinfo`` has no
SRV, no time limit of its own and runs in a thread.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional
from urllib.parse import parse_qsl

import aiohttp
import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
from yarl import URL

from unimodel.errors import ConfigError
from unimodel.printable import mask_url, printable

log = logging.getLogger("unimodel.pool")

#: the most replicas one discovery lists (more are logged and cut)
MAX_REPLICAS = 256
#: the time limit of one lookup (all its DNS queries, or one API request)
LOOKUP_TIMEOUT_S = 5.0
#: the most SRV targets whose addresses are asked at once
_TARGET_LOOKUPS = 16
_MAX_SPEC_CHARS = 2048
_FORMS = ("http(s)://HOST:PORT/v1, dns://NAME:PORT/v1, dns+srv://_SERVICE._tcp.NAME/v1, "
          "k8s://[NAMESPACE/]SERVICE:PORT/v1")
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOST_NAME = re.compile(rf"(?=[^/]{{1,253}}$){_LABEL}(?:\.{_LABEL})*\.?")
_PATH = re.compile(r"(?:/[A-Za-z0-9._~!$&'()*+,;=:@%-]*)*")
_SERVICE_ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"


class DiscoveryError(Exception):
    """A lookup failed; the pool keeps the last list it knew."""


class Discovery(abc.ABC):
    """One ``--upstream``: the replicas it names now."""

    #: what the operator wrote, credentials masked (for logs and ``GET /admin/pool``; a discovery spec has none:
    #: :func:`parse_upstream` refuses a user or password in one)
    spec: str
    #: False for a static URL (looked up once), True for DNS and Kubernetes (looked up again and again)
    dynamic: bool

    @abc.abstractmethod
    async def resolve(self, session: aiohttp.ClientSession) -> list[str]:
        """The replicas' base URLs now (each like ``http://10.0.0.5:8000/v1``), deduplicated, sorted, at most
        :data:`MAX_REPLICAS` (more is logged and cut); raises :class:`DiscoveryError`."""

    _cut_from: Optional[int] = None  # the count last cut at :data:`MAX_REPLICAS` (logged once per count)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"

    def _finish(self, urls: Iterable[str]) -> list[str]:
        found = sorted(set(urls))
        if len(found) > MAX_REPLICAS:
            self._note_cut(len(found), "replicas")
            found = found[:MAX_REPLICAS]
        return found

    def _note_cut(self, count: int, what: str) -> None:
        if self._cut_from != count:  # not on every lookup
            log.warning("%s lists %d %s; the pool takes the first %d", self.spec, count, what, MAX_REPLICAS)
        self._cut_from = count


@dataclass(frozen=True)
class KubernetesAccess:
    """How the gateway reaches the Kubernetes API from its pod: the API's URL and the service account's files.
    The token file is read again on every lookup (projected tokens rotate); the namespace file when a
    ``k8s://SERVICE:PORT`` spec names no namespace."""

    api_url: str
    token_file: Path = Path(_SERVICE_ACCOUNT, "token")
    ca_file: Path = Path(_SERVICE_ACCOUNT, "ca.crt")
    namespace_file: Path = Path(_SERVICE_ACCOUNT, "namespace")

    @classmethod
    def from_environment(cls, env: Mapping[str, str]) -> Optional["KubernetesAccess"]:
        """The in-cluster access (``https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT``, the service
        account's default files), or None outside a pod (the variables unset): a ``k8s://`` spec is then a
        :class:`ConfigError`."""
        host, port = env.get("KUBERNETES_SERVICE_HOST", ""), env.get("KUBERNETES_SERVICE_PORT", "")
        if not host or not port:
            return None
        return cls(api_url=f"https://{f'[{host}]' if ':' in host else host}:{port}")


class StaticDiscovery(Discovery):
    """One replica at a fixed URL."""

    dynamic = False

    def __init__(self, url: str) -> None:
        self.url = url
        self.spec = mask_url(url)

    async def resolve(self, session: aiohttp.ClientSession) -> list[str]:
        return [self.url]


class _DnsDiscovery(Discovery):
    """What the two DNS forms share: the resolver (made at the first lookup) and the errors."""

    dynamic = True

    def __init__(self, spec: str, name: str, path: str, scheme: str,
                 nameservers: Optional[Sequence[tuple[str, int]]], timeout_s: float) -> None:
        self.spec = spec
        self.name = name
        self.path = path
        self.scheme = scheme
        self.nameservers = list(nameservers) if nameservers else None
        self.timeout_s = timeout_s
        self._resolver: Optional[dns.asyncresolver.Resolver] = None

    def resolver(self) -> dns.asyncresolver.Resolver:
        if self._resolver is None:
            try:
                resolver = dns.asyncresolver.Resolver(configure=self.nameservers is None)
            except dns.exception.DNSException as exc:  # no /etc/resolv.conf, or one without a nameserver
                raise DiscoveryError(f"{self.spec}: no DNS configuration: {exc}") from exc
            if self.nameservers is not None:
                resolver.nameservers = [dns.nameserver.Do53Nameserver(address, port)
                                        for address, port in self.nameservers]
            resolver.lifetime = self.timeout_s
            self._resolver = resolver
        return self._resolver

    async def query(self, name: str, rdtype: dns.rdatatype.RdataType, *,
                    missing_ok: bool) -> Optional[dns.resolver.Answer]:
        """The answer, None for a name without such records (or one that does not exist, when ``missing_ok``);
        every other failure a :class:`DiscoveryError`."""
        what = f"{printable(name)} {rdtype.name}"
        try:
            return await self.resolver().resolve(name, rdtype, search=True, lifetime=self.timeout_s)
        except dns.resolver.NoAnswer:
            return None
        except dns.resolver.NXDOMAIN as exc:
            if missing_ok:
                return None
            raise DiscoveryError(f"{self.spec}: {what}: no such name") from exc
        except dns.exception.Timeout as exc:
            raise DiscoveryError(f"{self.spec}: {what}: no answer within {self.timeout_s:g}s") from exc
        except dns.exception.DNSException as exc:  # SERVFAIL, REFUSED, a malformed answer …
            raise DiscoveryError(f"{self.spec}: {what}: {printable(str(exc), 300)}") from exc

    async def addresses(self, name: str, *, missing_ok: bool) -> list[str]:
        """The A and AAAA addresses of ``name``, asked at once; both must answer (a partial list would drop
        replicas that are there)."""
        answers = await asyncio.gather(self.query(name, dns.rdatatype.A, missing_ok=missing_ok),
                                       self.query(name, dns.rdatatype.AAAA, missing_ok=missing_ok))
        return [address for answer in answers if answer is not None for address in _rdata_addresses(answer)]

    def url(self, host: str, port: int) -> str:
        return f"{self.scheme}://{f'[{host}]' if ':' in host else host}:{port}{self.path}"


class DnsDiscovery(_DnsDiscovery):
    """``dns://NAME:PORT/PATH``: one replica per A/AAAA address of NAME."""

    def __init__(self, spec: str, name: str, port: int, path: str, scheme: str, *,
                 nameservers: Optional[Sequence[tuple[str, int]]] = None,
                 timeout_s: float = LOOKUP_TIMEOUT_S) -> None:
        super().__init__(spec, name, path, scheme, nameservers, timeout_s)
        self.port = port

    async def resolve(self, session: aiohttp.ClientSession) -> list[str]:
        return self._finish(self.url(address, self.port)
                            for address in await self.addresses(self.name, missing_ok=False))


class SrvDiscovery(_DnsDiscovery):
    """``dns+srv://_SERVICE._tcp.NAME/PATH``: one replica per SRV target and port."""

    async def resolve(self, session: aiohttp.ClientSession) -> list[str]:
        answer = await self.query(self.name, dns.rdatatype.SRV, missing_ok=False)
        if answer is None:
            return []
        targets: set[tuple[str, int]] = set()
        for record in answer:
            target = record.target.to_text(omit_final_dot=True)
            # "." says the service is not offered here (RFC 2782); a name that is not a host name is skipped
            if record.target != dns.name.root and record.port and _HOST_NAME.fullmatch(target):
                targets.add((target.lower(), int(record.port)))
        if len(targets) > MAX_REPLICAS:
            self._note_cut(len(targets), "SRV targets")
        chosen = sorted(targets)[:MAX_REPLICAS]
        if self.scheme == "https":  # the name stays: TLS checks it against the certificate
            return self._finish(self.url(target, port) for target, port in chosen)
        known = _additional_addresses(answer)
        gate = asyncio.Semaphore(_TARGET_LOOKUPS)

        async def addresses_of(target: str) -> list[str]:
            if target in known:
                return known[target]
            async with gate:  # a target without an address (NXDOMAIN, no records) is no replica, not an error
                return await self.addresses(target + ".", missing_ok=True)

        found = await asyncio.gather(*(addresses_of(target) for target, _ in chosen))
        return self._finish(self.url(address, port)
                            for (_, port), addresses in zip(chosen, found) for address in addresses)


def _rdata_addresses(answer: dns.resolver.Answer) -> list[str]:
    return [record.address for record in answer]


def _additional_addresses(answer: dns.resolver.Answer) -> dict[str, list[str]]:
    """The A/AAAA records an SRV answer carried along, by target name (lower case, no final dot)."""
    found: dict[str, list[str]] = {}
    for rrset in answer.response.additional:
        if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            name = rrset.name.to_text(omit_final_dot=True).lower()
            found.setdefault(name, []).extend(record.address for record in rrset)
    return found


def parse_upstream(spec: str, *, kubernetes: Optional[KubernetesAccess] = None,
                   nameservers: Optional[list[tuple[str, int]]] = None) -> Discovery:
    """The discovery an ``--upstream`` value names (the forms are in this module's docstring); ``kubernetes``:
    the pod's API access (:meth:`KubernetesAccess.from_environment`), needed by ``k8s://``; ``nameservers``:
    (address, port) pairs to ask instead of the system's resolver. A spec it cannot read is a
    :class:`ConfigError` that says why and lists the forms."""
    shown = printable(mask_url(spec), 200)
    if len(spec) > _MAX_SPEC_CHARS:
        raise ConfigError(f"--upstream {shown}: longer than {_MAX_SPEC_CHARS} characters")
    scheme, sep, rest = spec.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in ("http", "https", "dns", "dns+srv", "k8s"):
        raise ConfigError(f"--upstream {shown}: not a replica URL or a discovery spec; the forms: {_FORMS}")
    if scheme in ("http", "https"):
        return _static(spec, shown)
    rest, _, query = rest.partition("?")
    url_scheme = _url_scheme(query, shown)
    if "#" in rest:
        raise ConfigError(f"--upstream {shown}: a fragment (#…) means nothing here")
    if any("@" in part for part in rest.split("/", 2)[:2]):  # so a discovery's spec has nothing to mask
        raise ConfigError(f"--upstream {shown}: a discovery spec takes no user or password (the replicas' key "
                          "is --upstream-api-key)")
    if scheme == "k8s":
        from unimodel.engines.pool.discovery_k8s import k8s_discovery  # the Kubernetes half, only when named

        return k8s_discovery(spec, shown, rest, url_scheme, kubernetes)
    authority, slash, path = rest.partition("/")
    path = url_path(slash + path, shown)
    if scheme == "dns":
        name, colon, port = authority.rpartition(":")
        if not colon:
            raise ConfigError(f"--upstream {shown}: dns:// needs a port: dns://NAME:PORT/v1")
        return DnsDiscovery(spec, _host_name(name, shown), port_number(port, shown), path, url_scheme,
                            nameservers=nameservers)
    if ":" in authority:
        raise ConfigError(f"--upstream {shown}: dns+srv:// takes the ports from the SRV records: "
                          "dns+srv://_SERVICE._tcp.NAME/v1, no :PORT")
    name = _host_name(authority, shown)
    labels = name.split(".")
    if len(labels) < 3 or not labels[0].startswith("_") or labels[1].lower() != "_tcp":
        raise ConfigError(f"--upstream {shown}: an SRV name is _SERVICE._tcp.NAME (e.g. "
                          "_http._tcp.vllm.default.svc.cluster.local)")
    return SrvDiscovery(spec, name, path, url_scheme, nameservers, LOOKUP_TIMEOUT_S)


def _static(spec: str, shown: str) -> StaticDiscovery:
    try:
        url = URL(spec)
        host = url.host
    except ValueError as exc:
        raise ConfigError(f"--upstream {shown}: not a URL: {printable(str(exc), 200)}") from exc
    if not host:
        raise ConfigError(f"--upstream {shown}: the URL names no host")
    if url.fragment:
        raise ConfigError(f"--upstream {shown}: not a base URL like http://HOST:PORT/v1")
    return StaticDiscovery(spec)


def _url_scheme(query: str, shown: str) -> str:
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query), max_num_fields=4)
    except ValueError as exc:
        raise ConfigError(f"--upstream {shown}: the query is not NAME=VALUE pairs") from exc
    options = dict(pairs)
    if len(options) != len(pairs) or set(options) - {"scheme"}:
        raise ConfigError(f"--upstream {shown}: the one option is ?scheme=http or ?scheme=https")
    scheme = options.get("scheme", "http").lower()
    if scheme not in ("http", "https"):
        raise ConfigError(f"--upstream {shown}: scheme= is http or https")
    return scheme


def url_path(path: str, shown: str) -> str:
    if not _PATH.fullmatch(path):
        raise ConfigError(f"--upstream {shown}: the path {printable(path, 100)} has characters a URL path cannot")
    return path.rstrip("/")


def _host_name(name: str, shown: str) -> str:
    if not _HOST_NAME.fullmatch(name):
        raise ConfigError(f"--upstream {shown}: {printable(name, 100)!r} is not a DNS name")
    return name


def port_number(text: str, shown: str) -> int:
    if not text.isascii() or not text.isdigit() or not 0 < int(text) < 65536:
        raise ConfigError(f"--upstream {shown}: the port {printable(text, 20)!r} is not a number from 1 to 65535")
    return int(text)
