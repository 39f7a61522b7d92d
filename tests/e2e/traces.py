"""An independent search for a person's former values, as an attacker holding everything would
run it: every message of the raw streams and every row of every table in the state schema and
in every read-model generation schema, read straight from NATS and PostgreSQL.

It trusts nothing the product reports. Encrypted values (``enc:v1:...``) are decrypted with
every key the database still holds for the workspace (unwrapped with the master key), alone
and in every combination a relationship event's key can be derived from, so "not found" means
"not recoverable by anyone holding the database, the log and the master key", and a search
run before the erasure finds the values (the positive control).
"""

from __future__ import annotations

import base64
import itertools
import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import nats
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from nats.js.errors import NotFoundError
from psycopg import AsyncConnection, sql
from psycopg.rows import dict_row
from tieline.plumbing.config import Settings
from tieline.plumbing.crypto import UNREADABLE, decrypt_value, field_key

#: A JSON member whose value is an encrypted field: (field name, ciphertext).
ENCRYPTED = re.compile(r'"([A-Za-z0-9_]+)"\s*:\s*"(enc:v1:[A-Za-z0-9+/=]+)"')
#: More key holders than this would make the combinations explode; the tests stay below it.
MAX_KEY_HOLDERS = 8


@dataclass
class Traces:
    """Where each value was found: per place (``stream:NAME`` or ``schema.table``), per value,
    how many messages or rows hold it (in plaintext or decryptable)."""

    found: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(dict))
    messages: dict[str, int] = field(default_factory=dict)  # stream -> messages read
    tables: list[str] = field(default_factory=list)  # every schema.table searched
    rows: int = 0

    def add(self, place: str, text: str, values: set[str], reveal: Any) -> None:
        hits = {v for v in values if v in text or json.dumps(v)[1:-1] in text}
        if len(hits) < len(values):
            plain = reveal(text)
            hits |= {v for v in values if any(v in p for p in plain)}
        for v in hits:
            self.found[place][v] = self.found[place].get(v, 0) + 1

    def places_of(self, value: str) -> set[str]:
        return {place for place, values in self.found.items() if values.get(value)}

    def anywhere(self) -> dict[str, dict[str, int]]:
        return {place: values for place, values in self.found.items() if values}


class Attacker:
    """Reads everything of one installation and decrypts whatever the keys left allow."""

    def __init__(self, settings: Settings, nats_url: str, master_key_b64: str, ws: str) -> None:
        self.settings, self.nats_url, self.ws = settings, nats_url, ws
        self.master = AESGCM(base64.b64decode(master_key_b64))
        self._candidates: list[bytes] = []

    async def search(self, values: set[str]) -> Traces:
        traces = Traces()
        conn = await AsyncConnection.connect(
            self.settings.database_url, autocommit=True, row_factory=dict_row
        )
        try:
            self._candidates = await self._field_keys(conn)
            await self._search_tables(conn, values, traces)
        finally:
            await conn.close()
        await self._search_streams(values, traces)
        return traces

    async def _field_keys(self, conn: AsyncConnection[Any]) -> list[bytes]:
        """Every key an encrypted field of the workspace could be under: each remaining
        person (or workspace) key, and the key derived from each combination of them."""
        state = sql.Identifier(self.settings.database_schema)
        cur = await conn.execute(
            sql.SQL(
                "SELECT person_id, key, wrapped FROM {}.person_keys "
                "WHERE workspace_id = %s AND key IS NOT NULL ORDER BY person_id"
            ).format(state),
            (self.ws,),
        )
        keys: dict[str, bytes | None] = {}
        for r in await cur.fetchall():
            stored = bytes(r["key"])
            aad = f"{self.ws}/{r['person_id']}".encode()
            keys[r["person_id"]] = (
                self.master.decrypt(stored[:12], stored[12:], aad) if r["wrapped"] else stored
            )
        holders = sorted(keys)
        assert len(holders) <= MAX_KEY_HOLDERS, holders
        out = []
        for n in range(1, len(holders) + 1):
            for group in itertools.combinations(holders, n):
                key = field_key(list(group), keys)
                if key is not None:
                    out.append(key)
        return out

    def reveal(self, text: str) -> list[str]:
        """The plaintext of every encrypted field in ``text`` that some key still opens."""
        plain = []
        for name, token in ENCRYPTED.findall(text):
            for key in self._candidates:
                value = decrypt_value(key, self.ws, name, token)
                if value != UNREADABLE:
                    plain.append(value)
                    break
        return plain

    async def schemas(self, conn: AsyncConnection[Any]) -> list[str]:
        """The state schema and every read-model generation schema in the catalog, checked
        against the generations the product registered (live, retired, ...)."""
        state = self.settings.database_schema
        cur = await conn.execute(
            "SELECT nspname FROM pg_catalog.pg_namespace WHERE nspname = %s OR nspname ~ %s",
            (state, "^" + re.escape(state) + "_g[0-9]+$"),
        )
        found = sorted(r["nspname"] for r in await cur.fetchall())
        cur = await conn.execute(
            sql.SQL("SELECT schema_name FROM {}.generations").format(sql.Identifier(state))
        )
        registered = {r["schema_name"] for r in await cur.fetchall()}
        assert registered <= set(found), (registered, found)
        return found

    async def _search_tables(
        self, conn: AsyncConnection[Any], values: set[str], traces: Traces
    ) -> None:
        cur = await conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_schema = ANY(%s) AND table_type = 'BASE TABLE' "
            "ORDER BY table_schema, table_name",
            (await self.schemas(conn),),
        )
        for t in await cur.fetchall():
            place = f"{t['table_schema']}.{t['table_name']}"
            traces.tables.append(place)
            rows = await conn.execute(
                sql.SQL("SELECT to_jsonb(x)::text AS row FROM {}.{} x").format(
                    sql.Identifier(t["table_schema"]), sql.Identifier(t["table_name"])
                )
            )
            for r in await rows.fetchall():
                traces.rows += 1
                traces.add(place, r["row"], values, self.reveal)

    async def _search_streams(self, values: set[str], traces: Traces) -> None:
        """Every message of the event stream and the dead-letter stream, headers included;
        the count read must equal the stream's message count."""
        nc = await nats.connect(self.nats_url)
        try:
            js = nc.jetstream()
            for name in (self.settings.stream_name, f"{self.settings.stream_name}_DLQ"):
                info = await js.stream_info(name)
                read = 0
                for seq in range(int(info.state.first_seq), int(info.state.last_seq) + 1):
                    if seq == 0:
                        continue
                    try:
                        msg = await js.get_msg(name, seq)
                    except NotFoundError:
                        continue  # a deleted sequence
                    read += 1
                    text = (msg.data or b"").decode("utf-8", "replace")
                    text += json.dumps(msg.headers or {}, ensure_ascii=False)
                    traces.add(f"stream:{name}", text, values, self.reveal)
                assert read == info.state.messages, (name, read, info.state.messages)
                traces.messages[name] = read
        finally:
            await nc.close()
