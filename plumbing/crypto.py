"""Crypto-shredding: personal-data fields are encrypted with a key per person (AES-GCM), so
that destroying one key erases that person's data everywhere it was copied, including the
immutable log.

- A person event's fields use that person's key.
- Free text on a relationship event is about everyone it names: its key is derived (HKDF) from
  the keys of all of them, so forgetting any one of them makes it unreadable.
- A retraction's reason is about the people of the event it retracts (``about``, filled in by
  the write side), so it is under their keys the same way.
- An event that names nobody (a retraction recorded as version 1, say) uses the workspace's
  own key.

Person keys live in ``person_keys``, wrapped with the master key from ``TIELINE_MASTER_KEY``
when one is configured. During a rotation, ``TIELINE_MASTER_KEY_PREVIOUS`` names the key it
replaces: values sealed under it still open, everything new is sealed under the current key,
and ``tieline master-key rewrap`` re-seals what is left (services/keys/rewrap.py).
"""

from __future__ import annotations

import base64
import hashlib
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from tieline.events_schema.models import ENC_PREFIX, Event
from tieline.plumbing.coalesce import Coalescer

if TYPE_CHECKING:
    from tieline.plumbing.config import Settings

#: Key id of a workspace's own key (not a valid person id, so it can never collide).
WORKSPACE_KEY = "~workspace"
FORGOTTEN = "forgotten person"
UNREADABLE = "[erased]"


class PersonForgottenError(Exception):
    """An event names a person whose key was destroyed."""

    def __init__(self, person_id: str) -> None:
        super().__init__(person_id)
        self.person_id = person_id


def personal_fields(cls: type[Event]) -> tuple[str, ...]:
    """Names of the fields the schema marks ``x-personal-data``."""
    props = cls.model_json_schema()["properties"]
    return tuple(name for name, schema in props.items() if "x-personal-data" in str(schema))


_FIELDS_CACHE: dict[type[Event], tuple[str, ...]] = {}


def fields_of(cls: type[Event]) -> tuple[str, ...]:
    if cls not in _FIELDS_CACHE:
        _FIELDS_CACHE[cls] = personal_fields(cls)
    return _FIELDS_CACHE[cls]


def key_people(event: Event) -> list[str]:
    """Whose keys protect this event's personal fields."""
    if event.type.startswith("person."):
        return [getattr(event, "person_id")]  # noqa: B009
    people = sorted(set(event.people()))
    return people or [WORKSPACE_KEY]


def field_key(people: list[str], keys: dict[str, bytes | None]) -> bytes | None:
    """The AES key for an event's fields given its key people (None if any key is gone)."""
    material = [keys.get(p) for p in people]
    if any(k is None for k in material):
        return None
    if len(material) == 1:
        return material[0]
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"tieline/event-text/v1"
    ).derive(b"".join(k for k in material if k))


def _aad(workspace_id: str, field: str) -> bytes:
    return f"{workspace_id}|{field}".encode()


def encrypt_value(key: bytes, workspace_id: str, field: str, value: str) -> str:
    nonce = os.urandom(12)
    ct = AESGCM(key).encrypt(nonce, value.encode(), _aad(workspace_id, field))
    return ENC_PREFIX + base64.b64encode(nonce + ct).decode()


def decrypt_value(key: bytes | None, workspace_id: str, field: str, value: Any) -> Any:
    """Plaintext of an encrypted value; ``[erased]`` when its key is gone; others unchanged."""
    if not isinstance(value, str) or not value.startswith(ENC_PREFIX):
        return value
    if key is None:
        return UNREADABLE
    raw = base64.b64decode(value[len(ENC_PREFIX) :])
    try:
        return AESGCM(key).decrypt(raw[:12], raw[12:], _aad(workspace_id, field)).decode()
    except Exception:
        return UNREADABLE


def encrypt_event(event: Event, keys: dict[str, bytes | None]) -> Event:
    """The event with every personal field encrypted (fields left None stay None)."""
    fields = fields_of(type(event))
    key = field_key(key_people(event), keys)
    updates = {}
    for f in fields:
        value = getattr(event, f)
        if value is None:
            continue
        if key is None:
            raise PersonForgottenError(next(p for p in key_people(event) if keys.get(p) is None))
        updates[f] = encrypt_value(key, event.workspace_id, f, value)
    return event.model_copy(update=updates) if updates else event


