"""Sealed reasoning: ``include: ["reasoning.encrypted_content"]`` of the Responses API.

A client that does not let the server store its conversation (``store: false``, as Codex CLI runs) still gets
the model's reasoning carried from one turn to the next: the server hands it out sealed, as a reasoning item's
``encrypted_content``, and the client sends it back as it is. Sealed means authenticated encryption: the client
can neither read nor change it, so what comes back is what the model thought, not what a client wrote in its
place. AES-256-GCM from ``cryptography`` (the nonce is random, 96 bits, per token).

A token is ``um1.<key id>.<base64url of nonce, ciphertext and tag>``: the version prefix (``um1``), then the id
of the key that sealed it (8 hex digits derived from the key, never the key), both bound into the tag as
associated data. Keys can rotate: the server seals with its current key and opens with it or any older key it
still holds (``--responses-key-file``: one secret a line, the current one first, each at least 32 characters;
each becomes an AES key through HKDF-SHA256). Without a key file the server makes a random key when it starts:
sealed reasoning then does not survive a restart, nor cross to another replica or worker, which is logged as a
warning the first time something is sealed.

A token that cannot be opened (tampered with, cut short, sealed by a key this server does not hold, another
version, longer than the bound) is :class:`~unimodel.errors.EncryptedContentError`, a 400 saying so, never a
500. Sizes are bounded both ways: what is sealed (``max_bytes`` of JSON, else
:class:`~unimodel.errors.StoredResponseTooLargeError`) and so the longest token that can be opened.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
from collections.abc import Sequence
from typing import Any, Optional

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from unimodel.errors import EncryptedContentError, StoredResponseTooLargeError

log = logging.getLogger("unimodel.responses")

VERSION = "um1"
DEFAULT_MAX_BYTES = 4 * 1024 * 1024
MIN_SECRET_CHARS = 32
_NONCE_BYTES = 12
_TAG_BYTES = 16
_KEY_INFO = b"unimodel responses: sealed reasoning, AES-256-GCM key, v1"
_ID_INFO = b"unimodel responses: sealed reasoning, key id, v1"
_TOKEN = re.compile(r"([a-z0-9]{1,8})\.([0-9a-f]{8})\.([A-Za-z0-9_-]+)\Z")


class SealingKey:
    """One AES-256-GCM key derived from an operator's secret (or random), with its id."""

    __slots__ = ("aead", "key_id")

    def __init__(self, material: bytes) -> None:
        key = HKDF(algorithm=SHA256(), length=32, salt=None, info=_KEY_INFO).derive(material)
        self.key_id = HKDF(algorithm=SHA256(), length=4, salt=None, info=_ID_INFO).derive(material).hex()
        self.aead = AESGCM(key)

    def __repr__(self) -> str:
        return f"SealingKey(key_id={self.key_id!r})"


class ReasoningSealer:
    """Seals reasoning items and opens them again; ``secrets`` are the operator's keys, the current first (none:
    a random key for this process)."""

    def __init__(self, secrets: Sequence[str] = (), *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_bytes < 1:
            raise ValueError("the largest sealed reasoning must be positive")
        self.max_bytes = max_bytes
        # the longest token the longest plaintext makes (base64 without padding), and its prefix
        self.max_token_chars = len(VERSION) + 10 + -(-4 * (_NONCE_BYTES + max_bytes + _TAG_BYTES) // 3)
        self.ephemeral = not secrets
        self._warned = False
        keys: list[SealingKey] = []
        if secrets:
            seen: set[str] = set()
            for number, secret in enumerate(secrets, start=1):
                if len(secret) < MIN_SECRET_CHARS:
                    raise ValueError(f"key {number} of the sealing keys is {len(secret)} characters; each needs at "
                                     f"least {MIN_SECRET_CHARS} (e.g. openssl rand -base64 32)")
                if secret in seen:
                    continue
                seen.add(secret)
                keys.append(SealingKey(secret.encode("utf-8")))
        else:
            keys.append(SealingKey(os.urandom(32)))
        self._keys = {key.key_id: key for key in keys}
        if len(self._keys) != len(keys):
            raise ValueError("two sealing keys have the same key id; make a new key")
        self.current = keys[0]

    @property
    def key_ids(self) -> list[str]:
        """The ids of the keys it opens with, the current one first."""
        return list(self._keys)

    def seal(self, reasoning: dict[str, Any]) -> str:
        """``reasoning`` (a JSON object, e.g. the reasoning item's text and summary) as a token."""
        if not isinstance(reasoning, dict):
            raise ValueError("sealed reasoning is a JSON object")
        try:
            plain = orjson.dumps(reasoning)
        except TypeError as exc:
            raise ValueError(f"sealed reasoning is not JSON: {exc}") from exc
        if len(plain) > self.max_bytes:
            raise StoredResponseTooLargeError(
                f"the reasoning is {len(plain)} bytes, more than encrypted reasoning holds ({self.max_bytes}); "
                'ask without include: ["reasoning.encrypted_content"]', param="include")
        if self.ephemeral and not self._warned:
            self._warned = True
            log.warning("sealing reasoning with a key made for this process: the encrypted_content it hands out "
                        "cannot be opened after a restart, nor by another replica or worker; set "
                        "--responses-key-file")
        key = self.current
        nonce = os.urandom(_NONCE_BYTES)
        head = f"{VERSION}.{key.key_id}"
        sealed = key.aead.encrypt(nonce, plain, head.encode("ascii"))
        return f"{head}.{base64.urlsafe_b64encode(nonce + sealed).rstrip(b'=').decode('ascii')}"

    def open(self, token: str, *, param: Optional[str] = None) -> dict[str, Any]:
        """The reasoning ``token`` holds; :class:`~unimodel.errors.EncryptedContentError` (400, naming
        ``param``) for any token this server cannot open."""
        if not isinstance(token, str):
            raise self._refuse("it is not a string", param)
        if len(token) > self.max_token_chars:
            raise self._refuse(f"it is longer than any this server makes ({self.max_token_chars} characters)", param)
        match = _TOKEN.match(token)
        if match is None:
            raise self._refuse("it is not a token this server makes", param)
        version, key_id, body = match.groups()
        if version != VERSION:
            raise self._refuse(f"it is of another version ({version})", param)
        key = self._keys.get(key_id)
        if key is None:
            raise self._refuse("it was sealed with a key this server does not hold (another server's, or one "
                               "retired since)", param)
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        except (binascii.Error, ValueError):
            raise self._refuse("it is cut short", param) from None
        if len(raw) < _NONCE_BYTES + _TAG_BYTES:
            raise self._refuse("it is cut short", param)
        try:
            plain = key.aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], f"{version}.{key_id}".encode("ascii"))
        except InvalidTag:
            raise self._refuse("it was changed or cut short", param) from None
        try:
            value = orjson.loads(plain)
        except orjson.JSONDecodeError:
            value = None
        if not isinstance(value, dict):  # sealed by us, so never: a key shared with something else
            raise self._refuse("it does not hold reasoning", param)
        return value

    @staticmethod
    def _refuse(why: str, param: Optional[str]) -> EncryptedContentError:
        return EncryptedContentError(f"the encrypted reasoning cannot be opened: {why}", param=param)

