"""Redact personal data and secrets from text before it is stored: the kind is kept, the value is not.

``redact("mail bob@example.com")`` gives ``"mail <EMAIL>"``. The kinds (replaced in this order, except that
international phone numbers go before card numbers, which they can look like):

* ``<BEARER>``: the token after ``Bearer`` (the word is kept);
* ``<API_KEY>``: keys with a known shape (``sk-…`` as OpenAI's and unimodel's own, ``ghp_…``/``github_pat_…``,
  ``AKIA…``, ``AIza…``, ``hf_…``, ``xox?-…``, ``glpat-…``, JWTs) and the value of ``api_key=``,
  ``token:``, ``password=``, ``secret:`` assignments;
* ``<EMAIL>``: ``local@domain.tld`` (the local part takes every character RFC 5322 allows unquoted);
* ``<IBAN>``: two letters, two check digits and 11 to 30 letters or digits, grouped by spaces or not, kept
  only when the ISO 13616 mod-97 check holds;
* ``<CARD>``: 13 to 19 digits, grouped by single spaces or dashes or not, kept only when the Luhn check holds;
* ``<IP>``: IPv4 dotted quads and IPv6 addresses (checked with :mod:`ipaddress`);
* ``<PHONE>``: ``+`` or ``00`` and 8 to 15 digits (E.164, any grouping), North American ``(555) 123-4567`` /
  ``555-123-4567`` / ``555.123.4567``, and national numbers with a trunk ``0`` and 9 to 11 digits in groups
  (``06 12 34 56 78``, ``020 7946 0958``, ``030-12345678``).

Written by hand: the libraries that do this (Presidio, scrubadub) pull in spaCy models and are built for
recall on names, not for a cheap pass over every logged prompt; what is needed here is a short list of
patterns with checksums (Luhn, mod-97) that keep false positives on ordinary numbers low. It errs towards
redacting: a long digit run that passes Luhn is a ``<CARD>`` even if it was an order number.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable

EMAIL = "<EMAIL>"
PHONE = "<PHONE>"
CARD = "<CARD>"
IBAN = "<IBAN>"
IP = "<IP>"
API_KEY = "<API_KEY>"
BEARER = "<BEARER>"

_BEARER = re.compile(r"(?i)\b(bearer)(\s+)[A-Za-z0-9._~+/=-]{8,}")
_API_KEY = re.compile(
    r"\b(?:sk-[A-Za-z0-9_-]{16,}"
    r"|(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}"
    r"|A(?:KIA|SIA)[0-9A-Z]{16}"
    r"|AIza[0-9A-Za-z_-]{30,}"
    r"|hf_[A-Za-z0-9]{20,}"
    r"|xox[abposr]-[A-Za-z0-9-]{10,}"
    r"|glpat-[A-Za-z0-9_-]{20,}"
    r"|eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,})"
)
_ASSIGNED_SECRET = re.compile(
    r"(?i)\b((?:api[_-]?key|access[_-]?token|auth[_-]?token|token|secret|password|passwd)[\"']?\s*[:=]\s*[\"']?)"
    r"(?!<)([^\s\"',;]{6,})"
)
_EMAIL = re.compile(  # starts only where a run of local-part characters starts: linear on long words
    r"(?<![A-Za-z0-9!#$%&'*+/=?^_`{|}~.-])[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z][A-Za-z0-9-]{0,62}"
)
_IBAN_CANDIDATE = re.compile(r"(?i)\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}\b")
_CARD_CANDIDATE = re.compile(r"(?<!\d)\d(?:[ -]?\d){12,}(?![\d])")
_IPV6_CANDIDATE = re.compile(
    r"(?<![\w.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:\d{1,3}(?:\.\d{1,3}){3}|[0-9A-Fa-f]{1,4})?(?![\w:])")
_IPV4 = re.compile(r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
                   r"(?![\w]|\.\d)")
_PHONE_E164 = re.compile(r"(?<![\w+])(?:\+|(?<!\d[ .\-])00)\d(?:[ .\-()]{0,2}\d){7,14}(?!\d)")
_PHONE_NANP = re.compile(r"(?<![\w(])(?:\(\d{3}\)\s?|\d{3}[.\- ])\d{3}[.\- ]\d{4}(?!\d)")
_PHONE_TRUNK = re.compile(r"(?<![\w+])0\d{1,4}(?:[ .\-/]\d{2,8}){1,4}(?!\d)")


def luhn_ok(digits: str) -> bool:
    """The Luhn (mod 10) check of a string of digits."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(compact: str) -> bool:
    """ISO 13616: 15 to 34 letters/digits, the first four moved to the end, letters as 10..35, mod 97 == 1."""
    if not 15 <= len(compact) <= 34 or not compact[:2].isalpha() or not compact[2:4].isdigit():
        return False
    moved = (compact[4:] + compact[:4]).upper()
    try:
        return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1
    except ValueError:
        return False


