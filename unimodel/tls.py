"""TLS for the server's outgoing HTTPS (the upstream engine, the image fetcher, alert webhooks).

Certificates and host names are always verified, against certifi's CA bundle: the same trust on every machine,
where aiohttp's own default (the system's store) is missing from many slim container images. Where the caller
allows it, ``SSL_CERT_FILE`` or else ``SSL_CERT_DIR`` replaces that bundle (an operator's private CA for an
upstream), as httpx, which these clients used before, did. Read when called, never at import.
"""

from __future__ import annotations

import os
import ssl

import certifi


def client_context(*, trust_env: bool) -> ssl.SSLContext:
    """A client context that verifies certificates and host names; ``trust_env``: honour ``SSL_CERT_FILE`` /
    ``SSL_CERT_DIR`` when set."""
    if trust_env and os.environ.get("SSL_CERT_FILE"):
        return ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
    if trust_env and os.environ.get("SSL_CERT_DIR"):
        return ssl.create_default_context(capath=os.environ["SSL_CERT_DIR"])
    return ssl.create_default_context(cafile=certifi.where())
