"""Redaction: every kind of personal data or secret is replaced by its kind; ordinary text is left alone."""

from __future__ import annotations

import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unimodel.redaction import iban_ok, luhn_ok, redact

# ---- generators of the values to hide ---------------------------------------------------------------


def _luhn_digit(payload: str) -> str:
    for d in "0123456789":
        if luhn_ok(payload + d):
            return d
    raise AssertionError("unreachable")


def _group(text: str, sep: str, size: int = 4) -> str:
    return sep.join(text[i:i + size] for i in range(0, len(text), size)) if sep is not None else text


@st.composite
def cards(draw: st.DrawFn) -> str:
    length = draw(st.integers(13, 19))
    payload = draw(st.sampled_from("3456")) + draw(st.text("0123456789", min_size=length - 2, max_size=length - 2))
    number = payload + _luhn_digit(payload)
    sep = draw(st.sampled_from(["", " ", "-"]))
    return _group(number, sep) if sep else number


@st.composite
def ibans(draw: st.DrawFn) -> str:
    country = draw(st.sampled_from(["DE", "FR", "GB", "NL", "ES", "IT", "CH", "BE", "PL", "SE"]))
    bban = draw(st.text(string.digits + string.ascii_uppercase, min_size=11, max_size=30))
    moved = bban + country + "00"
    check = 98 - int("".join(str(int(c, 36)) for c in moved)) % 97
    compact = f"{country}{check:02d}{bban}"
    assert iban_ok(compact)
    return _group(compact, " ") if draw(st.booleans()) else compact


@st.composite
def phones(draw: st.DrawFn) -> str:
    digits = st.text("0123456789", min_size=1, max_size=1)
    kind = draw(st.sampled_from(["e164", "nanp", "trunk2", "uk"]))
    if kind == "e164":
        cc = draw(st.sampled_from("123456789")) + draw(st.text("0123456789", max_size=2))
        rest = draw(st.text("0123456789", min_size=8 - len(cc), max_size=15 - len(cc)))
        sep = draw(st.sampled_from(["", " ", "-", "."]))
        return f"+{cc}{sep}{_group(rest, sep, 3) if sep else rest}"
    if kind == "nanp":
        first = st.text("23456789", min_size=1, max_size=1)
        area, exch = draw(first), draw(first)
        a = area + "".join(draw(digits) for _ in range(2))
        b = exch + "".join(draw(digits) for _ in range(2))
        c = "".join(draw(digits) for _ in range(4))
        return draw(st.sampled_from([f"({a}) {b}-{c}", f"{a}-{b}-{c}", f"{a}.{b}.{c}", f"({a}){b}-{c}"]))
    if kind == "trunk2":  # 06 12 34 56 78
        rest = "".join(draw(digits) for _ in range(9))
        sep = draw(st.sampled_from([" ", ".", "-"]))
        return "0" + rest[0] + sep + sep.join(rest[i:i + 2] for i in range(1, 9, 2))
    area = "".join(draw(digits) for _ in range(2))
    return f"0{area} {''.join(draw(digits) for _ in range(4))} {''.join(draw(digits) for _ in range(4))}"


_ALNUM = string.ascii_letters + string.digits


@st.composite
def api_keys(draw: st.DrawFn) -> tuple[str, str]:
    """(the text as written, the secret in it)."""
    kind = draw(st.sampled_from(["sk", "um", "ghp", "hf", "aws", "bearer", "jwt", "assigned"]))
    body = draw(st.text(_ALNUM, min_size=36, max_size=48))
    if kind == "sk":
        return (s := "sk-proj-" + body), s
    if kind == "um":
        return (s := "sk-um-" + body[:20] + "_-" + body[20:]), s
    if kind == "ghp":
        return (s := "ghp_" + body[:36]), s
    if kind == "hf":
        return (s := "hf_" + body[:34]), s
    if kind == "aws":
        return (s := "AKIA" + "".join(c for c in body.upper() if c.isalnum())[:16].ljust(16, "7")), s
    if kind == "bearer":
        return f"Authorization: Bearer {body}", body
    if kind == "jwt":
        return (s := f"eyJ{body[:12]}.{body[12:24]}.{body[24:]}"), s
    return f'api_key="{body}"', body


_WORD = st.text(string.ascii_letters + "éüßÅñ", min_size=1, max_size=10).filter(
    lambda w: w.lower() not in ("bearer", "token", "secret", "password", "passwd", "apikey"))
_NUMBER = st.integers(0, 999).map(str)


