"""What the server prints of text it did not write: control characters escaped, length bounded, personal data
redacted, credentials in URLs masked.

Strings a client or an upstream controls (an upstream's error body, a model id it lists, a finish reason) reach
log lines, the access log and ``unimodel logs``. Printed raw, an ANSI escape repaints the operator's terminal
and a newline forges a log line; an upstream that echoes the prompt in its error puts a client's e-mail into
the server log. Credentials an operator wrote into a URL (``http://user:pass@gpu:8000/v1``,
``postgresql://user:pass@db/x``) would reach start-up lines and error messages. Every such place goes through
these functions:

* :func:`printable` — control characters (C0, DEL, C1, the Unicode line and paragraph separators, the bidi
  embeddings/overrides/isolates, lone surrogates) as ``\\n``, ``\\x1b``, ``\\u202e``; a backslash already in
  the text is left as it is (the result is for eyes and grep, not to be unescaped);
* :func:`excerpt` — a bounded, redacted (:func:`unimodel.redaction.redact`), printable piece of a long text;
* :func:`mask_url` — one URL with its password (or a user-only token) and secret-named query values as ``***``:
  yarl for http(s) URLs, SQLAlchemy's ``render_as_string(hide_password=True)`` for database URLs;
* :func:`mask_urls_in` — every URL inside a message (an exception's text, an error line);
* :func:`json_text` — ``json.dumps(..., ensure_ascii=False)``'s output with the characters JSON leaves raw
  (DEL, C1, the separators, bidi controls, lone surrogates) escaped as ``\\uXXXX``: the same JSON, safe to print.

The escaping is written here: ``repr`` and the ``unicode_escape`` codec escape every non-ASCII character too (a
model named ``Ünïcödé`` would print as ``\\xdc…``), and rich's ``escape`` handles markup only. A low module: it
imports nothing of unimodel but the redactor, so engines, telemetry and the CLI all use it.
"""

from __future__ import annotations

import re
from typing import Optional

from unimodel.redaction import redact

#: the most characters of an upstream's error body the server log keeps
EXCERPT_CHARS = 512
MASK = "***"
ELLIPSIS = "…"

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_JSON_RAW = re.compile("[\x7f-\x9f\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]")
# a redacted value is shorter than this: a value cut at the end of what was captured is dropped whole
_MARGIN = 256

_SECRET_QUERY = frozenset({"password", "passwd", "pwd", "sslpassword", "secret", "client_secret", "token",
                           "access_token", "auth_token", "api_key", "apikey", "api-key", "key", "sig",
                           "signature"})
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]+")
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)([^/?#]*)@")
_QUERY_SECRET = re.compile(r"([?&;]([^=&#;]+)=)([^&#;]*)")


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str, limit: Optional[int] = None) -> str:
    """``text`` with its control characters escaped; with ``limit``, its first ``limit`` characters and ``…``."""
    if limit is not None and len(text) > limit:
        text = text[:limit] + ELLIPSIS
    if text.isprintable():  # the common case, in C: every character escaped here is one str calls unprintable
        return text
    return _CONTROL.sub(_escape, text)


def json_text(text: str) -> str:
    """JSON text with the characters :func:`json.dumps` leaves raw under ``ensure_ascii=False`` escaped."""
    return _JSON_RAW.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """At most ``limit`` characters of ``text`` (and ``…`` when there was more), redacted, then printable.

    Only ``limit`` plus a margin is redacted (bounded work on a body of any size); when the text went on past
    that, the margin is dropped after redacting, so a value the capture cut in two (half a card number, that no
    longer passes its checksum) is not kept in part."""
    capture = text[:limit + _MARGIN]
    shown = redact(capture)
    cut = len(text) > len(capture)
    if cut:
        shown = shown[:max(0, len(shown) - _MARGIN)]
    if len(shown) > limit:
        shown, cut = shown[:limit], True
    return _CONTROL.sub(_escape, shown) + (ELLIPSIS if cut else "")


def mask_url(url: str) -> str:
    """``url`` without its credentials: ``http://user:***@gpu:8000/v1``, ``http://***@gpu/v1`` for a user-only
    token, ``postgresql://user:***@db/x``, and ``***`` for the values of secret-named query parameters
    (``?password=``, ``?api_key=`` …). A file path, or a URL with nothing to hide, is returned as it is."""
    scheme, sep, rest = url.partition("://")
    if not sep or ("@" not in rest and "=" not in rest):
        return url
    if re.split(r"[/?#]", rest, maxsplit=1)[0].count("@") > 1:  # an unencoded "@" in the password: the
        return _mask_by_pattern(url)  # libraries split at the first one, the pattern at the last
    try:
        if scheme.lower() in ("http", "https"):
            return _mask_http(url)
        return _mask_database(url)
    except Exception:  # noqa: BLE001 - what the libraries cannot parse is masked by the pattern below
        return _mask_by_pattern(url)


def mask_urls_in(text: str) -> str:
    """``text`` with every URL in it masked by :func:`mask_url` (for messages that may quote one)."""
    if "://" not in text:
        return text
    return _URL_IN_TEXT.sub(lambda m: mask_url(m.group()), text)


def _secret_name(name: str) -> bool:
    return name.lower() in _SECRET_QUERY


def _mask_http(url: str) -> str:
    from yarl import URL

    parsed = URL(url)
    if parsed.password is not None:
        url = str(parsed.with_password(MASK))
    elif parsed.user is not None:
        url = str(parsed.with_user(MASK))
    return _mask_query(url)


def _mask_database(url: str) -> str:
    from sqlalchemy.engine import make_url

    return _mask_query(make_url(url).render_as_string(hide_password=True))


def _mask_by_pattern(url: str) -> str:
    match = _USERINFO.match(url)
    if match is not None:
        user, colon, _ = match.group(2).partition(":")
        url = f"{match.group(1)}{user + ':' + MASK if colon else MASK}@{url[match.end():]}"
    return _mask_query(url)


def _mask_query(url: str) -> str:
    return _QUERY_SECRET.sub(lambda m: m.group(1) + MASK if _secret_name(m.group(2)) else m.group(0), url)
