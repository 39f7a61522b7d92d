"""Connection strings without their secrets, for logs and messages.

A database or NATS URL may carry a secret: ``postgresql://user:pw@host/db``, ``?password=``
or ``?sslpassword=``, libpq's ``key=value`` form, a NATS token (``nats://TOKEN@host``), and
NATS takes a comma-separated list of URLs. Anything printed to a terminal or written to a log
shows ``***`` in its place.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["redact_url"]

#: ``password=...`` / ``sslpassword=...`` in libpq's keyword form: a bare word or quoted.
_KEYWORD_PASSWORD = re.compile(r"(\b(?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
#: A URL starts with its scheme; anything else is libpq's keyword form (which may hold ``://``
#: in a value).
_URL = re.compile(r"^\s*[A-Za-z][A-Za-z0-9+.-]*://")
_SECRET_PARAMS = {"password", "sslpassword"}
#: Schemes whose user part alone is a secret (a token) when no password follows it.
_TOKEN_SCHEMES = {"nats", "tls", "ws", "wss"}
_HIDDEN = "***"


def redact_url(url: str) -> str:
    """``url`` (or a comma-separated list of URLs) with every secret replaced by ``***``."""
    if not _URL.match(url):
        return _KEYWORD_PASSWORD.sub(rf"\g<1>{_HIDDEN}", url)
    if "," in url and re.search(r",\s*\w+://", url):
        return ",".join(redact_url(part) for part in url.split(","))
    return _one(url)


def _one(url: str) -> str:
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018  (raises ValueError on a malformed port)
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        host = netloc.rpartition("@")[2]  # as written: keeps IPv6 brackets and port
        if parts.password is not None:
            netloc = f"{parts.username}:{_HIDDEN}@{host}"
        elif parts.scheme.lower() in _TOKEN_SCHEMES:
            netloc = f"{_HIDDEN}@{host}"
    query = parts.query
    if "password" in query.lower():
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [(k, _HIDDEN if k.lower() in _SECRET_PARAMS else v) for k, v in pairs], safe="*"
        )
    return urlunsplit(parts._replace(netloc=netloc, query=query))
