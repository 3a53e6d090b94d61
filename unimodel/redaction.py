"""Redact personal data and secrets from text before it is stored: the kind is kept, the value is not.

``redact("mail bob@example.com")`` gives ``"mail <EMAIL>"``. The text is first normalised: NFKC (fullwidth
``＠`` and digits, no-break and other odd spaces become their plain forms), digits of other scripts as ASCII
digits, and the invisible characters that can be slipped inside a value (zero-width space, soft hyphen, word
joiner, bidi controls; zero-width joiners only between ASCII characters, where no script needs them)
removed: what is stored is that normalised text. Then, in this order:

* secrets (``redaction_secrets.py``): ``<PRIVATE_KEY>``, ``<CREDENTIALS>`` (user-info of a URL, the credential
  of an ``Authorization:`` header), ``<BEARER>``, ``<API_KEY>`` (keys of a known shape, and the value of a
  secret-named assignment such as ``aws_secret_access_key=…`` or ``"password": "…"``);
* ``<EMAIL>``: ``local@domain.tld``, the local part and the domain in any script (RFC 6531, IDN), and the
  spelled-out ``name [at] domain [dot] com``;
* ``<IP>`` (IPv6, checked with :mod:`ipaddress`);
* ``<IBAN>``: two letters, two check digits and 11 to 30 letters or digits, grouped by spaces, dashes or dots
  or not, kept only when the ISO 13616 mod-97 check holds and its letters are of one case;
* ``<PHONE>`` (international): ``+`` or ``00`` and 8 to 15 digits (E.164, any grouping);
* ``<IP>`` (IPv4 dotted quads), before cards, so that a list of addresses is not taken for a card number;
* ``<CARD>``: 13 to 19 digits that pass the Luhn check and start as a card can (not ``0``, ``1``, ``20`` or
  ``21``: those are years, millisecond timestamps and zero-padded ids), ungrouped or grouped by up to three
  spaces, dashes or dots, in groups as people write them (every group but the last of 3 digits or more, or
  every digit on its own; with dots no group over 6, so a long decimal is not a card). A card
  split over two messages is caught too: the logged prompt joins the messages as ``role: text`` lines, so the
  pattern also takes ``\\n<role>: `` between two groups, and each side of the line break becomes ``<CARD>``
  (the line structure stays). Splitting per message instead could not see the two halves together;
* ``<PHONE>`` (national): North American ``(555) 123-4567`` / ``555-123-4567`` / ``555.123.4567``, national
  numbers with a trunk ``0`` and 9 to 11 digits in groups (``06 12 34 56 78``, ``020 7946 0958``; a date such as
  ``05.01.2024 10`` is not one), and bare runs of 10 digits starting with 0 or 2 to 9, or 11 starting with
  ``1`` and 2 to 9 (a Unix time in seconds starts with 1 until 2033 and is kept).

Written by hand: the libraries that do this (Presidio, scrubadub) pull in spaCy models and are built for
recall on names, not for a cheap pass over every logged prompt; what is needed here is a short list of
patterns with checksums (Luhn, mod-97) that keep false positives on ordinary numbers low. It errs towards
redacting: a long digit run that passes Luhn is a ``<CARD>`` even if it was an order number, and a bare 10-digit
number is a ``<PHONE>``. Every pattern is linear in the text (bounded repeats, starts only where a run starts),
each kind is skipped when a cheap test finds nothing it needs (an ``@``, a digit), and ASCII text skips the
normalisation.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections.abc import Callable

from unimodel.redaction_secrets import API_KEY, BEARER, CREDENTIALS, PRIVATE_KEY, redact_secrets

__all__ = ["API_KEY", "BEARER", "CARD", "CREDENTIALS", "EMAIL", "IBAN", "IP", "PHONE", "PRIVATE_KEY", "iban_ok",
           "luhn_ok", "normalize", "redact"]

EMAIL = "<EMAIL>"
PHONE = "<PHONE>"
CARD = "<CARD>"
IBAN = "<IBAN>"
IP = "<IP>"

# ---- normalisation ----------------------------------------------------------------------------------------

_INVISIBLE = re.compile("[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180e\u200b\u200e\u200f\u202a-\u202e"
                        "\u2060-\u2064\u2066-\u206f\u3164\ufeff\uffa0]")
_JOINER = re.compile("(?<=[\x21-\x7e])[\u200c\u200d]+(?=[\x21-\x7e])")
_OTHER_DIGIT = re.compile(r"[^\D0-9]")  # a digit of another script


def normalize(text: str) -> str:
    """NFKC, ASCII digits, and no invisible characters inside values (see the module's docstring)."""
    if text.isascii():
        return text
    if not unicodedata.is_normalized("NFKC", text):
        text = unicodedata.normalize("NFKC", text)
    text = _INVISIBLE.sub("", text)
    if "\u200c" in text or "\u200d" in text:
        text = _JOINER.sub("", text)
    if _OTHER_DIGIT.search(text) is None:
        return text
    return _OTHER_DIGIT.sub(lambda m: str(unicodedata.digit(m.group(), 0)), text)


# ---- e-mail -----------------------------------------------------------------------------------------------

# letters, digits and marks of every script (not: spaces, punctuation and symbol blocks, emoji)
_W = ("A-Za-z0-9\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u1fff\u200c\u200d\u2c00-\u2dff\u2e80-\u2fff\u3040-\ud7ff"
      "\uf900-\ufe0f\ufe70-\ufefe\U00010000-\U0001efff\U00020000-\U0003ffff")
_NON_ASCII_W = _W[len("A-Za-z0-9"):]
_ATEXT = _W + "!#$%&'*+/=?^_`{|}~\\-"
_LABEL = f"[{_W}](?:[{_W}-]{{0,61}}[{_W}])?"
_TLD = f"(?:[A-Za-z][A-Za-z0-9-]{{0,62}}|[{_NON_ASCII_W}]{{2,63}})"
# starts only where a run of local-part characters starts: linear on long words
_EMAIL = re.compile(f"(?<![{_ATEXT}.])[{_ATEXT}]+(?:\\.[{_ATEXT}]+)*@(?:{_LABEL}[.\u3002])+{_TLD}")
_AT, _DOT = r"[ \t]*[\[({<][ \t]*at[ \t]*[\])}>][ \t]*", r"(?:[ \t]*[\[({<][ \t]*dot[ \t]*[\])}>][ \t]*|\.)"
_SPELLED_AT = re.compile(r"[\[({<][ \t]*[aA][tT][ \t]*[\])}>]")  # (a bracket first: a quick scan)
_EMAIL_SPELLED = re.compile(f"(?i)(?<![{_ATEXT}.])[{_ATEXT}]+(?:\\.[{_ATEXT}]+)*{_AT}(?:{_LABEL}{_DOT})+{_TLD}")

# ---- numbers ----------------------------------------------------------------------------------------------

_DASHES = "\\-\u2010-\u2015\u2212"
_ROLE_BREAK = r"[ \t]*\n(?:system|developer|user|assistant|tool): [ \t]*"  # how the log joins two messages
_IBAN_CANDIDATE = re.compile(f"(?i)\\b[A-Z]{{2}}[0-9]{{2}}(?:[ \t.{_DASHES}]{{0,2}}[A-Z0-9]){{11,30}}\\b")
# (each pattern starts with a character class or a literal, its left boundary checked just after it: a pattern
# that starts with a lookbehind costs a match attempt at every position of the text)
_CARD_CANDIDATE = re.compile(f"[0-9](?<![0-9]{{2}})(?:(?:[ \t.{_DASHES}]{{1,3}}|{_ROLE_BREAK})?[0-9]){{12,}}(?![0-9])")
_DIGIT_RUN = re.compile("[0-9]+")
_IPV6_CANDIDATE = re.compile(
    r"(?<![\w.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:\d{1,3}(?:\.\d{1,3}){3}|[0-9A-Fa-f]{1,4})?(?![\w:])")
_IPV4 = re.compile(r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
                   r"(?![\w]|\.\d)")
_PHONE_E164 = re.compile(f"(?<![\\w+])(?:\\+|(?<!\\d[ .{_DASHES}])00)[0-9](?:[ \t.{_DASHES}()]{{0,3}}[0-9]){{7,14}}"
                         "(?![0-9])")
_PHONE_NANP = re.compile(f"[(0-9](?<![\\w(][(0-9])(?:(?<=\\()[0-9]{{3}}\\)[ \t]{{0,2}}"
                         f"|(?<=[0-9])[0-9]{{2}}[ \t.{_DASHES}]{{1,2}})"
                         f"[0-9]{{3}}[ \t.{_DASHES}]{{1,2}}[0-9]{{4}}(?![0-9])")
_PHONE_TRUNK = re.compile(f"0(?<![\\w+]0)[0-9]{{1,4}}(?:[ .{_DASHES}/][0-9]{{2,8}}){{1,4}}(?![0-9])")
_PHONE_BARE = re.compile(r"(?<![\w+.,/-])(?:[2-9][0-9]{9}|0[0-9]{9,10}|1[2-9][0-9]{9})(?![\w]|[.,/-][0-9])")
_DATE = re.compile(r"(?:[0-2]?[0-9]|3[01])([./-])(?:[0-2]?[0-9]|3[01])\1(?:19|20)[0-9]{2}(?:[ T][0-9]{1,2})?")
_HAS_DIGIT = re.compile("[0-9]")
_IBAN_HINT = re.compile("[A-Za-z]{2}[0-9]{2}")
_IPV4_HINT = re.compile(r"[0-9]\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]")
_IPV6_HINT = re.compile(":[0-9A-Fa-f]{0,4}:")
_TEN_DIGITS = re.compile("[0-9]{10}")


def luhn_ok(digits: str) -> bool:
    """The Luhn (mod 10) check of a string of digits."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


_BASE36 = {ord(c): str(int(c, 36)) for c in "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"}


def iban_ok(compact: str) -> bool:
    """ISO 13616: 15 to 34 letters/digits, the first four moved to the end, letters as 10..35, mod 97 == 1."""
    if not 15 <= len(compact) <= 34 or not compact[:2].isalpha() or not compact[2:4].isdigit():
        return False
    if not (compact.isascii() and compact.isalnum()):
        return False
    return int((compact[4:] + compact[:4]).translate(_BASE36)) % 97 == 1


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


_DOUBLED = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)


def _card_start_ok(first: int, second: int) -> bool:
    """Card numbers start with 2 (only 22-27: Mastercard's 2-series, Mir) or 3 to 9: never 0, 1, 20 or 21."""
    return first >= 3 or (first == 2 and 2 <= second <= 7)


def _card_grouping(sizes: list[int], dotted: bool) -> bool:
    """Whether digit groups of these sizes can be a card as people write one: one run; every group but the last
    of 3 digits or more (4-4-4-4, 4-6-5, 4-4-4-1), and with dots no group over 6 (a long decimal is not a card);
    or single digits spelled out one by one. Not groups of one or two mixed with others: "1 2 3 … 10 11 12" is a
    count, not a card."""
    if len(sizes) == 1:
        return True
    if all(size == 1 for size in sizes):
        return True
    return all(size >= 3 for size in sizes[:-1]) and (not dotted or max(sizes) <= 6)


def _card_spans(text: str) -> list[tuple[int, int]]:
    """The card numbers of one candidate run, as spans of ``text``: leftmost first, then the longest. The Luhn
    sum of any run of digits comes from two prefix sums (digits at even and odd places, one of the two doubled),
    so each span costs O(1) and a run of n groups O(19 n)."""
    runs = [(m.start(), m.end()) for m in _DIGIT_RUN.finditer(text)]
    digits = [ord(c) - 48 for c in text if "0" <= c <= "9"]
    even_plain, odd_plain = [0], [0]  # sums with the digits at odd (resp. even) places doubled
    for k, d in enumerate(digits):
        even_plain.append(even_plain[-1] + (d if k % 2 == 0 else _DOUBLED[d]))
        odd_plain.append(odd_plain[-1] + (_DOUBLED[d] if k % 2 == 0 else d))
    offsets = [0]
    for start, end in runs:
        offsets.append(offsets[-1] + end - start)
    sizes = [end - start for start, end in runs]
    spans: list[tuple[int, int]] = []
    i = 0
    while i < len(runs):
        a = offsets[i]
        best = None
        if _card_start_ok(digits[a], digits[a + 1] if a + 1 < len(digits) else 0):
            dotted = False
            for j in range(i, len(runs)):
                b = offsets[j + 1]
                if b - a > 19:
                    break
                if j > i and "." in text[runs[j - 1][1]:runs[j][0]]:
                    dotted = True
                if b - a >= 13:
                    sums = even_plain if (b - 1) % 2 == 0 else odd_plain
                    if (sums[b] - sums[a]) % 10 == 0 and _card_grouping(sizes[i:j + 1], dotted):
                        best = j
        if best is None:
            i += 1
            continue
        spans.append((runs[i][0], runs[best][1]))
        i = best + 1
    return spans


def _cards(match: re.Match[str]) -> str:
    text = match.group(0)
    spans = _card_spans(text)
    if not spans:
        return text
    out, last = [], 0
    for start, end in spans:
        out.append(text[last:start])
        # a card split over two messages: each side of the line break is a <CARD>, the break is kept
        out.append(re.sub(r"[0-9][^\n]*?(?=[ \t]*\n|$)", CARD, text[start:end]) if "\n" in text[start:end]
                   else CARD)
        last = end
    out.append(text[last:])
    return "".join(out)


def _one_case_iban_ok(compact: str) -> bool:
    """:func:`iban_ok`, and its letters all of one case: a run that goes on over the words after an IBAN
    ("DE36… X and 3000…") is not taken for a longer IBAN that happens to pass mod-97 (1 in 97 does)."""
    return (compact.isupper() or compact.islower()) and iban_ok(compact)


def _iban_spans(text: str) -> list[tuple[int, int]]:
    """The IBANs of one candidate run, as spans of ``text``."""
    spans = _checked_spans(text, _one_case_iban_ok, range(15, 35), lambda c: c[:2].isalpha() and c[2:4].isdigit())
    if spans:
        return spans
    # the groups may split the country code from the check digits: try the whole run's prefixes
    compact = re.sub(r"[^A-Za-z0-9]", "", text)
    for n in range(min(34, len(compact)), 14, -1):
        if _one_case_iban_ok(compact[:n]):
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
    text = match.group(0)
    digits = sum(c.isdigit() for c in text)
    if not 9 <= digits <= 11 or _DATE.fullmatch(text):
        return text
    return PHONE


def redact(text: str) -> str:
    """``text``, normalised, with every value of the kinds above replaced by its kind (``<EMAIL>``, …)."""
    if not text:
        return text
    text = redact_secrets(normalize(text))
    if "@" in text:
        text = _EMAIL.sub(EMAIL, text)
    if _SPELLED_AT.search(text) is not None:
        text = _EMAIL_SPELLED.sub(EMAIL, text)
    if ":" in text and _IPV6_HINT.search(text) is not None:  # ("::" or "fe80::abcd" have no decimal digit)
        text = _IPV6_CANDIDATE.sub(_ipv6, text)
    if _HAS_DIGIT.search(text) is None:
        return text
    if _IBAN_HINT.search(text) is not None:
        text = _redact_ibans(text)
    if "+" in text or "00" in text:
        text = _PHONE_E164.sub(_e164, text)  # before cards: "+1 000 000 000 000 0" passes Luhn too
    if _IPV4_HINT.search(text) is not None:
        text = _IPV4.sub(IP, text)
    text = _CARD_CANDIDATE.sub(_cards, text)
    text = _PHONE_NANP.sub(PHONE, text)
    if "0" in text:
        text = _PHONE_TRUNK.sub(_trunk, text)
    if _TEN_DIGITS.search(text) is not None:
        text = _PHONE_BARE.sub(PHONE, text)
    return text