def _checked_spans(text: str, ok: Callable[[str], bool], lengths: range,
                   starts_ok: Callable[[str], bool] = lambda s: True) -> list[tuple[int, int]]:
    """Spans of ``text`` that start and end on a group boundary (a run of letters/digits) and pass ``ok``:
    leftmost first, then the longest; only spans of ``lengths`` letters/digits are tried, so it is linear."""
    groups = [(m.start(), m.end(), m.group()) for m in re.finditer(r"[A-Za-z0-9]+", text)]
    spans: list[tuple[int, int]] = []
    i = 0
    while i < len(groups):
        best, compact = None, ""
        for j in range(i, len(groups)):
            compact += groups[j][2]
            if len(compact) >= lengths.stop:
                break
            if len(compact) in lengths and starts_ok(compact) and ok(compact):
                best = j
        if best is None:
            i += 1
            continue
        spans.append((groups[i][0], groups[best][1]))
        i = best + 1
    return spans


def _replace_spans(text: str, spans: list[tuple[int, int]], token: str) -> str:
    out, last = [], 0
    for start, end in spans:
        out.append(text[last:start])
        out.append(token)
        last = end
    out.append(text[last:])
    return "".join(out)


def _cards(match: re.Match[str]) -> str:
    text = match.group(0)
    return _replace_spans(text, _checked_spans(text, luhn_ok, range(13, 20)), CARD)


def _iban_spans(text: str) -> list[tuple[int, int]]:
    """The IBANs of one candidate run, as spans of ``text``."""
    spans = _checked_spans(text, iban_ok, range(15, 35), lambda c: c[:2].isalpha() and c[2:4].isdigit())
    if spans:
        return spans
    # the groups may split the country code from the check digits: try the whole run's prefixes
    compact = re.sub(r"[^A-Za-z0-9]", "", text)
    for n in range(min(34, len(compact)), 14, -1):
        if iban_ok(compact[:n]):
            end, seen = 0, 0
            while seen < n:
                seen += text[end].isalnum()
                end += 1
            return [(0, end)]
    return []


def _redact_ibans(text: str) -> str:
    """Every IBAN of ``text``. A candidate run can go on over the words after an IBAN and end inside the next
    one, so the search resumes right after the last IBAN found, not after the candidate."""
    out, pos = [], 0
    while (match := _IBAN_CANDIDATE.search(text, pos)) is not None:
        candidate = match.group(0)
        spans = _iban_spans(candidate)
        if not spans:
            out.append(text[pos:match.end()])
            pos = match.end()
            continue
        end = spans[-1][1]
        out.append(text[pos:match.start()])
        out.append(_replace_spans(candidate[:end], spans, IBAN))
        pos = match.start() + end
    out.append(text[pos:])
    return "".join(out)


def _ipv6(match: re.Match[str]) -> str:
    text = match.group(0)
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return text
    return IP


def _e164(match: re.Match[str]) -> str:
    digits = sum(c.isdigit() for c in match.group(0))
    return PHONE if 8 <= digits <= 15 else match.group(0)


def _trunk(match: re.Match[str]) -> str:
    digits = sum(c.isdigit() for c in match.group(0))
    return PHONE if 9 <= digits <= 11 else match.group(0)


def redact(text: str) -> str:
    """``text`` with every value of the kinds above replaced by its kind (``<EMAIL>``, ``<CARD>``, …)."""
    if not text:
        return text
    text = _BEARER.sub(lambda m: f"{m.group(1)}{m.group(2)}{BEARER}", text)
    text = _API_KEY.sub(API_KEY, text)
    text = _ASSIGNED_SECRET.sub(lambda m: m.group(1) + API_KEY, text)
    text = _EMAIL.sub(EMAIL, text)
    text = _redact_ibans(text)
    text = _PHONE_E164.sub(_e164, text)  # before cards: "+1 000 000 000 000 0" passes Luhn too
    text = _CARD_CANDIDATE.sub(_cards, text)
    text = _IPV6_CANDIDATE.sub(_ipv6, text)
    text = _IPV4.sub(IP, text)
    text = _PHONE_NANP.sub(PHONE, text)
    text = _PHONE_TRUNK.sub(_trunk, text)
    return text
