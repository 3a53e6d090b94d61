"""The secrets half of :mod:`unimodel.redaction`: credentials by their shape or by the name they are given.

:func:`redact_secrets` runs first in :func:`unimodel.redaction.redact`, on text already NFKC-normalised, and
replaces (in this order):

* ``<PRIVATE_KEY>``: a PEM/OpenSSH/PGP private key block, ``-----BEGIN … PRIVATE KEY-----`` to its ``END`` line
  (or to the end of the text, when the capture cut it);
* ``<CREDENTIALS>``: the user-info of a URL (``postgresql://<CREDENTIALS>@db/app``);
* ``<BEARER>``: the token after ``Bearer`` (the word is kept);
* ``<API_KEY>``: keys of a known shape (OpenAI/Anthropic/unimodel ``sk-…``, Stripe ``sk_live_…``, AWS
  ``AKIA…``, GitHub ``ghp_…``/``github_pat_…``, Slack ``xox?-…`` and webhook URLs, Google
  ``AIza…``/``ya29.…``, Hugging Face ``hf_…``, GitLab ``glpat-…``, npm, PyPI, SendGrid, DigitalOcean, Shopify,
  Groq, Replicate, JWTs),
  and the value given to a secret-named key: ``aws_secret_access_key=…``, ``"client_secret": "…"``,
  ``DB_PASSWORD: …``, ``--api-key …``, ``password is …`` (a name *ending* in password, passwd, passphrase,
  pwd, secret, token, api key, access key, private key, secret key, credential(s), cookie or auth, in a few
  languages; ``max_tokens=512`` is not a secret);
* ``<CREDENTIALS>``: the credential of an ``Authorization:`` header of another scheme (the scheme word is kept).

Each pattern runs only when a cheap search (literals, or a literal alternation) finds what it needs, so a
prompt with no secret costs a few fast scans.
"""

from __future__ import annotations

import re

API_KEY = "<API_KEY>"
BEARER = "<BEARER>"
CREDENTIALS = "<CREDENTIALS>"
PRIVATE_KEY = "<PRIVATE_KEY>"

_PEM = re.compile(r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----[\s\S]*?"
                  r"(?:-----END[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----|\Z)")
# the user-info runs to the last "@" before the path: a password may hold an unencoded "@"
_URL_USERINFO = re.compile(r"(?<![A-Za-z0-9+.-])([A-Za-z][A-Za-z0-9+.-]{0,30}://)([^\s/?#\"'<>]{1,512})@"
                           r"(?=[\w\[])")
# a token has a digit or a symbol in it, or is long: "the bearer instrument" keeps its word
_BEARER = re.compile(r"(?i)\b(bearer)(\s+)(?!<)(?=[A-Za-z]{0,15}(?:[0-9]|[._~+/=-][A-Za-z0-9=])|[A-Za-z]{16})"
                     r"[A-Za-z0-9._~+/=-]{8,}")
_AUTH_HEADER = re.compile(r"(?i)\b((?:proxy-)?authorization[\"']?[ \t]*[:=][ \t]*[\"']?)([^\r\n\"',;]{1,1024})")
_KEY_SHAPES = re.compile(
    r"\b(?:sk-[A-Za-z0-9_-]{16,}"
    r"|[rs]k_(?:live|test)_[A-Za-z0-9]{16,}"
    r"|(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}"
    r"|(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}"
    r"|AIza[0-9A-Za-z_-]{30,}|ya29\.[0-9A-Za-z_-]{20,}"
    r"|hf_[A-Za-z0-9]{20,}"
    r"|xox[abposre]-[A-Za-z0-9-]{10,}|xapp-[0-9]-[A-Za-z0-9-]{10,}"
    r"|glpat-[A-Za-z0-9_-]{20,}"
    r"|npm_[A-Za-z0-9]{36}|pypi-[A-Za-z0-9_-]{50,}"
    r"|SG\.[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,}"
    r"|do[opr]_v1_[a-f0-9]{64}|shp(?:at|ca|pa|ss)_[a-fA-F0-9]{32}"
    r"|gsk_[A-Za-z0-9]{20,}|r8_[A-Za-z0-9]{20,}"
    r"|eyJ[A-Za-z0-9_-]{8,}(?:\.[A-Za-z0-9_-]*){1,4})"  # (a JWT the capture cut may have lost its signature)
    r"|hooks\.slack\.com/(?:services|workflows)/[A-Za-z0-9/_-]{10,}"
    r"|discord(?:app)?\.com/api/webhooks/[0-9]+/[A-Za-z0-9_-]{10,}"
)
# cheap searches first (literal alternatives, on the lower-cased text for the words): most prompts hold no
# secret, and a pattern with no literal start costs a match attempt at every position
_SHAPE_HINT = re.compile(r"sk[-_]|rk_|gh[pousr]_|github_pat_|A[KS]IA|ABIA|ACCA|AIza|ya29\.|hf_|xox|xapp-|glpat-|npm_"
                         r"|pypi-|SG\.|do[opr]_v1_|shp|gsk_|r8_|eyJ|hooks\.slack\.com/|discord")
