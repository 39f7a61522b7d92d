"""Connection strings without their secrets, for logs and messages.

A database or NATS URL may carry a password (``postgresql://user:pw@host/db``,
``?password=pw``, or libpq's ``key=value`` form); anything printed to a terminal or written
to a log shows ``***`` in its place.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["redact_url"]

#: ``password=...`` in libpq's keyword form: a bare word or a single-quoted value.
_KEYWORD_PASSWORD = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
_HIDDEN = "***"


def redact_url(url: str) -> str:
    """``url`` with any password it holds replaced by ``***``."""
    if "://" not in url:
        return _KEYWORD_PASSWORD.sub(rf"\g<1>{_HIDDEN}", url)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError on a malformed port)
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc
    if parts.password is not None:
        host = parts.netloc.rpartition("@")[2]  # as written: keeps IPv6 brackets and port
        netloc = f"{parts.username}:{_HIDDEN}@{host}" if parts.username else f":{_HIDDEN}@{host}"
    query = parts.query
    if "password" in query.lower():
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [(k, _HIDDEN if k.lower() == "password" else v) for k, v in pairs], safe="*"
        )
    return urlunsplit(parts._replace(netloc=netloc, query=query))
