"""Sealed reasoning (``shapes/responses/sealing.py``): what a server seals it opens again; a token changed, cut
short, sealed by another key or too long is a 400 saying the encrypted reasoning cannot be opened, never a 500;
keys rotate (the current one seals, older ones still open); what is sealed is bounded."""

from __future__ import annotations

import base64
import logging
import secrets
from typing import Any

import pytest

from unimodel.errors import EncryptedContentError, InvalidRequestError, StoredResponseTooLargeError
from unimodel.shapes.responses.sealing import VERSION, ReasoningSealer

OLD, NEW = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
REASONING: dict[str, Any] = {"type": "reasoning", "text": "Paris is the capital — é 🎉 \"quoted\"\n", "summary": []}


def refused(sealer: ReasoningSealer, token: Any) -> EncryptedContentError:
    with pytest.raises(EncryptedContentError) as caught:
        sealer.open(token, param="input[1].encrypted_content")
    err = caught.value
    assert isinstance(err, InvalidRequestError) and err.status_code == 400
    assert err.code == "invalid_encrypted_content" and err.param == "input[1].encrypted_content"
    assert err.message.startswith("the encrypted reasoning cannot be opened: ")
    return err


def test_what_is_sealed_opens_again() -> None:
    sealer = ReasoningSealer([NEW])
    token = sealer.seal(REASONING)
    assert token.startswith(f"{VERSION}.{sealer.current.key_id}.") and "Paris" not in token
    assert sealer.open(token) == REASONING
    assert sealer.seal(REASONING) != token  # a fresh nonce each time
    assert ReasoningSealer([NEW]).open(token) == REASONING  # the same key in another process (or a restart)


def test_a_changed_token_is_refused() -> None:
    sealer = ReasoningSealer([NEW])
    token = sealer.seal(REASONING)
    head, body = token.rsplit(".", 1)
    raw = bytearray(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    for position in (0, 12, len(raw) // 2, len(raw) - 1):  # the nonce, the ciphertext, the tag
        changed = bytearray(raw)
        changed[position] ^= 0x01
        forged = f"{head}.{base64.urlsafe_b64encode(bytes(changed)).rstrip(b'=').decode()}"
        assert "changed" in refused(sealer, forged).message
    other = ReasoningSealer([OLD, NEW])  # the header is authenticated too: another key id is not accepted
    moved = f"{VERSION}.{other.current.key_id}.{body}"
    refused(other, moved)


def test_a_cut_or_malformed_token_is_refused() -> None:
    sealer = ReasoningSealer([NEW])
    token = sealer.seal(REASONING)
    for bad in (token[:-1], token[:-7], token[: len(token) // 2], token.rsplit(".", 1)[0] + ".", token + "=",
                token + "x", "", "um1", "um1..", f"um1.{sealer.current.key_id}.AAAA", "not a token",
                f"um2.{sealer.current.key_id}." + token.rsplit(".", 1)[1], token.upper(), " " + token):
        refused(sealer, bad)
    for not_a_string in (None, 42, b"um1", ["um1"], {"token": token}):
        refused(sealer, not_a_string)


def test_a_token_sealed_with_another_key_is_refused() -> None:
    mine, theirs = ReasoningSealer([NEW]), ReasoningSealer([OLD])
    assert "a key this server does not hold" in refused(mine, theirs.seal(REASONING)).message
    ephemeral = ReasoningSealer()
    refused(mine, ephemeral.seal(REASONING))
    refused(ReasoningSealer(), ephemeral.seal(REASONING))  # another process's random key


def test_keys_rotate() -> None:
    before = ReasoningSealer([OLD])
    old_token = before.seal(REASONING)
    after = ReasoningSealer([NEW, OLD])  # the new key first; the old one still opens
    assert after.key_ids == [ReasoningSealer([NEW]).current.key_id, before.current.key_id]
    assert after.open(old_token) == REASONING
    new_token = after.seal(REASONING)
    assert new_token.split(".")[1] == after.current.key_id != before.current.key_id
    assert after.open(new_token) == REASONING
    refused(before, new_token)  # a server that does not have the new key yet
    refused(ReasoningSealer([NEW]), old_token)  # once the old key is retired


def test_sizes_are_bounded() -> None:
    sealer = ReasoningSealer([NEW], max_bytes=1024)
    fits = {"text": "x" * 1000}
    assert sealer.open(sealer.seal(fits)) == fits
    with pytest.raises(StoredResponseTooLargeError) as too_large:
        sealer.seal({"text": "x" * 1024})
    assert too_large.value.status_code == 400
    # the longest token it could have made opens; a longer one is refused before any work
    token = sealer.seal({"text": "x" * (1024 - len('{"text":""}'))})
    assert len(token) <= sealer.max_token_chars
    assert "longer than any" in refused(sealer, token + "A" * (sealer.max_token_chars - len(token) + 1)).message


def test_bad_keys_and_values_are_the_callers_mistakes() -> None:
    with pytest.raises(ValueError, match="at least 32"):
        ReasoningSealer(["short"])
    assert len(ReasoningSealer([NEW, NEW]).key_ids) == 1  # a line given twice is one key
    with pytest.raises(ValueError):
        ReasoningSealer([NEW]).seal(["not", "an", "object"])  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ReasoningSealer([NEW]).seal({"x": {1, 2}})


def test_a_random_key_is_warned_about_once(caplog: pytest.LogCaptureFixture) -> None:
    sealer = ReasoningSealer()
    assert sealer.ephemeral
    with caplog.at_level(logging.WARNING, logger="unimodel.responses"):
        for _ in range(3):
            sealer.open(sealer.seal(REASONING))
        ReasoningSealer([NEW]).seal(REASONING)
    warnings = [r for r in caplog.records if "--responses-key-file" in r.getMessage()]
    assert len(warnings) == 1 and "restart" in warnings[0].getMessage()
