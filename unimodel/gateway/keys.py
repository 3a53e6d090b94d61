"""Which key a request presents: the plain ``--api-key`` keys and the named, hashed ones of the config file.

A KDF check costs milliseconds (scrypt, :mod:`unimodel.gateway.keyhash`), far too much per request, so each
distinct key is checked once and the answer kept in an in-process map. The map is keyed by a fast digest of
the presented key — BLAKE2b keyed with a random secret made when the process starts — so it never holds a key,
nor an unkeyed hash that would let someone who reads the process's memory test guesses at full speed, and a
look-up costs a microsecond. It is bounded on both sides:

* *right* keys: one entry per record at most (only a record's own key derives its hash), so its size is the
  number of records;
* *wrong* keys are never entered there. A wrong key that carries a record's prefix costs one KDF run and is
  then kept in a separate LRU of wrong digests (``max_wrong`` entries, oldest dropped), so a client retrying a
  stale key costs one run, not one per request, and no stream of wrong keys grows memory past the bound.
  A wrong key without any record's prefix costs no KDF run at all: this is why records keep the public
  prefix (``sk-um-`` and 6 characters), so a flood of made-up keys costs a dict look-up each, not a KDF run
  per record per request. Records without a prefix (hashes made elsewhere) are checked for every key that
  no cached answer covers.

KDF runs happen in a two-thread pool, so the event loop never stalls on one and a flood of prefixed wrong
keys can take at most two cores; concurrent requests with the same unchecked key share one run.

The keys can change while the server runs (``server/reload.py`` re-reads them): the keys and everything learnt
about them (the two caches, the runs in progress) are one object, swapped whole by :meth:`KeyRing.replace`, so
a request reads one consistent set. The right answers carry over by key hash to the new records (a key revoked
by the reload is refused at once, though its answer was cached), the wrong ones are dropped (a key refused
before may be one just added), and a check whose KDF run straddles a swap is made again against the new set.
Written by hand: it is a dict, an ``OrderedDict`` and a thread pool, and no cache library knows which answers
may be cached.

A plain ``--api-key`` key is named after itself (:func:`plain_key_name`), not after its place in the list:
limits buckets, idempotency scopes, the request log and the metrics know a caller by name, and a name by
position would pass to another key when one is removed. The name must be the same in every replica and
after every restart (buckets and scopes live in Redis), so it cannot be keyed with a per-process secret, and
no secret is sure to be shared; it is a slow, salted hash instead (scrypt, the cost of a named key's check,
once per key per process), cut to 32 bits: a name does not tell a key, and testing a guess against it costs a
KDF run.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import secrets
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional

from unimodel.errors import AuthenticationError
from unimodel.gateway.keyhash import DEFAULT_N, DEFAULT_P, DEFAULT_R, MAX_KEY_CHARS, KeyHash, parse_hash
from unimodel.gateway.policy import KeyPolicy
from unimodel.service.context import Caller

MISSING = "Missing API key: send 'Authorization: Bearer KEY' (or 'x-api-key: KEY')."
WRONG = "Incorrect API key provided."
REVOKED = "This API key has been revoked."

PLAIN_NAME_PREFIX = "key-"
PLAIN_NAME_HEX = 8  # 32 bits of the hash: a name, not a fingerprint (many keys share each name)
_PLAIN_NAME_SALT = b"unimodel plain --api-key name v1"


@functools.lru_cache(maxsize=1024)
def plain_key_name(key: str) -> str:
    """The stable name of a plain ``--api-key`` key: ``key-`` and 8 hex digits of a salted scrypt of the key.

    The same key has the same name in every process, whatever its place among the others; the name does not
    reveal the key (32 bits of a slow hash). Cached: every app built in one process (tests, the metrics' label
    bounds and the key ring) derives it once."""
    digest = hashlib.scrypt(key.encode("utf-8", "surrogatepass"), salt=_PLAIN_NAME_SALT, n=DEFAULT_N, r=DEFAULT_R,
                            p=DEFAULT_P, dklen=16)
    return PLAIN_NAME_PREFIX + digest.hex()[:PLAIN_NAME_HEX]


def plain_key_names(keys: Sequence[str]) -> list[str]:
    """The names of the plain keys, in their order, each once (a key given twice is one key); ``ValueError`` in
    the (2**-32) case of two keys whose names collide."""
    names: dict[str, str] = {}
    for key in keys:
        name = plain_key_name(key)
        if names.setdefault(name, key) != key:
            raise ValueError(f"two --api-key keys have the same name '{name}'; replace one of them")
    return list(names)


@dataclass(frozen=True, slots=True)
class _Record:
    caller: Caller
    revoked: bool
    prefix: Optional[str]
    hashed: KeyHash
    key_hash: str  # as configured: the record's identity across reloads (the same hash is the same key)


@dataclass(frozen=True, slots=True)
class KeyChanges:
    """What a :meth:`KeyRing.replace` changed, by key name (never a key or a hash)."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    revoked: tuple[str, ...] = ()
    restored: tuple[str, ...] = ()  # revoked before, not any more
    changed: tuple[str, ...] = ()  # another hash or policy under the same name

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.revoked or self.restored or self.changed)

    def summary(self) -> str:
        """``added c; revoked b`` (each kind that has names), or ``no change``."""
        parts = [f"{kind} {', '.join(names)}" for kind, names in (
            ("added", self.added), ("revoked", self.revoked), ("changed", self.changed),
            ("restored", self.restored), ("removed", self.removed)) if names]
        return "; ".join(parts) or "no change"


