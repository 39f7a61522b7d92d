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

import caldav  # type: ignore[import-untyped]
from caldav.elements import dav  # type: ignore[import-untyped]


@dataclass
class CollectionChanges:
    """What changed in one collection since ``old_token``."""

    collection: str
    token: str | None
    changed: list[tuple[str, str | None, str]] = field(default_factory=list)  # href, etag, data
    deleted: list[str] = field(default_factory=list)
    #: True when ``changed`` lists every member (a first pull, or the ETag fallback): members
    #: cached before and missing now were deleted.
    full: bool = False


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
    client = caldav.DAVClient(url=url, username=user, password=password, timeout=int(timeout))
    with client:
        wanted = urlsplit(url).path.rstrip("/") + "/"
        calendars = [
            c
            for c in client.principal().calendars()
            if str(c.url.path).rstrip("/").startswith(wanted.rstrip("/"))
        ]
        out = []
        for cal in calendars:
            key = str(cal.url.canonical())
            old = tokens.get(key)
            result = cal.get_objects_by_sync_token(sync_token=old, load_objects=True)
            new = str(result.sync_token) if result.sync_token is not None else None
            full = old is None or (new is not None and new.startswith("fake-") and new != old)
            changes = CollectionChanges(collection=key, token=new, full=full)
            deleted = {str(u) for u in result.deleted_urls}
            for obj in result.objects:
                href = str(obj.url.canonical())
                if href in deleted or obj.data is None:
                    changes.deleted.append(href)
                    continue
                etag = obj.props.get(dav.GetEtag.tag) if hasattr(obj, "props") else None
                changes.changed.append((href, str(etag) if etag else None, str(obj.data)))
            out.append(changes)
        return out


async def pull_calendars(
    url: str, user: str, password: str, tokens: dict[str, Any], timeout: float = 30.0
) -> list[CollectionChanges]:
    """The changes of every calendar at or under ``url`` (a calendar's URL names that one;
    a server or principal URL names all the user's calendars)."""
    try:
        return await asyncio.to_thread(_pull_calendars, url, user, password, tokens, timeout)
    except Exception as exc:
        raise SourceError(_describe(exc)) from exc