_HINT = re.compile(r"pass|pwd|secret|token|key|auth|bearer|credential|cookie|pin|mdp|senha|wachtwoord|kennwort"
                   r"|contrase|has[lł]o|пароль|密码|口令|パスワード|비밀번호")
_VALUE = r"(\"[^\"\r\n]{0,512}\"?|'[^'\r\n]{0,512}'?|[^\s\"',;&<>(){}\[\]]{1,512})"
_VALUE_AT = re.compile(_VALUE)
# a name and its ":"/"=" (or a flag and its space); the value is read only after a secret's name
_ASSIGNMENT = re.compile(r"(?<![\w.-])[\"']?([^\W\d][\w.-]{0,63})[\"']?[ \t]*[:=][ \t]*")
_FLAG = re.compile(r"(?<![\w-])--?([A-Za-z][\w-]{0,63})[ \t]+(?!-)")
_SAID = re.compile(r"(?i)\b((?:password|passwd|passphrase|passcode|pin(?: code)?)[ \t]+(?:is|was)[ \t]+)" + _VALUE)
_SECRET_NAMES = (
    "password", "passwd", "passphrase", "passcode", "pwd", "secret", "token", "apikey", "api_key", "accesskey",
    "access_key", "privatekey", "private_key", "secretkey", "secret_key", "accountkey", "account_key",
    "subscription_key", "credential", "credentials", "cookie", "_auth", "passwort", "kennwort", "contraseña",
    "contrasena", "senha", "wachtwoord", "mot_de_passe", "mdp", "hasło", "haslo", "пароль", "密码", "口令",
    "パスワード", "비밀번호",
)


def _secret_name(name: str) -> bool:
    name = name.lower().replace("-", "_").replace(".", "_")
    return name.endswith(_SECRET_NAMES) or name == "auth"  # (not "oauth")


def _hidden(value: str) -> str:
    """``value`` replaced by :data:`API_KEY`, its quotes kept; a value already redacted is kept."""
    quote = value[0] if value[0] in "\"'" else ""
    inner = value[len(quote):]
    if inner.startswith("<") and inner.rstrip("\"'").endswith(">"):
        return value
    return f"{quote}{API_KEY}{quote}" if quote and value.endswith(quote) and len(value) > 1 else quote + API_KEY


def _named(pattern: re.Pattern[str], text: str) -> str:
    """Every value given to a secret name (``pattern`` finds a name and what follows it), hidden. After a name
    that is not a secret's the search goes on from its ``:``/``=``: what follows may be an assignment itself
    (the log writes a prompt as ``user: aws_secret_access_key=…``), and no value is read for nothing."""
    out, pos = [], 0
    while (match := pattern.search(text, pos)) is not None:
        value = _VALUE_AT.match(text, match.end()) if _secret_name(match.group(1)) else None
        if value is None:
            out.append(text[pos:match.end()])
            pos = match.end()
            continue
        out.append(text[pos:match.end()])
        out.append(_hidden(value.group()))
        pos = value.end()
    out.append(text[pos:])
    return "".join(out)


def _said(match: re.Match[str]) -> str:
    return match.group(1) + _hidden(match.group(2))


def _auth_header(match: re.Match[str]) -> str:
    """``Authorization: <scheme> <credential>``: the scheme is kept, the first word after it is not."""
    head, value = match.group(1), match.group(2)
    parts = value.split(None, 2)
    if not parts:
        return match.group(0)
    if len(parts) >= 2 and parts[0].isalpha() and len(parts[0]) <= 24:  # a scheme word, then the credential
        scheme, credential = parts[0], parts[1]
        start = value.index(credential, len(scheme))
    else:
        credential, start = parts[0], value.index(parts[0])
    if credential.startswith("<") and credential.endswith(">"):
        return match.group(0)
    return head + value[:start] + CREDENTIALS + value[start + len(credential):]


def redact_secrets(text: str) -> str:
    """``text`` with every credential of the kinds above replaced by its kind."""
    if "PRIVATE KEY" in text:
        text = _PEM.sub(PRIVATE_KEY, text)
    if "://" in text and "@" in text:
        text = _URL_USERINFO.sub(lambda m: m.group(1) + CREDENTIALS + "@", text)
    low = text.lower()
    if "bearer" in low:  # (before the shapes: a JWT after "Bearer" is a <BEARER>)
        text = _BEARER.sub(lambda m: f"{m.group(1)}{m.group(2)}{BEARER}", text)
    if _SHAPE_HINT.search(text) is not None:
        text = _KEY_SHAPES.sub(API_KEY, text)
    if _HINT.search(low) is None:
        return text
    if "authorization" in low:
        text = _AUTH_HEADER.sub(_auth_header, text)
    text = _named(_ASSIGNMENT, text)
    if "-" in text:
        text = _named(_FLAG, text)
    if " is " in low or " was " in low:
        text = _SAID.sub(_said, text)
    return text