class _Keys:
    """One set of keys and what was learnt about them: the ring swaps a whole ``_Keys`` at once (a reload), so a
    request reads one consistent set, and no answer cached for the old keys is ever read against the new."""

    def __init__(self, plain: Sequence[str], named: Sequence[KeyPolicy]) -> None:
        unique = list(dict.fromkeys(plain))
        self.plain = [(Caller(name=name), k.encode("utf-8", "surrogatepass"))
                      for name, k in zip(plain_key_names(unique), unique)]
        self.records = [_Record(k.caller(), k.revoked, k.prefix, parse_hash(k.key_hash), k.key_hash) for k in named]
        self.unprefixed = [r for r in self.records if r.prefix is None]
        self.by_prefix: dict[str, list[_Record]] = {}
        self.by_hash: dict[str, _Record] = {}
        for record in self.records:
            self.by_hash.setdefault(record.key_hash, record)
            if record.prefix is not None:
                self.by_prefix.setdefault(record.prefix, []).append(record)
        self.prefix_len = len(next(iter(self.by_prefix), ""))
        self.right: dict[bytes, _Record] = {}
        self.wrong: OrderedDict[bytes, None] = OrderedDict()
        self.pending: dict[bytes, asyncio.Future[Optional[_Record]]] = {}

    def changes_from(self, old: "_Keys") -> KeyChanges:
        before = {caller.name: ("plain",) for caller, _ in old.plain} | {r.caller.name: r for r in old.records}
        after = {caller.name: ("plain",) for caller, _ in self.plain} | {r.caller.name: r for r in self.records}
        revoked, restored, changed = [], [], []
        for name in before.keys() & after.keys():
            was, now = before[name], after[name]
            if isinstance(was, _Record) and isinstance(now, _Record):
                if not was.revoked and now.revoked:
                    revoked.append(name)
                elif was.revoked and not now.revoked:
                    restored.append(name)
                elif (was.key_hash, was.caller, was.prefix) != (now.key_hash, now.caller, now.prefix):
                    changed.append(name)
        return KeyChanges(added=tuple(n for n in after if n not in before), removed=tuple(n for n in before
                          if n not in after), revoked=tuple(sorted(revoked)), restored=tuple(sorted(restored)),
                          changed=tuple(sorted(changed)))


