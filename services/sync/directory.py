"""Who is a person: e-mail addresses -> person ids, from the people directory (read model).

Addresses are personal data, stored encrypted per person, so the directory decrypts them with
the people's keys. A person whose id derives from an address the way ``tieline import`` and
the vCard sync derive it (``p-`` + hash of workspace and address) is found by that address
even before their e-mail field is read.
"""

from __future__ import annotations

import hashlib
from typing import Any

from tieline.plumbing.crypto import KeyStore, decrypt_value
from tieline.projections.queries.people import list_people
from tieline.projections.readpool import LivePool
from tieline.services.sync.mapping import normalize_email

PAGE = 1000
#: The directory's personal fields the sync compares with a vCard.
FIELDS = ("display_name", "email", "phone", "organization", "title")


def normalize_phone(value: str) -> str:
    """Digits only, with a leading + kept: ``+44 (0)20 7946-0000`` -> ``+440207946000``.
    Too short to tell people apart (fewer than 6 digits) -> ""."""
    digits = "".join(ch for ch in value if ch.isdigit())
    if len(digits) < 6:
        return ""
    return ("+" if value.strip().startswith("+") else "") + digits


def person_id_for_email(workspace: str, email: str) -> str:
    """The deterministic person id of an address (the same derivation as ``tieline import``,
    so a person imported from a file and one synced from an address book are one person)."""
    basis = "email:" + normalize_email(email)
    digest = hashlib.sha256(f"tieline-person|{workspace}|{basis}".encode()).hexdigest()
    return f"p-{digest[:16]}"


class Directory:
    """A snapshot of one workspace's people: ids, and who has which address."""

    def __init__(
        self,
        workspace: str,
        ids: set[str],
        emails: dict[str, str],
        fields: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.workspace = workspace
        self.ids = ids
        self.emails = emails  # address -> person id
        #: person id -> their decrypted directory fields (display_name, email, phone, ...)
        self.fields = fields or {}
        self.phones = {
            normalize_phone(f["phone"]): pid
            for pid, f in self.fields.items()
            if f.get("phone") and normalize_phone(f["phone"])
        }

    def person_of_phone(self, phone: str) -> str | None:
        digits = normalize_phone(phone)
        return self.phones.get(digits) if digits else None

    def person_of(self, email: str) -> str | None:
        addr = normalize_email(email)
        found = self.emails.get(addr)
        if found is not None:
            return found
        derived = person_id_for_email(self.workspace, addr)
        return derived if derived in self.ids else None

    def emails_of(self, person_id: str) -> frozenset[str]:
        return frozenset(e for e, p in self.emails.items() if p == person_id)


async def load_directory(live: LivePool, keystore: KeyStore, ws: str) -> Directory:
    """Read every (not forgotten) person of ``ws`` and decrypt their addresses."""
    rows: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        async with live.connection() as conn:
            page = await list_people(conn, ws, PAGE, after)
        rows.extend(r for r in page if not r["forgotten"])
        if len(page) < PAGE:
            break
        after = page[-1]["person_id"]
    ids = {r["person_id"] for r in rows}
    keys = await keystore.keys(ws, list(ids)) if ids else {}
    emails: dict[str, str] = {}
    fields: dict[str, dict[str, Any]] = {}
    for r in rows:
        key = keys.get(r["person_id"])
        if key is None:
            continue
        plain = {f: decrypt_value(key, ws, f, r[f]) for f in FIELDS if r.get(f) is not None}
        fields[r["person_id"]] = plain
        value = plain.get("email")
        if isinstance(value, str) and "@" in value:
            emails.setdefault(normalize_email(value), r["person_id"])
    return Directory(ws, ids, emails, fields)