@st.composite
def ordinary_text(draw: st.DrawFn, max_words: int = 12) -> str:
    """Words, short numbers (never two in a row) and punctuation: text with nothing to redact."""
    out: list[str] = []
    for _ in range(draw(st.integers(1, max_words))):
        if out and not out[-1].rstrip(",.!?").isdigit() and draw(st.integers(0, 4)) == 0:
            token = draw(_NUMBER)
        else:
            token = draw(_WORD)
        out.append(token + draw(st.sampled_from(["", "", "", ",", ".", "!", "?"])))
    return " ".join(out)


PII = {
    "<EMAIL>": st.emails(),
    "<CARD>": cards(),
    "<IBAN>": ibans(),
    "<PHONE>": phones(),
    "<IP>": st.ip_addresses().map(str),
}

# ---- properties -----------------------------------------------------------------------------------------


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(sorted(PII)), data=st.data(), before=ordinary_text(), after=ordinary_text())
def test_generated_personal_data_never_survives(kind: str, data: st.DataObject, before: str, after: str) -> None:
    value = data.draw(PII[kind], label="value")
    out = redact(f"{before} {value} {after}")
    assert value not in out  # (beside a number it may be taken for a longer value of another kind: still gone)
    assert redact(f"{before} see {value} now {after}").count(kind) >= 1


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(secret=api_keys(), before=ordinary_text(), after=ordinary_text())
def test_generated_secrets_never_survive(secret: tuple[str, str], before: str, after: str) -> None:
    written, value = secret
    out = redact(f"{before} {written} {after}")
    assert value not in out
    assert "<API_KEY>" in out or "<BEARER>" in out


@settings(max_examples=300)
@given(text=ordinary_text(max_words=40))
def test_ordinary_text_survives(text: str) -> None:
    assert redact(text) == text


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(values=st.lists(st.tuples(st.sampled_from(sorted(PII)), st.data()), min_size=2, max_size=6),
       glue=ordinary_text(max_words=3))
def test_many_values_in_one_text_all_go(values: list[tuple[str, st.DataObject]], glue: str) -> None:
    drawn = [(kind, data.draw(PII[kind])) for kind, data in values]
    out = redact(f" {glue} and ".join(v for _, v in drawn))
    for kind, value in drawn:
        assert value not in out
        assert kind in out


# ---- examples -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("mail bob.smith+tag@example.co.uk now", "mail <EMAIL> now"),
    ("card 4111 1111 1111 1111, thanks", "card <CARD>, thanks"),
    ("order 12 4111111111111111", "order 12 <CARD>"),
    ("IBAN: DE89 3704 0044 0532 0130 00.", "IBAN: <IBAN>."),
    ("to GB82WEST12345698765432 please", "to <IBAN> please"),
    ("from 192.168.1.20 and fe80::1 and [2001:db8::7]", "from <IP> and <IP> and [<IP>]"),
    ("call +33 6 12 34 56 78 or (555) 123-4567 or 020 7946 0958", "call <PHONE> or <PHONE> or <PHONE>"),
    ("Authorization: Bearer abc.DEF-123_xyz", "Authorization: Bearer <BEARER>"),
    ('{"api_key": "s3cr3t-value"}', '{"api_key": "<API_KEY>"}'),
    ("password=hunter22", "password=<API_KEY>"),
])
def test_examples(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize("text", [
    "Meeting at 10:30 on 2024-05-01 in room 101; version 3.2.1 costs 12.50 EUR (about 13 USD).",
    "The answer is 4. Ünïcödé and emoji 🎉 survive.",
    "Order #12345 shipped; tracking 1Z999 arrives Tuesday.",
    "ratio 16:9, score 3-2, pi 3.14159, year 1999",
    "See RFC 5322 section 3.4.1 and ISO 8601.",
])
def test_everyday_text_is_kept(text: str) -> None:
    assert redact(text) == text


def test_a_card_number_that_fails_luhn_is_kept() -> None:
    assert redact("ref 4111 1111 1111 1112") == "ref 4111 1111 1111 1112"


def test_an_iban_with_wrong_check_digits_is_kept() -> None:
    assert redact("DE00 3704 1044 2532 1130 12") == "DE00 3704 1044 2532 1130 12"


@pytest.mark.parametrize("text", [
    "a" * 200_000,
    "1 " * 30_000,
    "a." * 100_000,
    "x@" * 100_000,
    "0123456789" * 20_000,
    ":" * 100_000,
    "1.1." * 50_000,
])
def test_long_inputs_without_personal_data_come_back_whole(text: str) -> None:
    out = redact(text)  # a quadratic pattern would not end within the test's timeout on these
    assert "<EMAIL>" not in out and "<IP>" not in out and "<PHONE>" not in out


def test_an_iban_after_another_and_a_few_words_is_redacted_too() -> None:
    """Found by the property test above: the candidate run went on over the words after the first IBAN and
    ended inside the second, which then survived."""
    assert redact("DE3600000000000 A and DE36 0000 0000 0000") == "<IBAN> A and <IBAN>"