class KeyRing:
    """Resolves a presented key to its :class:`Caller`; raises a 401 for a wrong or revoked key. :meth:`replace`
    swaps in another set of keys while requests are served (``server/reload.py``)."""

    def __init__(self, plain: Sequence[str] = (), named: Sequence[KeyPolicy] = (), *, max_wrong: int = 1024,
                 kdf_threads: int = 2) -> None:
        self._keys = _Keys(plain, named)
        self._digest_key = secrets.token_bytes(32)
        self.max_wrong = max_wrong
        self._kdf_threads = kdf_threads
        self._pool: Optional[ThreadPoolExecutor] = None
        self.kdf_runs = 0  # how many KDF checks ran (for tests and /ready-style introspection)

    @property
    def enabled(self) -> bool:
        """Whether any key is configured (without keys every caller is anonymous)."""
        return bool(self._keys.plain or self._keys.records)

    @property
    def plain_names(self) -> list[str]:
        """The names of the plain keys, in their order (for the server's start-up line)."""
        return [caller.name for caller, _ in self._keys.plain]

    @property
    def names(self) -> list[str]:
        """Every key's name, plain keys first (revoked keys included)."""
        return [*self.plain_names, *(r.caller.name for r in self._keys.records)]

    @property
    def cached(self) -> tuple[int, int]:
        """(right keys, wrong keys) held in the caches."""
        return len(self._keys.right), len(self._keys.wrong)

    def replace(self, plain: Sequence[str] = (), named: Sequence[KeyPolicy] = ()) -> KeyChanges:
        """Serve with these keys from now on: one assignment, on the event loop. The answers already learnt carry
        over where the same key hash is still configured, each pointing at its new record (a key revoked now is
        refused at once, cached or not; a key whose policy changed gets the new policy); a key removed is
        forgotten, and every wrong answer too (a key refused before may be one added now). A request already
        admitted keeps the caller it got. Building the set costs a scrypt run per plain key this process has
        not named yet (:func:`plain_key_name`, cached): name them first off the loop, as the reload does."""
        old, new = self._keys, _Keys(plain, named)
        for digest, record in old.right.items():
            now = new.by_hash.get(record.key_hash)
            if now is not None:
                new.right[digest] = now
        self._keys = new
        return new.changes_from(old)

    async def caller(self, presented: str) -> Caller:
        """The caller a presented key belongs to; :class:`AuthenticationError` when it is wrong or revoked."""
        if not presented or len(presented) > MAX_KEY_CHARS:
            raise AuthenticationError(WRONG)
        given = presented.encode("utf-8", "surrogatepass")
        for _ in range(3):  # again when the keys were replaced during a KDF run (a reload): at most twice more
            keys = self._keys
            found = await self._find(keys, presented, given)
            if self._keys is keys:
                break
        if found is None:
            raise AuthenticationError(WRONG)
        if isinstance(found, _Record):
            if found.revoked:
                raise AuthenticationError(REVOKED)
            return found.caller
        return found

    async def _find(self, keys: _Keys, presented: str, given: bytes) -> "Optional[Caller | _Record]":
        if keys.plain:
            match = None
            for caller, key in keys.plain:  # every key compared: the timing says nothing about which matched
                if hmac.compare_digest(given, key) and match is None:
                    match = caller
            if match is not None:
                return match
        if not keys.records:
            return None
        digest = hashlib.blake2b(given, key=self._digest_key, digest_size=32).digest()
        record = keys.right.get(digest)
        if record is None:
            record = await self._checked(keys, presented, digest)
        return record

    async def _checked(self, keys: _Keys, presented: str, digest: bytes) -> Optional[_Record]:
        if digest in keys.wrong:
            keys.wrong.move_to_end(digest)
            return None
        candidates = self._candidates(keys, presented)
        if not candidates:
            return None  # no record could hold this key: answered without a KDF run, nothing to remember
        pending = keys.pending.get(digest)
        if pending is None:
            pending = asyncio.ensure_future(self._run_kdf(presented, candidates))
            keys.pending[digest] = pending
            pending.add_done_callback(lambda _: keys.pending.pop(digest, None))
        record = await asyncio.shield(pending)  # a caller that leaves does not cancel the others' answer
        self._remember(keys, digest, record)
        return record

    @staticmethod
    def _candidates(keys: _Keys, presented: str) -> list[_Record]:
        by_prefix = keys.by_prefix.get(presented[: keys.prefix_len], []) if keys.by_prefix else []
        return [*by_prefix, *keys.unprefixed]

    async def _run_kdf(self, presented: str, candidates: list[_Record]) -> Optional[_Record]:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._kdf_threads, thread_name_prefix="unimodel-kdf")
        loop = asyncio.get_running_loop()
        self.kdf_runs += 1
        return await loop.run_in_executor(self._pool, _match, presented, candidates)

    def _remember(self, keys: _Keys, digest: bytes, record: Optional[_Record]) -> None:
        if record is not None:
            if len(keys.right) < len(keys.records):  # one digest per record: a bound by construction
                keys.right[digest] = record
            return
        keys.wrong[digest] = None
        keys.wrong.move_to_end(digest)
        while len(keys.wrong) > self.max_wrong:
            keys.wrong.popitem(last=False)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


def _match(presented: str, candidates: list[_Record]) -> Optional[_Record]:
    found = None
    for record in candidates:  # every candidate checked, as the plain keys are
        if record.hashed.matches(presented) and found is None:
            found = record
    return found
