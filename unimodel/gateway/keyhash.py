"""API keys at rest: made, hashed with a salted KDF, and checked in constant time.

A key is ``sk-um-`` and 32 random bytes (43 URL-safe characters, 256 bits). The config file holds only its hash,
``scrypt$N$r$p$SALT$HASH`` (the scheme first, so a later scheme can sit beside it; SALT and HASH in unpadded
URL-safe base64), made with :func:`hashlib.scrypt` and a fresh 16-byte salt per key, and its *prefix*, the first
six random characters (``sk-um-AbCdEf``): 36 of the 256 bits, public like the ``sk-...abcd`` a dashboard shows, so
that a request's key is checked against the one or two records it can belong to, not against every record
(:mod:`unimodel.gateway.keys` explains why that matters). Written with the standard library: scrypt and
``hmac.compare_digest`` are in it, and a password-hashing package would add a dependency for the same calls.

A 256-bit random key needs no stretching to resist guessing; the KDF is there so that a leaked config file
does not hand out keys an operator chose by hand, and it costs milliseconds, once per key per process.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

KEY_PREFIX = "sk-um-"
PREFIX_CHARS = 6  # random characters of a key that its record's ``prefix`` keeps
SCHEME = "scrypt"
# scrypt's cost: N=2**14, r=8 → 16 MiB and tens of milliseconds per check (the RFC 7914 interactive setting)
DEFAULT_N, DEFAULT_R, DEFAULT_P = 2**14, 8, 1
SALT_BYTES, HASH_BYTES = 16, 32
MAX_KEY_CHARS = 256  # a presented key longer than this is wrong without any hashing

_B64 = r"[A-Za-z0-9_-]+"
_ENCODED = re.compile(rf"{SCHEME}\$(\d{{1,8}})\$(\d{{1,3}})\$(\d{{1,3}})\$({_B64})\$({_B64})")


@dataclass(frozen=True, slots=True)
class KeyHash:
    """A parsed ``scrypt$N$r$p$SALT$HASH``."""

    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes

    def encode(self) -> str:
        return f"{SCHEME}${self.n}${self.r}${self.p}${_b64(self.salt)}${_b64(self.digest)}"

    def derive(self, key: str) -> bytes:
        return _scrypt(key, self.salt, self.n, self.r, self.p, len(self.digest))

    def matches(self, key: str) -> bool:
        """Whether ``key`` is the key this hash was made from (the comparison takes constant time)."""
        if len(key) > MAX_KEY_CHARS:
            return False
        return hmac.compare_digest(self.derive(key), self.digest)


def new_key() -> str:
    """A fresh API key: ``sk-um-`` and 32 random bytes, URL-safe."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_prefix(key: str) -> str:
    """The public part of a key made by :func:`new_key` (``sk-um-`` and six characters)."""
    return key[: len(KEY_PREFIX) + PREFIX_CHARS]


def hash_key(key: str, *, n: int = DEFAULT_N, r: int = DEFAULT_R, p: int = DEFAULT_P) -> str:
    """The encoded salted hash of ``key`` (``scrypt$N$r$p$SALT$HASH``)."""
    _check_cost(n, r, p)
    salt = secrets.token_bytes(SALT_BYTES)
    return KeyHash(n, r, p, salt, _scrypt(key, salt, n, r, p, HASH_BYTES)).encode()


def parse_hash(encoded: str) -> KeyHash:
    """Parse an encoded hash; ``ValueError`` saying what is wrong (never echoing the value)."""
    match = _ENCODED.fullmatch(encoded.strip())
    if match is None:
        raise ValueError("key_hash must look like scrypt$N$r$p$SALT$HASH (made by `unimodel keys create`)")
    n, r, p = (int(match.group(i)) for i in (1, 2, 3))
    _check_cost(n, r, p)
    try:
        salt, digest = _unb64(match.group(4)), _unb64(match.group(5))
    except (binascii.Error, ValueError):
        raise ValueError("key_hash holds a salt or hash that is not URL-safe base64") from None
    if len(salt) < 8 or not 16 <= len(digest) <= 64:
        raise ValueError("key_hash needs a salt of at least 8 bytes and a hash of 16 to 64 bytes")
    return KeyHash(n, r, p, salt, digest)


def _check_cost(n: int, r: int, p: int) -> None:
    # bounded, so that a config file cannot make one check take seconds or gigabytes
    if n < 2 or n & (n - 1) or n > 2**20 or not 1 <= r <= 32 or not 1 <= p <= 16 or 128 * n * r > 2**30:
        raise ValueError("scrypt cost out of range: N a power of two up to 2**20, r 1..32, p 1..16, "
                         "128·N·r at most 1 GiB")


def _scrypt(key: str, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    return hashlib.scrypt(key.encode("utf-8", "surrogatepass"), salt=salt, n=n, r=r, p=p, dklen=length,
                          maxmem=128 * r * (n + p) + 2**20)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
