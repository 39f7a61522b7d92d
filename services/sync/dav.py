"""Pulling a source's changes from a CalDAV server with the ``caldav`` library.

Each calendar collection is pulled incrementally: a WebDAV ``sync-collection`` REPORT with the
sync token of the last pull (RFC 6578), which the library falls back from to a full listing
compared by ETag when the server has no sync tokens or forgot ours (its ``fake-`` tokens). The
library is blocking, so a pull runs in a worker thread.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit
from xml.sax.saxutils import escape

from caldav.davclient import DAVClient
from caldav.elements import dav


@dataclass
class CollectionChanges:
    """What changed in one collection since ``old_token``."""

    collection: str
    token: str | None
    changed: list[tuple[str, str | None, str]] = field(default_factory=list)  # href, etag, data
    deleted: list[str] = field(default_factory=list)
    #: True when the pull listed every member (a first pull, or the ETag fallback): members
    #: cached before and missing now were deleted.
    full: bool = False
    #: Every member's href when ``full`` and only the changed ones were fetched.
    members: list[str] | None = None


class SourceError(Exception):
    """A pull failed for a reason worth showing to the user (authentication, unreachable)."""


def _describe(exc: BaseException) -> str:
    name = type(exc).__name__
    if name == "AuthorizationError":
        return "authentication refused by the server (check the user and password)"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{name}: {text}"[:500] if text else name


def _pull_calendars(
    url: str, user: str, password: str, tokens: dict[str, Any], timeout: float
) -> list[CollectionChanges]:
    client = DAVClient(url=url, username=user, password=password, timeout=int(timeout))
    with client:
        wanted = urlsplit(url).path.rstrip("/") + "/"
        calendars = [
            c
            for c in client.principal().calendars()  # type: ignore[no-untyped-call]
            if str(c.url.path).rstrip("/").startswith(wanted.rstrip("/"))
        ]
        out = []
        for cal in calendars:
            key = str(cal.url.canonical())
            old = tokens.get(key)
            result = cal.objects_by_sync_token(sync_token=old, load_objects=True)
            new = str(result.sync_token) if result.sync_token is not None else None
            full = old is None or (new is not None and new.startswith("fake-") and new != old)
            changes = CollectionChanges(collection=key, token=new, full=full)
            # Newer caldav releases list removals apart; older ones leave a removed member without
            # data (its load() found nothing).
            deleted = {str(u) for u in getattr(result, "deleted_urls", ())}
            for obj in result.objects:
                href = str(obj.url.canonical())
                if href in deleted or not obj.data:
                    changes.deleted.append(href)
                    continue
                etag = obj.props.get(dav.GetEtag.tag) if hasattr(obj, "props") else None
                changes.changed.append((href, str(etag) if etag else None, str(obj.data)))
            out.append(changes)
        return out


async def pull_calendars(
    url: str, user: str, password: str, tokens: dict[str, Any], timeout_s: float = 30.0
) -> list[CollectionChanges]:
    """The changes of every calendar at or under ``url`` (a calendar's URL names that one;
    a server or principal URL names all the user's calendars)."""
    try:
        return await asyncio.to_thread(_pull_calendars, url, user, password, tokens, timeout_s)
    except Exception as exc:
        raise SourceError(_describe(exc)) from exc


CARDDAV_ADDRESSBOOK = "{urn:ietf:params:xml:ns:carddav}addressbook"


#: The two request bodies the address-book pull sends (RFC 4918 PROPFIND, RFC 6578 REPORT).
PROPFIND = (
    '<?xml version="1.0" encoding="utf-8"?><D:propfind xmlns:D="DAV:"><D:prop>'
    "<D:{prop}/></D:prop></D:propfind>"
)
SYNC_COLLECTION = (
    '<?xml version="1.0" encoding="utf-8"?><D:sync-collection xmlns:D="DAV:">'
    "<D:sync-token>{token}</D:sync-token><D:sync-level>1</D:sync-level>"
    "<D:prop><D:getetag/></D:prop></D:sync-collection>"
)


def _addressbooks(client: Any, url: str) -> list[str]:
    """The address books at ``url``: itself when it is one, else its children that are."""
    resp = client.propfind(url, PROPFIND.format(prop="resourcetype"), depth=1)
    props = resp.expand_simple_props(multi_value_props=[dav.ResourceType()])
    base = urlsplit(url)
    found = []
    for href, p in props.items():
        types = p.get(dav.ResourceType.tag) or []
        types = types if isinstance(types, list) else [types]
        if CARDDAV_ADDRESSBOOK in types:
            found.append(f"{base.scheme}://{base.netloc}{urlsplit(href).path}")
    here = f"{base.scheme}://{base.netloc}{base.path}"
    return [here] if here in found else sorted(found)


def _etags(client: Any, book: str, token: str | None) -> tuple[dict[str, str | None], Any]:
    """href -> ETag (None: removed) from a sync-collection REPORT from ``token``, or from a
    PROPFIND of the members when ``token`` is None."""
    if token is None:
        resp = client.propfind(book, PROPFIND.format(prop="getetag"), depth=1)
    else:
        resp = client.report(book, SYNC_COLLECTION.format(token=escape(token)), depth=0)
    base = urlsplit(book)
    out: dict[str, str | None] = {}
    for href, p in resp.expand_simple_props([dav.GetEtag()]).items():
        full = f"{base.scheme}://{base.netloc}{urlsplit(href).path}"
        if full.rstrip("/") != book.rstrip("/"):
            etag = p.get(dav.GetEtag.tag)
            out[full] = str(etag) if etag else None
    return out, resp


def _pull_book(
    client: Any, book: str, old: str | None, cached: dict[str, str | None]
) -> CollectionChanges:
    """One address book: a sync-collection REPORT from ``old`` (RFC 6578); when the server
    refuses it, a PROPFIND of every member's ETag compared with ``cached``."""
    try:
        etags, resp = _etags(client, book, old or "")
        token, full = resp.sync_token, old is None
        wanted = {h: e for h, e in etags.items() if e is not None and cached.get(h) != e}
        gone = [h for h, e in etags.items() if e is None]
    except Exception as exc:
        if type(exc).__name__ == "AuthorizationError" and "valid-sync-token" not in str(exc):
            raise
        etags, _ = _etags(client, book, None)
        token, full = None, True
        wanted = {h: e for h, e in etags.items() if e is not None and cached.get(h) != e}
        gone = [h for h in cached if h not in etags]
    changes = CollectionChanges(collection=book, token=token, full=full, deleted=gone)
    for href, etag in wanted.items():
        got = client.request(href, "GET")
        if got.status == 404:
            changes.deleted.append(href)
            continue
        raw = got.raw
        changes.changed.append((href, etag, raw.decode() if isinstance(raw, bytes) else str(raw)))
    if full:
        changes.members = [h for h, e in etags.items() if e is not None]
    return changes


def _pull_addressbooks(
    url: str,
    user: str,
    password: str,
    tokens: dict[str, Any],
    cached: dict[str, dict[str, str | None]],
    timeout: float,
) -> list[CollectionChanges]:
    client = DAVClient(url=url, username=user, password=password, timeout=int(timeout))
    with client:
        return [
            _pull_book(client, book, tokens.get(book), cached.get(book, {}))
            for book in _addressbooks(client, url)
        ]


async def pull_addressbooks(
    url: str,
    user: str,
    password: str,
    tokens: dict[str, Any],
    cached: dict[str, dict[str, str | None]],
    timeout_s: float = 30.0,
) -> list[CollectionChanges]:
    """The changes of every CardDAV address book at or directly under ``url``. ``cached``:
    collection -> href -> ETag of what the last pull kept (for the ETag fallback)."""
    try:
        return await asyncio.to_thread(
            _pull_addressbooks, url, user, password, tokens, cached, timeout_s
        )
    except Exception as exc:
        raise SourceError(_describe(exc)) from exc
