"""Standard Webhooks signatures (symmetric, ``v1``).

The signed content is ``{webhook-id}.{webhook-timestamp}.{body}``; the signature is the base64
of its HMAC-SHA256 under the endpoint's secret, sent as ``webhook-signature: v1,<base64>``. A
secret is shown to the admin once as ``whsec_<base64 of 32 random bytes>`` (the spec asks for
24 to 64 bytes); the HMAC key is the decoded bytes, not the text.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

PREFIX = "whsec_"
SECRET_BYTES = 32


def new_secret() -> str:
    """A fresh endpoint secret as shown to the admin (``whsec_...``)."""
    return PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def key_of(secret: str) -> bytes:
    """The HMAC key a ``whsec_`` secret stands for."""
    return base64.b64decode(secret.removeprefix(PREFIX))


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value for one attempt."""
    content = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key_of(secret), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt (the id stays the same across retries, so
    a receiver can drop duplicates; the timestamp is the attempt's own)."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(secret, msg_id, timestamp, body),
        "content-type": "application/json",
    }
