"""Named keys: the salted KDF hash, the key ring's cache (a wrong key is never cached as right, and the caches
are bounded), and the auth stage's 401s and context."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import pytest

from unimodel.errors import AuthenticationError
from unimodel.gateway.auth import ApiKeyAuth
from unimodel.gateway.keyhash import hash_key, key_prefix, new_key, parse_hash
from unimodel.gateway.keys import MISSING, REVOKED, WRONG, KeyRing, plain_key_name
from unimodel.gateway.policy import KeyPolicy
from unimodel.service.context import RequestContext
from unimodel.service.pipeline import Call

FAST = {"n": 2**10, "r": 8, "p": 1}  # the real cost is 2**14: tests only need the same code path


def record(name: str, secret: str, *, prefixed: bool = True, **policy: Any) -> KeyPolicy:
    return KeyPolicy(name=name, key_hash=hash_key(secret, **FAST), prefix=key_prefix(secret) if prefixed else None,
                     **policy)


def call(headers: dict[str, str]) -> Call:
    async def no_body() -> bytes:
        return b""

    return Call(RequestContext("r"), headers, no_body)


# ---- the hash -------------------------------------------------------------------------------------------


def test_hash_is_versioned_salted_and_verifies() -> None:
    secret = new_key()
    assert secret.startswith("sk-um-") and len(secret) == 6 + 43
    one, two = hash_key(secret, **FAST), hash_key(secret, **FAST)
    assert one.startswith("scrypt$1024$8$1$") and one != two  # a fresh salt each time
    assert secret not in one
    # KeyHash.matches is what the key ring checks a presented key with
    assert parse_hash(one).matches(secret) and parse_hash(two).matches(secret)
    assert not parse_hash(one).matches(secret + "x") and not parse_hash(one).matches(new_key())
    assert parse_hash(one).encode() == one


def test_default_cost_is_scrypt_2_14() -> None:
    parsed = parse_hash(hash_key("k"))
    assert (parsed.n, parsed.r, parsed.p, len(parsed.salt), len(parsed.digest)) == (2**14, 8, 1, 16, 32)


@pytest.mark.parametrize("encoded", [
    "sha256$abc", "scrypt$1000$8$1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",  # N not a power of two
    "scrypt$2097152$8$1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",  # N above 2**20
    "scrypt$1024$8$1$c2Fs$aGFzaGhhc2hoYXNoaGFzaA",  # salt too short
    "scrypt$1024$8$1$c2FsdHNhbHQ$aGFzaA",  # hash too short
    "plain-text-secret",
])
def test_bad_hashes_are_refused_without_echoing_them(encoded: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_hash(encoded)
    assert encoded not in str(info.value)


# ---- the ring and its caches -------------------------------------------------------------------------------


async def test_plain_keys_are_named_after_themselves() -> None:
    ring = KeyRing(["alpha", "beta"])
    assert (await ring.caller("beta")).name == plain_key_name("beta") == KeyRing(["beta"]).plain_names[0]
    assert re.fullmatch(r"key-[0-9a-f]{8}", plain_key_name("beta")) and "beta" not in plain_key_name("beta")
    assert ring.plain_names == [plain_key_name("alpha"), plain_key_name("beta")]
    with pytest.raises(AuthenticationError, match=WRONG):
        await ring.caller("gamma")


async def test_named_key_gets_its_policy_and_one_kdf_run() -> None:
    secret = new_key()
    ring = KeyRing(named=[record("team-a", secret, rpm=60, routes=["default"], allowed_tools=["f"],
                                 max_tokens_cap=100)])
    for _ in range(5):
        caller = await ring.caller(secret)
    assert caller.name == "team-a" and caller.rpm == 60 and caller.max_tokens_cap == 100
    assert caller.routes == frozenset({"default"}) and caller.allowed_tools == frozenset({"f"})
    assert ring.kdf_runs == 1 and ring.cached == (1, 0)
    ring.close()


async def test_a_wrong_key_is_never_cached_as_right() -> None:
    secret = new_key()
    ring = KeyRing(named=[record("a", secret)])
    wrong = secret[:-1] + ("A" if secret[-1] != "A" else "B")  # same prefix: it costs one KDF run
    for _ in range(4):
        with pytest.raises(AuthenticationError, match=WRONG):
            await ring.caller(wrong)
    assert ring.cached == (0, 1) and ring.kdf_runs == 1  # remembered as wrong, checked once
    assert (await ring.caller(secret)).name == "a"
    with pytest.raises(AuthenticationError):
        await ring.caller(wrong)
    assert ring.cached == (1, 1)
    ring.close()


async def test_wrong_keys_cannot_grow_the_cache_past_its_bound() -> None:
    secret = new_key()
    ring = KeyRing(named=[record("a", secret)], max_wrong=8)
    prefix = key_prefix(secret)
    for i in range(40):
        with pytest.raises(AuthenticationError):
            await ring.caller(f"{prefix}{i:043d}")
    assert ring.cached == (0, 8)
    ring.close()


async def test_a_key_without_a_known_prefix_costs_no_kdf_run() -> None:
    ring = KeyRing(named=[record("a", new_key())])
    for _ in range(20):
        with pytest.raises(AuthenticationError, match=WRONG):
            await ring.caller(new_key())
    with pytest.raises(AuthenticationError):
        await ring.caller("x" * 10_000)  # too long to be a key: refused before any hashing
    assert ring.kdf_runs == 0 and ring.cached == (0, 0)


async def test_records_without_prefix_are_checked_for_any_key() -> None:
    secret = "operator-chose-this"
    ring = KeyRing(named=[record("legacy", secret, prefixed=False)])
    assert (await ring.caller(secret)).name == "legacy"
    with pytest.raises(AuthenticationError):
        await ring.caller("something-else")
    assert ring.kdf_runs == 2
    ring.close()


async def test_concurrent_requests_with_one_new_key_share_one_kdf_run() -> None:
    secret = new_key()
    ring = KeyRing(named=[record("a", secret), record("b", new_key())])
    callers = await asyncio.gather(*(ring.caller(secret) for _ in range(8)))
    assert {c.name for c in callers} == {"a"} and ring.kdf_runs == 1
    ring.close()


async def test_revoked_key_is_401_with_its_own_message() -> None:
    secret = new_key()
    ring = KeyRing(named=[record("gone", secret, revoked=True)])
    with pytest.raises(AuthenticationError, match=REVOKED) as info:
        await ring.caller(secret)
    assert info.value.status_code == 401 and info.value.code == "invalid_api_key"
    with pytest.raises(AuthenticationError, match=WRONG):  # a wrong key does not learn that one was revoked
        await ring.caller(secret[:-2] + "zz")
    ring.close()


# ---- the stage -------------------------------------------------------------------------------------------


async def test_auth_stage_sets_name_and_caller_never_the_key(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secret = new_key()
    stage = ApiKeyAuth(["plain-key"], [record("team-a", secret, tpm=1000)])
    c = call({"authorization": f"Bearer {secret}"})
    await stage.enter(c)
    assert c.ctx.key_name == "team-a" and c.ctx.caller.tpm == 1000
    plain = call({"authorization": "Bearer plain-key"})
    await stage.enter(plain)
    assert plain.ctx.key_name == plain_key_name("plain-key") and plain.ctx.caller.rpm is None
    for headers, message in (({}, MISSING), ({"authorization": "Basic abc"}, MISSING),
                             ({"authorization": "Bearer " + secret + "x"}, WRONG)):
        with pytest.raises(AuthenticationError) as info:
            await stage.enter(call(headers))
        assert info.value.message == message and secret not in info.value.message
    assert secret not in caplog.text
    await stage.aclose()


async def test_no_keys_means_anonymous() -> None:
    c = call({})
    await ApiKeyAuth().enter(c)
    assert c.ctx.key_name == "anonymous" and c.ctx.caller.name == "anonymous"


async def test_only_revoked_keys_still_require_a_key() -> None:
    stage = ApiKeyAuth([], [record("gone", new_key(), revoked=True)])
    with pytest.raises(AuthenticationError, match=re.escape(MISSING)):
        await stage.enter(call({}))


async def test_the_key_may_come_as_x_api_key_as_anthropics_clients_send_it() -> None:
    secret = new_key()
    stage = ApiKeyAuth([], [record("team-a", secret)])
    for headers in ({"x-api-key": secret}, {"x-api-key": secret, "authorization": f"Bearer {secret}"}):
        c = call(headers)
        await stage.enter(c)
        assert c.ctx.key_name == "team-a"
    with pytest.raises(AuthenticationError) as info:
        await stage.enter(call({"x-api-key": secret + "x"}))
    assert info.value.message == WRONG
    with pytest.raises(AuthenticationError, match=re.escape(MISSING)):
        await stage.enter(call({"x-api-key": "  "}))
    await stage.aclose()


async def test_two_different_keys_in_the_two_headers_are_refused_whichever_is_right() -> None:
    """Which header counts would otherwise depend on the server: a good key beside a wrong one is a 400."""
    from unimodel.errors import InvalidRequestError

    secret = new_key()
    stage = ApiKeyAuth([], [record("team-a", secret)])
    for headers in ({"x-api-key": secret, "authorization": "Bearer sk-wrong"},
                    {"x-api-key": "sk-wrong", "authorization": f"Bearer {secret}"}):
        with pytest.raises(InvalidRequestError) as info:
            await stage.enter(call(headers))
        assert info.value.status_code == 400 and info.value.param == "x-api-key"
    await stage.aclose()


# ---- replacing the keys while serving (server/reload.py) -----------------------------------------------------


async def test_replace_carries_the_cached_answers_over_to_the_new_records_by_hash() -> None:
    a, b, c = new_key(), new_key(), new_key()
    rec_a, rec_b, rec_c = record("a", a), record("b", b, rpm=5), record("c", c)
    ring = KeyRing(named=[rec_a, rec_b])
    await ring.caller(a)
    await ring.caller(b)
    with pytest.raises(AuthenticationError, match=re.escape(WRONG)):
        await ring.caller(c)  # not a key yet: remembered as wrong
    runs = ring.kdf_runs
    revoked_b = rec_b.model_copy(update={"revoked": True})
    changes = ring.replace(named=[rec_a.model_copy(update={"rpm": 7}), revoked_b, rec_c])
    assert changes.summary() == "added c; revoked b; changed a" and bool(changes)
    assert ring.cached == (2, 0)  # a and b carried over (same hashes), the wrong answer forgotten
    assert (await ring.caller(a)).rpm == 7  # the new policy, from the cache: no KDF run
    with pytest.raises(AuthenticationError, match=re.escape(REVOKED)):
        await ring.caller(b)  # cached, and refused at once
    assert ring.kdf_runs == runs
    assert (await ring.caller(c)).name == "c" and ring.kdf_runs == runs + 1  # a key added is checked afresh
    assert ring.names == ["a", "b", "c"]
    # removed: forgotten, cache and all; restored: served again
    changes = ring.replace(named=[rec_b, rec_c])
    assert changes.summary() == "restored b; removed a"
    with pytest.raises(AuthenticationError, match=re.escape(WRONG)):
        await ring.caller(a)
    assert (await ring.caller(b)).name == "b"
    assert not ring.replace(named=[rec_b, rec_c]) and ring.replace(named=[rec_b, rec_c]).summary() == "no change"


async def test_replace_swaps_the_plain_keys_too() -> None:
    ring = KeyRing(plain=["sk-one"])
    assert (await ring.caller("sk-one")).name == plain_key_name("sk-one")
    changes = ring.replace(plain=["sk-two"])
    assert changes.added == (plain_key_name("sk-two"),) and changes.removed == (plain_key_name("sk-one"),)
    with pytest.raises(AuthenticationError):
        await ring.caller("sk-one")
    assert (await ring.caller("sk-two")).name == plain_key_name("sk-two")


async def test_a_check_that_straddles_a_replace_is_made_against_the_new_keys() -> None:
    a = new_key()
    rec_a = record("a", a)
    ring = KeyRing(named=[rec_a])
    pending = asyncio.ensure_future(ring.caller(a))  # its KDF run starts in the pool …
    await asyncio.sleep(0)
    ring.replace(named=[rec_a.model_copy(update={"revoked": True})])  # … and the key is revoked meanwhile
    with pytest.raises(AuthenticationError, match=re.escape(REVOKED)):
        await pending
