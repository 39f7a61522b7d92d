"""Cursor pagination, the same on every list: ``?limit=N`` items per page, and each answer's
``next_cursor`` (null on the last page) passed back as ``?cursor=`` for the next page.

A cursor is opaque to clients: base64url (no padding) of a small JSON object naming the list
it belongs to and the sort key of the last item it returned (keyset pagination), plus, for
lists ranked by a score that decays with time, the instant the first page was computed at, so
every page ranks at the same instant. A page starts strictly after the key, so writes
meanwhile never shift the pages: an item that does not change is listed exactly once however
many items are added or removed elsewhere; only an item whose own sort key changes between
two pages can be seen twice or not at all.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, TypeVar

from fastapi import Query
from tieline.services.api.errors import ApiError

T = TypeVar("T")
#: One sort-key component: what a cursor may hold.
KeyPart = str | int | float | bool | None
Key = tuple[KeyPart, ...]

CursorParam = Annotated[
    str | None,
    Query(
        max_length=2048,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="Opaque: the `next_cursor` of the previous page. Leave out for the first.",
    ),
]


@dataclass(frozen=True)
class Cursor:
    """A decoded cursor: the sort key of the last item returned, and the pinned instant."""

    key: Key
    at: datetime | None = None


def encode(listing: str, key: Sequence[KeyPart], at: datetime | None = None) -> str:
    """The opaque cursor for the page after the item with sort key ``key``."""
    obj: dict[str, Any] = {"l": listing, "k": list(key)}
    if at is not None:
        obj["t"] = at.isoformat()
    raw = json.dumps(obj, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def refuse(why: str) -> ApiError:
    return ApiError(
        422,
        f"cursor: {why}; pass the next_cursor of the previous page unchanged",
        [{"loc": ["query", "cursor"], "msg": why}],
    )


def _fits(value: Any, kind: type) -> bool:
    if kind is float:  # JSON does not keep 1.0 apart from 1
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is str:  # PostgreSQL text cannot hold NUL: it would fail the query (a 500)
        return isinstance(value, str) and "\x00" not in value
    return isinstance(value, kind)


def decode(
    cursor: str | None, listing: str, kinds: Sequence[type], nullable: Sequence[int] = ()
) -> Cursor | None:
    """The cursor of ``listing`` (None for the first page), or a 422 naming ``cursor`` when it
    is malformed or belongs to another list. ``kinds`` are the key's component types
    (``nullable``: indexes that may also be null)."""
    if cursor is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        obj = json.loads(raw)
    except (binascii.Error, ValueError, RecursionError):
        raise refuse("not a cursor of this API") from None
    if not isinstance(obj, dict) or obj.get("l") != listing:
        raise refuse(f"not a cursor of this list ({listing})")
    key = obj.get("k")
    if not isinstance(key, list) or len(key) != len(kinds):
        raise refuse("malformed sort key")
    for i, (value, kind) in enumerate(zip(key, kinds, strict=True)):
        if not (_fits(value, kind) or (value is None and i in nullable)):
            raise refuse("malformed sort key")
    at = None
    if "t" in obj:
        try:
            at = datetime.fromisoformat(obj["t"])
        except (TypeError, ValueError):
            raise refuse("malformed instant") from None
        if at.tzinfo is None:
            raise refuse("malformed instant")
    return Cursor(tuple(key), at)


def page(
    items: Sequence[T], sort_key: Callable[[T], Key], limit: int, after: Key | None
) -> tuple[list[T], Key | None]:
    """The ``limit`` items after the key ``after`` from ``items`` (sorted by ``sort_key``),
    and the key to continue from (None when nothing follows)."""
    keys = [sort_key(item) for item in items]
    start = 0 if after is None else bisect.bisect_right(keys, after)
    taken = list(items[start : start + limit])
    more = start + limit < len(items)
    return taken, (keys[start + limit - 1] if more else None)


def next_cursor(
    listing: str, rows: Sequence[T], limit: int, key: Callable[[T], Key], at: datetime | None = None
) -> str | None:
    """For a page fetched with ``LIMIT limit + 1``: the cursor after its last kept row, or
    None when no row followed (``rows`` holds the extra row, if any, at the end)."""
    if len(rows) <= limit:
        return None
    return encode(listing, key(rows[limit - 1]), at)
