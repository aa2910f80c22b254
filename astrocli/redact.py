"""Credentials never leave with a run: URLs shown or stored with their password replaced by ``***``.

    redact_url("postgresql://user:secret@db/mlflow")   # 'postgresql://user:***@db/mlflow'
    redact_url("https://h/x?token=abc&a=1")            # 'https://h/x?token=***&a=1'
    scrub("... secret ...", ["postgresql://user:secret@db/mlflow"])  # the password out of a message

A recipe keeps the URL the user gave in memory (the run needs it); everything written or printed
(recipe.yaml, checkpoint and ONNX metadata, logger parameters, console lines, error messages) gets
the redacted form. Torch-free, imports nothing from astro: the bottom layer.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"
# Query parameters that carry a secret in database and tracking URLs (libpq, MySQL, tokens).
SECRET_KEYS = (
    *("password", "passwd", "pwd", "sslpassword"),
    *("token", "secret", "api_key", "apikey", "access_key"),
)


def _secret_key(key: str) -> bool:
    return key.lower() in SECRET_KEYS


def redact_url(url: str | None) -> str | None:
    """``url`` with the password of ``user:password@host`` and secret query values replaced by ``***``."""
    if not url or "://" not in url:
        return url
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # not a URL after all (a bad port, ...): nothing to take apart
        return url
    netloc = parts.netloc
    if password is not None:
        userinfo, _, host = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{MASK}@{host}"
    query = parts.query
    if query and any(_secret_key(k) for k, _ in parse_qsl(query, keep_blank_values=True)):
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, MASK if _secret_key(k) else v) for k, v in pairs], safe="*")
    if netloc == parts.netloc and query == parts.query:
        return url  # nothing secret: exactly as given (urlunsplit would turn sqlite:/// into sqlite:/)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def secrets_of(url: str | None) -> list[str]:
    """The secret strings inside ``url`` (its password, secret query values), longest first."""
    if not url or "://" not in url:
        return []
    try:
        parts = urlsplit(url)
        found = [parts.password] if parts.password else []
    except ValueError:
        return []
    found += [v for k, v in parse_qsl(parts.query, keep_blank_values=True) if _secret_key(k) and v]
    return sorted(set(found), key=len, reverse=True)


def is_redacted(url: str | None) -> bool:
    """Whether ``url`` is a stored, redacted form (its secret must come from elsewhere)."""
    return bool(url) and redact_url(url) == url and MASK in url


def scrub(text: str, urls: Iterable[str | None]) -> str:
    """``text`` (an error message, a library's exception) with each URL redacted and its secrets masked."""
    for url in urls:
        if not url:
            continue
        text = text.replace(url, redact_url(url) or "")
        for secret in secrets_of(url):
            text = text.replace(secret, MASK)
    return text