def decrypt_payload(
    payload: dict[str, Any], cls: type[Event], people: list[str], keys: dict[str, bytes | None]
) -> dict[str, Any]:
    """A decrypted copy of an archived event payload (for exports and reports)."""
    key = field_key(people, keys)
    ws = payload.get("workspace_id", "")
    return {
        k: decrypt_value(key, ws, k, v) if k in fields_of(cls) else v for k, v in payload.items()
    }


async def _select_many(
    conn: Any, requests: Sequence[tuple[str, list[str]]]
) -> list[dict[str, Any]]:
    """The stored key rows of several callers' (workspace, people), in one statement: for
    each request, its people's rows by person id (people without a row are left out)."""
    pairs = sorted({(ws, p) for ws, people in requests for p in people})
    cur = await conn.execute(
        "SELECT k.workspace_id, k.person_id, k.key, k.wrapped FROM person_keys k "
        "JOIN unnest(%s::text[], %s::text[]) AS w(workspace_id, person_id) "
        "USING (workspace_id, person_id)",
        ([ws for ws, _ in pairs], [p for _, p in pairs]),
    )
    rows = {(r["workspace_id"], r["person_id"]): r for r in await cur.fetchall()}
    return [{p: rows[(ws, p)] for p in people if (ws, p) in rows} for ws, people in requests]


