"""Standard Webhooks signatures (symmetric, ``v1``).

The signed content is ``{webhook-id}.{webhook-timestamp}.{body}``; the signature is the base64
of its HMAC-SHA256 under the endpoint's secret, sent as ``webhook-signature: v1,<base64>``.
While a rotation keeps the previous secret, both sign, space-delimited, the current first (the
spec's zero-downtime rotation). A secret is shown to the admin once as ``whsec_<base64 of 32
random bytes>`` (the spec asks for 24 to 64 bytes); the HMAC key is the decoded bytes, not the
text.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence
from secrets import token_bytes

PREFIX = "whsec_"
SECRET_BYTES = 32


def new_secret() -> str:
    """A fresh endpoint secret as shown to the admin (``whsec_...``)."""
    return PREFIX + base64.b64encode(token_bytes(SECRET_BYTES)).decode()


def key_of(secret: str) -> bytes:
    """The HMAC key a ``whsec_`` secret stands for."""
    return base64.b64decode(secret.removeprefix(PREFIX))


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value for one attempt."""
    content = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key_of(secret), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt, signed with every secret in ``secrets``
    (the id stays the same across retries, so a receiver can drop duplicates; the timestamp
    is the attempt's own)."""
    if isinstance(secrets, str) or not secrets:  # a str is a Sequence[str] of its letters
        raise ValueError("an attempt is signed with a list of one or more secrets")
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(signature(s, msg_id, timestamp, body) for s in secrets),
        "content-type": "application/json",
    }
