"""Address-book sync against a real CardDAV server (Radicale): vCards add people or update the
person they match (by UID, e-mail or phone), duplicate cards make one person, a likely
duplicate of a hand-typed person is resolved by a merge, re-runs record nothing, an edited card
updates its person once."""

from __future__ import annotations

import hashlib

import caldav
import httpx
import pytest

from tests.sync.conftest import Dav
from tests.sync.helpers import add_person, events, settle, sync_now

pytestmark = pytest.mark.integration

MKCOL = (
    '<?xml version="1.0" encoding="utf-8"?><D:mkcol xmlns:D="DAV:" '
    'xmlns:C="urn:ietf:params:xml:ns:carddav"><D:set><D:prop><D:resourcetype><D:collection/>'
    "<C:addressbook/></D:resourcetype></D:prop></D:set></D:mkcol>"
)


def card(uid: str, fn: str, *lines: str) -> str:
    body = ["BEGIN:VCARD", "VERSION:3.0", f"UID:{uid}", f"FN:{fn}", *lines, "END:VCARD", ""]
    return "\r\n".join(body)


def put(client: caldav.DAVClient, book: str, uid: str, text: str) -> None:
    r = client.put(f"{book}{uid}.vcf", text, {"Content-Type": "text/vcard"})
    assert r.status in (201, 204), r.status


def person_events(api: httpx.Client, ws: str) -> list[dict[str, object]]:
    return [e for e in events(api, ws) if str(e["type"]).startswith("person.")]


def test_vcards_add_and_update_people(api: httpx.Client, ws: str, radicale: Dav) -> None:
    seq = add_person(api, ws, "grace", "Grace Hopper", "grace@example.org")
    # Typed in by hand without an address: the card below cannot be matched to him.
    seq = max(seq, add_person(api, ws, "lt", "Linus Torvalds", None))
    assert api.get(f"/v1/workspaces/{ws}/people/grace", params={"min_seq": seq}).status_code == 200
    client = caldav.DAVClient(url=radicale.url, username=radicale.user, password=radicale.password)
    book = f"{radicale.url}{radicale.user}/{ws}-book/"
    assert client.mkcol(book, MKCOL).status == 201
    put(
        client,
        book,
        "g1",
        card("g1", "Grace B. Hopper", "EMAIL:Grace@Example.org", "TEL:+1 555 0100", "ORG:US Navy"),
    )
    put(client, book, "l1", card("l1", "Linus Torvalds", "EMAIL;TYPE=pref:linus@example.org"))
    # A duplicate card of the same person (same address, another name and a number).
    put(client, book, "l2", card("l2", "Linus T.", "EMAIL:linus@example.org", "TEL:+1 555 0199"))
    put(client, book, "x1", card("x1", "Margaret Hamilton", "TEL:+1 555 0142"))
    r = api.post(
        f"/v1/workspaces/{ws}/sync-sources",
        json={
            "kind": "carddav",
            "url": book,
            "username": radicale.user,
            "password": radicale.password,
        },
    )
    assert r.status_code == 201, r.text
    sid = r.json()["source_id"]
    s = sync_now(api, ws, sid)
    assert s["status"]["last_error"] is None, s
    assert s["status"]["items_seen"] == 4

    linus = (
        "p-"
        + hashlib.sha256(f"tieline-person|{ws}|email:linus@example.org".encode()).hexdigest()[:16]
    )
    evs = settle(api, ws, lambda e: len([x for x in e if x["type"].startswith("person.")]) >= 5)
    added = [e for e in evs if e["type"] == "person.added" and e["recorded_by"] == f"sync:{sid}"]
    assert sorted(str(e["display_name"]) for e in added) == ["Linus Torvalds", "Margaret Hamilton"]
    [lin] = [e for e in added if e["person_id"] == linus]
    assert lin["email"] == "linus@example.org" and lin["phone"] == "+1 555 0199"
    [upd] = [e for e in evs if e["type"] == "person.updated"]
    assert upd["person_id"] == "grace" and upd["recorded_by"] == f"sync:{sid}"
    assert (upd["display_name"], upd["phone"], upd["organization"]) == (
        "Grace B. Hopper",
        "+1 555 0100",
        "US Navy",
    )
    assert upd.get("email") is None  # the same address, only in other case
    grace = api.get(f"/v1/workspaces/{ws}/people/grace").json()
    assert grace["display_name"] == "Grace B. Hopper"

    # The hand-typed Linus and the one from the address book are listed as likely duplicates.
    r = api.get(f"/v1/workspaces/{ws}/people/duplicates")
    assert r.status_code == 200, r.text
    groups = {tuple(p["person_id"] for p in g["people"]): g["reasons"] for g in r.json()["groups"]}
    assert groups == {tuple(sorted(["lt", linus])): ["same name"]}
    # Merging the hand-typed one into the synced one resolves it (docs/sync.md).
    r = api.post(
        f"/v1/workspaces/{ws}/events",
        json={"type": "person.merged", "person_id": "lt", "survivor": linus},
    )
    assert r.status_code == 201, r.text
    at = {"min_seq": r.json()["seq"]}
    assert api.get(f"/v1/workspaces/{ws}/people/duplicates", params=at).json()["groups"] == []
    listed = api.get(f"/v1/workspaces/{ws}/people", params=at).json()["people"]
    assert "lt" not in {p["person_id"] for p in listed} and linus in {
        p["person_id"] for p in listed
    }

    # Nothing changed: a re-run records nothing.
    n = len(person_events(api, ws))
    s = sync_now(api, ws, sid)
    assert s["status"]["last_run"]["recorded"] == 0
    assert len(person_events(api, ws)) == n

    # An edited card updates its person once, however often the sync runs.
    put(
        client,
        book,
        "l1",
        card("l1", "Linus B. Torvalds", "EMAIL:linus@example.org", "TITLE:Maintainer"),
    )
    for _ in range(3):
        sync_now(api, ws, sid)
    evs = settle(api, ws, lambda e: len([x for x in e if x["type"] == "person.updated"]) >= 2)
    [upd2] = [e for e in evs if e["type"] == "person.updated" and e["person_id"] == linus]
    assert (upd2["display_name"], upd2["title"]) == ("Linus B. Torvalds", "Maintainer")
    assert len(person_events(api, ws)) == n + 1