class KeyStore:
    """Person keys in PostgreSQL, cached briefly in memory."""

    def __init__(
        self,
        pool: Any,
        master_key: MasterKey | None,
        ttl_s: float = 5.0,
        *,
        coalesce: bool = False,
    ) -> None:
        self.pool = pool
        self.master = master_key
        self.ttl_s = ttl_s
        self._cache: dict[tuple[str, str], tuple[float, bytes | None]] = {}
        # ``coalesce``: concurrent reads of keys go to PostgreSQL together, as one statement
        # (the write side reads them fresh for every command). Only for a pool that sees every
        # workspace: one statement serves callers of several workspaces, so a pool under
        # row-level security per request (the API's) must not coalesce.
        self._reads = Coalescer(self._read_many) if coalesce else None

    def _wrap(self, ws: str, pid: str, key: bytes) -> bytes:
        if self.master is None:
            return key
        return self.master.seal(key_purpose(ws, pid), key)

    def _unwrap(self, ws: str, pid: str, stored: bytes, wrapped: bool) -> bytes:
        if not wrapped:
            return stored
        if self.master is None:
            raise RuntimeError("person keys are wrapped but TIELINE_MASTER_KEY is not set")
        return self.master.unseal(key_purpose(ws, pid), stored)

    async def keys(
        self, ws: str, people: Iterable[str], *, create: bool = False, fresh: bool = False
    ) -> dict[str, bytes | None]:
        """Keys of ``people`` (None: destroyed, or missing when ``create`` is False).

        ``fresh``: read every key from PostgreSQL now, not from the cache (the write side does,
        to see a forget by another service at once). One round trip when every key exists.
        """
        now = time.monotonic()
        out: dict[str, bytes | None] = {}
        missing = []
        for p in set(people):
            hit = None if fresh else self._cache.get((ws, p))
            if hit is not None and now - hit[0] < self.ttl_s:
                out[p] = hit[1]
            else:
                missing.append(p)
        if not missing:
            return out
        found = await self._read(ws, missing)
        absent = [p for p in missing if p not in found]
        if create and absent:
            async with self.pool.connection() as conn:
                await self._create(conn, ws, absent)
                found.update((await _select_many(conn, [(ws, absent)]))[0])
        for p in missing:
            r = found.get(p)
            key = (
                None
                if r is None or r["key"] is None
                else self._unwrap(ws, p, bytes(r["key"]), r["wrapped"])
            )
            if r is not None:
                self._cache[(ws, p)] = (now, key)
            out[p] = key
        return out

    async def _read(self, ws: str, people: list[str]) -> dict[str, Any]:
        if self._reads is not None:
            return await self._reads.submit((ws, people))
        async with self.pool.connection() as conn:
            return (await _select_many(conn, [(ws, people)]))[0]

    async def _create(self, conn: Any, ws: str, people: list[str]) -> None:
        rows = [
            (ws, p, self._wrap(ws, p, AESGCM.generate_key(256)), self.master is not None)
            for p in people
        ]
        async with conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO person_keys (workspace_id, person_id, key, wrapped) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                rows,
            )

    async def _read_many(self, requests: list[tuple[str, list[str]]]) -> list[dict[str, Any]]:
        async with self.pool.connection() as conn:
            return await _select_many(conn, requests)

    async def destroy(self, ws: str, person_id: str) -> bool:
        """Destroy a person's key: from now on their encrypted data is unreadable."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                """INSERT INTO person_keys (workspace_id, person_id, key, wrapped, destroyed_at)
                   VALUES (%s, %s, NULL, false, now())
                   ON CONFLICT (workspace_id, person_id) DO UPDATE
                   SET key = NULL, destroyed_at = coalesce(person_keys.destroyed_at, now())
                   RETURNING destroyed_at""",
                (ws, person_id),
            )
            await cur.fetchone()
        self._cache[(ws, person_id)] = (time.monotonic(), None)
        return True


def key_purpose(ws: str, person_id: str) -> str:
    """What a person key is sealed for: its workspace and person (so it opens nowhere else)."""
    return f"{ws}/{person_id}"


@dataclass(frozen=True, repr=False)
class MasterKey:
    """The master key that seals (``TIELINE_MASTER_KEY``), and during a rotation the keys it
    replaced (``TIELINE_MASTER_KEY_PREVIOUS``), which only open: a value sealed under an old
    key stays readable until ``tieline master-key rewrap`` has re-sealed it."""

    current: bytes
    previous: tuple[bytes, ...] = ()

    def seal(self, purpose: str, plaintext: bytes) -> bytes:
        """``plaintext`` encrypted under the current key (AES-GCM, nonce first), bound to
        ``purpose`` (e.g. ``webhook/<ws>/<endpoint>``) so a sealed value cannot be moved to
        another row and still open."""
        nonce = os.urandom(12)
        return nonce + AESGCM(self.current).encrypt(nonce, plaintext, purpose.encode())

    def unseal(self, purpose: str, sealed: bytes) -> bytes:
        """The inverse of :meth:`seal`, under the current key or a previous one (InvalidTag
        when none opens it, or the purpose differs)."""
        return self.opened(purpose, sealed)[0]

    def opened(self, purpose: str, sealed: bytes) -> tuple[bytes, bool]:
        """The plaintext, and whether the current key opened it (False: a previous one)."""
        for key in (self.current, *self.previous):
            try:
                plain = AESGCM(key).decrypt(sealed[:12], sealed[12:], purpose.encode())
            except InvalidTag:
                continue
            return plain, key == self.current
        raise InvalidTag

    def fingerprint(self) -> str:
        """Names the current key without revealing it: the first 8 bytes of its SHA-256, in
        hex (operators compare it to see which key a process seals under)."""
        return hashlib.sha256(self.current).hexdigest()[:16]

    def __repr__(self) -> str:  # never print key material
        return f"MasterKey(previous={len(self.previous)})"


def _decode_key(value: str, name: str) -> bytes:
    try:
        key = base64.b64decode(value)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise ValueError(f"{name} must be base64 of 32 random bytes")
    return key


def master_key_from_env(value: str | None, previous: str | None = None) -> MasterKey | None:
    """The master key from ``TIELINE_MASTER_KEY`` (base64 of 32 bytes) and, during a
    rotation, ``TIELINE_MASTER_KEY_PREVIOUS`` (one or more such keys, comma-separated)."""
    if not value:
        if previous:
            raise ValueError("TIELINE_MASTER_KEY_PREVIOUS is set but TIELINE_MASTER_KEY is not")
        return None
    current = _decode_key(value, "TIELINE_MASTER_KEY")
    old = tuple(
        _decode_key(v.strip(), "TIELINE_MASTER_KEY_PREVIOUS")
        for v in (previous or "").split(",")
        if v.strip()
    )
    return MasterKey(current, tuple(k for k in old if k != current))


def master_key_of(settings: Settings) -> MasterKey | None:
    """The master key a process's settings give (``master_key``, ``master_key_previous``)."""
    return master_key_from_env(settings.master_key, settings.master_key_previous)
