"""``k8s://[NAMESPACE/]SERVICE:PORT/PATH``: a Service's ready endpoints, read from the Kubernetes API with the pod's
service account.

Each lookup is one ``GET`` of the Service's EndpointSlices (``discovery.k8s.io/v1``, selected by the
``kubernetes.io/service-name`` label); on a cluster without that API (a 404) the legacy Endpoints object. An
endpoint counts when its ``conditions.ready`` is not false and it is not ``terminating`` (a missing condition
means ready, as the API says); its first address is the replica (the API calls an endpoint's addresses
fungible). PORT is a number (the pod's port, as the slices list it; a slice without ports, as a headless
Service without ports has, takes it as it is) or the Service's port name (a slice carries the port number of
its own pods for that name, so pods may differ). The Service's replicas must be reachable from the gateway at
those addresses: the Service's own virtual IP is never used, which is the point.

Written by hand over the pool's aiohttp session rather than with the official ``kubernetes`` client: the two
GETs need a bearer token and a CA file, where the client would bring a large synchronous dependency tree (its
asyncio sibling another) and its own HTTP stack beside the one the gateway already has. What a client library
would take care of is done here: the token file is read again on every lookup (projected service account
tokens rotate), the CA file is reloaded when it changes, TLS verifies the API server against it, the token is
never logged and never follows a redirect, and the answer is read with a size cap and a time limit.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import re
import ssl
from pathlib import Path
from typing import Any, Optional, Union

import aiohttp
import orjson
from yarl import URL

from unimodel.engines.pool.discovery import (
    LOOKUP_TIMEOUT_S,
    Discovery,
    DiscoveryError,
    KubernetesAccess,
    port_number,
    url_path,
)
from unimodel.errors import ConfigError
from unimodel.printable import excerpt, printable

log = logging.getLogger("unimodel.pool")

#: the most bytes of one API answer read (an EndpointSlice holds at most 1000 endpoints of about 300 bytes)
MAX_BODY_BYTES = 8 * 1024 * 1024
_MAX_TOKEN_BYTES = 64 * 1024
_MAX_NAMESPACE_BYTES = 256
# a namespace is an RFC 1123 label, a Service name an RFC 1035 label, a port name an IANA service name
_NAMESPACE = re.compile(r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?")
_SERVICE = re.compile(r"[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?")
_PORT_NAME = re.compile(r"[a-z0-9](?:[-a-z0-9]{0,13}[a-z0-9])?")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")


class KubernetesDiscovery(Discovery):
    """One Service's ready endpoints (see the module docstring)."""

    dynamic = True

    def __init__(self, spec: str, access: KubernetesAccess, namespace: str, service: str, port: Union[int, str],
                 path: str, scheme: str, *, timeout_s: float = LOOKUP_TIMEOUT_S,
                 max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self.spec = spec
        self.access = access
        self.namespace = namespace
        self.service = service
        self.port = port
        self.path = path
        self.scheme = scheme
        self.timeout_s = timeout_s
        self.max_body_bytes = max_body_bytes
        self._ssl: Optional[tuple[tuple[int, int, int], ssl.SSLContext]] = None
        self._warned_empty = False
        api = access.api_url.rstrip("/")
        self.slices_url = URL(f"{api}/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices"
                              f"?labelSelector=kubernetes.io/service-name%3D{service}", encoded=True)
        self.endpoints_url = URL(f"{api}/api/v1/namespaces/{namespace}/endpoints/{service}", encoded=True)

    async def resolve(self, session: aiohttp.ClientSession) -> list[str]:
        headers = {"Authorization": f"Bearer {self._token()}", "Accept": "application/json"}
        context = self._context()
        status, body = await self._get(session, self.slices_url, headers, context)
        if status == 404:  # no discovery.k8s.io/v1 (Kubernetes before 1.21): the legacy Endpoints
            status, body = await self._get(session, self.endpoints_url, headers, context)
            if status == 404:
                raise DiscoveryError(f"{self.spec}: no Service {self.namespace}/{self.service} (Endpoints: 404)")
            self._check(status, body, "endpoints")
            return self._finish(self._from_endpoints(_json(body, self.spec)))
        self._check(status, body, "endpointslices")
        return self._finish(self._from_slices(_json(body, self.spec)))

    def _token(self) -> str:
        try:
            with open(self.access.token_file, "rb") as file:
                raw = file.read(_MAX_TOKEN_BYTES + 1)
        except OSError as exc:
            raise DiscoveryError(f"{self.spec}: cannot read the service account token "
                                 f"{self.access.token_file}: {exc.strerror}") from exc
        token = raw.strip()
        if not token or len(raw) > _MAX_TOKEN_BYTES or not token.isascii() or any(c < 33 for c in token):
            raise DiscoveryError(f"{self.spec}: the service account token file {self.access.token_file} "
                                 "does not hold a token")
        return token.decode("ascii")

    def _context(self) -> ssl.SSLContext:
        """A TLS context trusting the service account's CA, made again when that file changes."""
        try:
            stat = os.stat(self.access.ca_file)
            key = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
            if self._ssl is None or self._ssl[0] != key:
                self._ssl = (key, ssl.create_default_context(cafile=str(self.access.ca_file)))
        except (OSError, ssl.SSLError) as exc:
            raise DiscoveryError(f"{self.spec}: cannot load the Kubernetes CA {self.access.ca_file}: "
                                 f"{printable(str(exc), 200)}") from exc
        return self._ssl[1]

    async def _get(self, session: aiohttp.ClientSession, url: URL, headers: dict[str, str],
                   context: ssl.SSLContext) -> tuple[int, bytes]:
        """The status and at most ``max_body_bytes`` of the body, within the time limit."""
        try:
            async with session.get(url, headers=headers, ssl=context, allow_redirects=False,
                                   timeout=aiohttp.ClientTimeout(total=self.timeout_s)) as response:
                if (response.content_length or 0) > self.max_body_bytes:
                    raise self._too_large()
                body = bytearray()
                async for chunk in response.content.iter_chunked(64 * 1024):
                    body += chunk
                    if len(body) > self.max_body_bytes:
                        raise self._too_large()
                return response.status, bytes(body)
        except asyncio.TimeoutError as exc:  # TimeoutError itself from Python 3.11 on
            raise DiscoveryError(f"{self.spec}: the Kubernetes API did not answer within {self.timeout_s:g}s") \
                from exc
        except aiohttp.ClientError as exc:  # refused, reset, a certificate the CA does not sign …
            raise DiscoveryError(f"{self.spec}: the Kubernetes API at {self.access.api_url}: "
                                 f"{type(exc).__name__}: {printable(str(exc), 300)}") from exc

    def _too_large(self) -> DiscoveryError:
        return DiscoveryError(f"{self.spec}: the Kubernetes API's answer is over {self.max_body_bytes} bytes")

    def _check(self, status: int, body: bytes, resource: str) -> None:
        if status == 200:
            return
        if status == 401:
            raise DiscoveryError(f"{self.spec}: the Kubernetes API refused the service account's token (401)")
        if status == 403:
            raise DiscoveryError(
                f"{self.spec}: forbidden (403) to read {resource} in namespace {self.namespace}: RBAC must grant "
                "the gateway's service account get, list and watch on endpointslices (discovery.k8s.io) and "
                "endpoints in that namespace (a Role and a RoleBinding)")
        raise DiscoveryError(f"{self.spec}: the Kubernetes API answered {status} for {resource}: "
                             f"{excerpt(body.decode('utf-8', 'replace'), 300)}")

    def _from_slices(self, doc: Any) -> list[str]:
        items = _list(_field(doc, "items"))
        if not items and not self._warned_empty:  # a Service of that name may not exist: say it once
            log.warning("%s: no EndpointSlices for Service %s/%s (is it there?)", self.spec, self.namespace,
                        self.service)
        self._warned_empty = not items
        urls: list[str] = []
        seen_ports: list[str] = []
        matched = False
        for item in items:
            port = self._match_port(_field(item, "ports"), seen_ports)
            if port is None:
                continue
            matched = True
            address_type = _field(item, "addressType")
            for endpoint in _list(_field(item, "endpoints")):
                conditions = _field(endpoint, "conditions")
                if _field(conditions, "ready") is False or _field(conditions, "terminating") is True:
                    continue
                addresses = _list(_field(endpoint, "addresses"))
                host = _host(addresses[0], address_type) if addresses else None
                if host is not None:
                    urls.append(self._url(host, port))
        if items and not matched:
            raise self._no_port(seen_ports)
        return urls

    def _from_endpoints(self, doc: Any) -> list[str]:
        urls: list[str] = []
        seen_ports: list[str] = []
        subsets = _list(_field(doc, "subsets"))
        matched = False
        for subset in subsets:
            port = self._match_port(_field(subset, "ports"), seen_ports)
            if port is None:
                continue
            matched = True
            for address in _list(_field(subset, "addresses")):  # never notReadyAddresses
                host = _host(_field(address, "ip"), None)
                if host is not None:
                    urls.append(self._url(host, port))
        if subsets and not matched:
            raise self._no_port(seen_ports)
        return urls

    def _match_port(self, ports: Any, seen: list[str]) -> Optional[int]:
        """This slice's (or subset's) number for the spec's port, or None when it has none."""
        listed = _list(ports)
        if not listed:  # no ports listed: all of them (a headless Service without ports)
            return self.port if isinstance(self.port, int) else None
        for port in listed:
            name, number, protocol = _field(port, "name"), _field(port, "port"), _field(port, "protocol")
            if not isinstance(number, int) or isinstance(number, bool) or not 0 < number < 65536:
                continue
            if len(seen) < 16:
                seen.append(f"{name}:{number}" if name else str(number))
            if protocol not in (None, "TCP"):
                continue
            if (self.port == name) if isinstance(self.port, str) else (self.port == number):
                return number
        return None

    def _no_port(self, seen: list[str]) -> DiscoveryError:
        listed = ", ".join(printable(p, 80) for p in dict.fromkeys(seen)) or "none"
        return DiscoveryError(f"{self.spec}: Service {self.namespace}/{self.service} has no TCP port "
                              f"{self.port} (its endpoints' ports: {listed})")

    def _url(self, host: str, port: int) -> str:
        return f"{self.scheme}://{f'[{host}]' if ':' in host else host}:{port}{self.path}"


def _json(body: bytes, spec: str) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise DiscoveryError(f"{spec}: the Kubernetes API's answer is not JSON") from exc


def _field(value: Any, name: str) -> Any:
    return value.get(name) if isinstance(value, dict) else None


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _host(address: Any, address_type: Optional[str]) -> Optional[str]:
    """An address from the API as a URL host, or None for one that is not an address (or a name for FQDN)."""
    if not isinstance(address, str) or len(address) > 253:
        return None
    if address_type == "FQDN":
        return address.lower().rstrip(".") if _HOST_NAME.fullmatch(address.rstrip(".")) else None
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return None
    if address_type is not None and address_type != f"IPv{parsed.version}":
        return None
    return parsed.compressed


def k8s_discovery(spec: str, shown: str, rest: str, scheme: str,
                  access: Optional[KubernetesAccess]) -> KubernetesDiscovery:
    """``k8s://`` + ``rest`` (``NAMESPACE/SERVICE:PORT/PATH`` or ``SERVICE:PORT/PATH``, the query taken off)."""
    first, _, after = rest.partition("/")
    if ":" in first:
        namespace, target, path = None, first, "/" + after if after else ""
    else:
        target, _, tail = after.partition("/")
        namespace, path = first, "/" + tail if tail else ""
    service, colon, port_text = target.partition(":")
    if not colon or not service or not port_text:
        raise ConfigError(f"--upstream {shown}: the forms are k8s://NAMESPACE/SERVICE:PORT/v1 and "
                          "k8s://SERVICE:PORT/v1 (PORT a number or the Service's port name)")
    if not _SERVICE.fullmatch(service):
        raise ConfigError(f"--upstream {shown}: {printable(service, 100)!r} is not a Service name")
    port: Union[int, str]
    if port_text.isascii() and port_text.isdigit():
        port = port_number(port_text, shown)
    elif _PORT_NAME.fullmatch(port_text) and any(c.isalpha() for c in port_text):
        port = port_text
    else:
        raise ConfigError(f"--upstream {shown}: {printable(port_text, 40)!r} is neither a port number nor a "
                          "port name")
    path = url_path(path, shown)
    if access is None:
        raise ConfigError(f"--upstream {shown}: k8s:// reads the Kubernetes API from inside a pod, and "
                          "KUBERNETES_SERVICE_HOST/KUBERNETES_SERVICE_PORT are not set here")
    if namespace is None:
        namespace = _pod_namespace(access.namespace_file, shown)
    if not _NAMESPACE.fullmatch(namespace):
        raise ConfigError(f"--upstream {shown}: {printable(namespace, 100)!r} is not a namespace name")
    return KubernetesDiscovery(spec, access, namespace, service, port, path, scheme)


def _pod_namespace(path: Path, shown: str) -> str:
    try:
        with open(path, "rb") as file:
            raw = file.read(_MAX_NAMESPACE_BYTES)
    except OSError as exc:
        raise ConfigError(f"--upstream {shown}: names no namespace and the pod's namespace file {path} cannot "
                          f"be read ({exc.strerror}): write k8s://NAMESPACE/SERVICE:PORT/v1") from exc
    return raw.decode("utf-8", "replace").strip()
