"""From vCards to ``person.added`` / ``person.updated`` commands: the pure part of the
address-book sync.

A vCard is matched to a person in this order: the person it was matched to before (by vCard
UID, remembered per source), a person with one of its e-mail addresses, one with one of its
phone numbers, the person whose id derives from its UID. A card that matches nobody adds a
person with a deterministic id (from its first address, else its UID, else its name: the same
ids ``tieline import`` gives). Cards that match the same person (duplicates in the address
book) are folded together, first non-empty value per field in href order, so they never
overwrite each other back and forth. A person is updated only with the fields whose value
the cards changed; the command's id derives from those values, so one change is sent once.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import vobject  # type: ignore[import-untyped]
from tieline.services.sync.directory import Directory, normalize_phone, person_id_for_email
from tieline.services.sync.mapping import SYNC_NAMESPACE, normalize_email

#: Directory field -> the longest plaintext the event model takes.
LIMITS = {"display_name": 200, "email": 254, "phone": 64, "organization": 200, "title": 200}


@dataclass
class Contact:
    """What tieline takes from one vCard."""

    href: str
    uid: str
    name: str | None
    emails: list[str] = field(default_factory=list)
    phones: list[str] = field(default_factory=list)
    organization: str | None = None
    title: str | None = None

    def values(self) -> dict[str, str]:
        """The person fields this card sets (its preferred address and number)."""
        raw = {
            "display_name": self.name,
            "email": self.emails[0] if self.emails else None,
            "phone": self.phones[0] if self.phones else None,
            "organization": self.organization,
            "title": self.title,
        }
        return {k: _clip(v, LIMITS[k]) for k, v in raw.items() if v and _clip(v, LIMITS[k])}


def _clip(value: str, limit: int) -> str:
    value = " ".join(value.split())
    return value if len(value) <= limit else value[: limit - 1] + "…"


def _preferred_first(items: list[Any]) -> list[str]:
    def pref(it: Any) -> int:
        types = {str(t).lower() for t in it.params.get("TYPE", [])}
        return 0 if "pref" in types or it.params.get("PREF") else 1

    return [str(it.value).strip() for it in sorted(items, key=pref) if str(it.value).strip()]


def _name(card: Any) -> str | None:
    contents = card.contents
    if contents.get("fn") and str(contents["fn"][0].value).strip():
        return str(contents["fn"][0].value).strip()
    if contents.get("n"):
        n = contents["n"][0].value
        text = " ".join(p for p in (str(n.given), str(n.family)) if p and p.strip())
        return text or None
    return None


def _org(card: Any) -> str | None:
    items = card.contents.get("org")
    if not items:
        return None
    value = items[0].value
    parts = value if isinstance(value, list) else [value]
    text = ", ".join(str(p) for p in parts if str(p).strip())
    return text or None


def parse_contact(href: str, text: str) -> Contact | None:
    """The contact of one vCard resource (None when it has no name, address or number)."""
    card = vobject.readOne(text)
    contents = card.contents
    c = Contact(
        href=href,
        uid=str(contents["uid"][0].value).strip() if contents.get("uid") else href,
        name=_name(card),
        emails=[normalize_email(e) for e in _preferred_first(contents.get("email", []))],
        phones=_preferred_first(contents.get("tel", [])),
        organization=_org(card),
        title=str(contents["title"][0].value).strip() if contents.get("title") else None,
    )
    if c.name is None:
        c.name = c.emails[0] if c.emails else (c.phones[0] if c.phones else None)
    return c if c.name else None


def derived_id(ws: str, c: Contact) -> str:
    """A new person's id: the same derivation as ``tieline import``."""
    if c.emails:
        return person_id_for_email(ws, c.emails[0])
    basis = (
        "uid:" + c.uid.strip() if c.uid else "name:" + " ".join((c.name or "").split()).casefold()
    )
    return "p-" + hashlib.sha256(f"tieline-person|{ws}|{basis}".encode()).hexdigest()[:16]


def match(c: Contact, directory: Directory, known: dict[str, str]) -> str:
    """The person a contact is (see the module docstring for the order)."""
    if c.uid in known:
        return known[c.uid]
    for email in c.emails:
        found = directory.person_of(email)
        if found is not None:
            return found
    for phone in c.phones:
        found = directory.person_of_phone(phone)
        if found is not None:
            return found
    return derived_id(directory.workspace, c)


def _digest(values: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:32]


def commands(
    source_id: str, contacts: Iterable[Contact], directory: Directory, known: dict[str, str]
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The person commands the contacts call for, and every card's UID -> person id."""
    folded: dict[str, dict[str, str]] = {}
    uids: dict[str, str] = {}
    for c in sorted(contacts, key=lambda c: c.href):
        pid = match(c, directory, known)
        uids[c.uid] = pid
        mine = folded.setdefault(pid, {})
        for k, v in c.values().items():
            mine.setdefault(k, v)
    out: list[dict[str, Any]] = []
    for pid, values in sorted(folded.items()):
        if pid not in directory.ids:
            key = f"person.added|{directory.workspace}|{pid}"
            out.append(
                {
                    "type": "person.added",
                    "person_id": pid,
                    **values,
                    "event_id": str(uuid.uuid5(SYNC_NAMESPACE, key)),
                }
            )
            continue
        have = directory.fields.get(pid, {})
        changed = {k: v for k, v in values.items() if not _same(k, have.get(k), v)}
        if changed:
            key = f"person.updated|{source_id}|{pid}|{_digest(changed)}"
            out.append(
                {
                    "type": "person.updated",
                    "person_id": pid,
                    **changed,
                    "event_id": str(uuid.uuid5(SYNC_NAMESPACE, key)),
                }
            )
    return out, uids


def _same(field_name: str, have: Any, want: str) -> bool:
    if not isinstance(have, str):
        return False
    if field_name == "email":
        return normalize_email(have) == normalize_email(want)
    if field_name == "phone":
        return normalize_phone(have) == normalize_phone(want) and bool(normalize_phone(want))
    return " ".join(have.split()) == want
