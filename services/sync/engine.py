"""One run of one source: pull the changes, keep the objects, then bring the log in line with
them.

The run is a reconciliation, not a replay of changes: after the pull, every object cached for
the source is mapped again (:mod:`services.sync.mapping`) into the meetings it should have
produced by now, and compared with the meetings this source has recorded. Missing ones are
recorded, ones the calendar no longer says (moved, edited, cancelled, deleted, a declined
invitation) are retracted. Because every id is derived from the data, a run that crashed
anywhere, or a second sync process doing the same, sends the same commands again, and the
write side records each event once. Meetings older than the window are left as they are
unless their object was deleted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog
from psycopg_pool import AsyncConnectionPool
from tieline.plumbing.crypto import KeyStore, MasterKey
from tieline.projections.readpool import LivePool
from tieline.services.sync import state
from tieline.services.sync.commands import CommandBus, accepted
from tieline.services.sync.contacts import commands as contact_commands
from tieline.services.sync.contacts import parse_contact
from tieline.services.sync.dav import (
    CollectionChanges,
    SourceError,
    pull_addressbooks,
    pull_calendars,
)
from tieline.services.sync.directory import Directory, load_directory
from tieline.services.sync.mapping import (
    Owner,
    meeting_for,
    occurrences,
    retraction_for,
    window,
)
from tieline.services.webhooks.ssrf import Policy, UrlRefused, check_url

log = structlog.get_logger(__name__)


@dataclass
class RunStats:
    """What one run did (kept as the source's ``last_run``)."""

    collections: int = 0
    changed: int = 0
    deleted: int = 0
    objects: int = 0
    unreadable: int = 0
    meetings: int = 0
    recorded: int = 0
    already_recorded: int = 0
    retracted: int = 0
    rejected: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


@dataclass
class Desired:
    """A meeting the cached objects say should be on the log."""

    obj: dict[str, Any]
    href: str
    occurred_at: datetime


class Engine:
    """Runs sources; shared by the sync process and ``tieline sync run``'s direct mode."""

    def __init__(
        self,
        state_pool: AsyncConnectionPool[Any],
        live: LivePool,
        keystore: KeyStore,
        bus: CommandBus,
        master_key: MasterKey,
        timeout_s: float = 30.0,
        policy: Policy | None = None,
    ) -> None:
        self.state_pool = state_pool
        self.live = live
        self.keystore = keystore
        self.bus = bus
        self.master_key = master_key
        self.timeout_s = timeout_s
        #: Which addresses a source may point at (checked before every pull); None: any.
        self.policy = policy

    async def run(self, row: dict[str, Any], now: datetime | None = None) -> RunStats:
        """Pull and reconcile one source (``row`` from :func:`state.claim_due`)."""
        started = time.monotonic()
        stats = RunStats()
        if self.policy is not None:
            try:
                await check_url(row["url"], self.policy)
            except UrlRefused as exc:
                raise SourceError(str(exc)) from exc
        password = state.password_of(row, self.master_key)
        tokens = dict(row["tokens"] or {})
        if row["kind"] == "carddav":
            async with self.state_pool.connection() as conn:
                cached = await state.cached_etags(conn, row["source_id"])
            changes = await pull_addressbooks(
                row["url"], row["username"], password, tokens, cached, self.timeout_s
            )
            await self._store(row["source_id"], changes, stats)
            await self.reconcile_contacts(row, stats)
        else:
            changes = await pull_calendars(
                row["url"], row["username"], password, tokens, self.timeout_s
            )
            await self._store(row["source_id"], changes, stats)
            await self.reconcile(row, stats, now or datetime.now(UTC))
        stats.seconds = round(time.monotonic() - started, 3)
        return stats

    async def _store(
        self, source_id: str, changes: list[CollectionChanges], stats: RunStats
    ) -> None:
        stats.collections = len(changes)
        async with self.state_pool.connection() as conn:
            for ch in changes:
                deleted = list(ch.deleted)
                if ch.full:
                    cur = await conn.execute(
                        "SELECT href FROM sync_items WHERE source_id = %s AND collection = %s",
                        (source_id, ch.collection),
                    )
                    present = set(ch.members or ()) | {h for h, _, _ in ch.changed}
                    deleted += [r["href"] for r in await cur.fetchall() if r["href"] not in present]
                stats.changed += len(ch.changed)
                stats.deleted += len(deleted)
                await state.store_changes(
                    conn, source_id, ch.collection, ch.changed, deleted, ch.token, self.master_key
                )
            await state.drop_collections(conn, source_id, [ch.collection for ch in changes])

    async def desired(
        self, row: dict[str, Any], directory: Directory, now: datetime, stats: RunStats
    ) -> tuple[dict[str, Desired], set[str]]:
        """Every meeting the cached objects map to now, and the hrefs of the objects."""
        async with self.state_pool.connection() as conn:
            cached = await state.items(conn, row["source_id"], self.master_key)
        owner = Owner(row["owner"], directory.emails_of(row["owner"]))
        since, until = window(now, row["window_days"])
        out: dict[str, Desired] = {}
        for href, data in cached:
            try:
                occs = list(occurrences(data, since, until))
            except Exception as exc:  # a malformed object must not stop the others
                stats.unreadable += 1
                log.warning("sync.unreadable_object", href=href, error=repr(exc)[:200])
                continue
            for occ in occs:
                m = meeting_for(row["source_id"], occ, owner, directory.person_of, now)
                if m is not None:
                    out[m["event_id"]] = Desired(m, href, occ.start)
        stats.objects = len(cached)
        stats.meetings = len(out)
        return out, {h for h, _ in cached}

    async def reconcile(self, row: dict[str, Any], stats: RunStats, now: datetime) -> None:
        """Record the meetings missing from the log, retract the ones no longer there."""
        ws, source_id = row["workspace_id"], row["source_id"]
        if not row["owner"]:
            raise SourceError("the source has no owner (the person whose calendar it is)")
        directory = await load_directory(self.live, self.keystore, ws)
        if row["owner"] not in directory.ids:
            raise SourceError(f"owner {row['owner']!r} is not a person in workspace {ws!r}")
        want, hrefs = await self.desired(row, directory, now, stats)
        async with self.state_pool.connection() as conn:
            have = {r["event_id"]: r for r in await state.recorded(conn, source_id)}
        since, _ = window(now, row["window_days"])
        stale = [
            e
            for e, r in have.items()
            if e not in want and (r["href"] not in hrefs or r["occurred_at"] >= since)
        ]
        await self._retract(ws, source_id, stale, hrefs, have, stats)
        await self._record(ws, source_id, [d for e, d in want.items() if e not in have], stats)

    async def _retract(
        self,
        ws: str,
        source_id: str,
        stale: list[str],
        hrefs: set[str],
        have: dict[str, dict[str, Any]],
        stats: RunStats,
    ) -> None:
        if not stale:
            return
        items = [
            retraction_for(
                e,
                "deleted from the calendar"
                if have[e]["href"] not in hrefs
                else "changed or cancelled in the calendar",
            )
            for e in stale
        ]
        results = await self.bus.record(ws, "interactions", items, f"sync:{source_id}")
        # 409: retracted already (by a run that crashed before noting it); 404: the meeting
        # never reached the log. Either way there is nothing left to retract.
        done = []
        for e, r in zip(stale, results, strict=True):
            if accepted(r) or r.get("status") in (404, 409):
                done.append(e)
            elif len(stats.rejected) < 5:
                stats.rejected.append(str(r.get("error")))
        stats.retracted += len(done)
        async with self.state_pool.connection() as conn:
            await state.mark_retracted(conn, source_id, done)

    async def _record(
        self, ws: str, source_id: str, missing: list[Desired], stats: RunStats
    ) -> None:
        if not missing:
            return
        missing.sort(key=lambda d: d.occurred_at)
        results = await self.bus.record(
            ws, "interactions", [d.obj for d in missing], f"sync:{source_id}"
        )
        ok: list[tuple[str, str, datetime]] = []
        for d, r in zip(missing, results, strict=True):
            if accepted(r):
                ok.append((d.obj["event_id"], d.href, d.occurred_at))
                if r.get("duplicate"):
                    stats.already_recorded += 1
                else:
                    stats.recorded += 1
            elif len(stats.rejected) < 5:
                stats.rejected.append(str(r.get("error")))
        async with self.state_pool.connection() as conn:
            await state.mark_recorded(conn, source_id, ok)

    async def reconcile_contacts(self, row: dict[str, Any], stats: RunStats) -> None:
        """Add the people the address book has and the workspace lacks; update the ones whose
        card changed. Deleting a card removes nobody (people are forgotten on purpose only)."""
        ws, source_id = row["workspace_id"], row["source_id"]
        directory = await load_directory(self.live, self.keystore, ws)
        async with self.state_pool.connection() as conn:
            cached = await state.items(conn, source_id, self.master_key)
            known = await state.known_contacts(conn, source_id)
        contacts = []
        for href, data in cached:
            try:
                c = parse_contact(href, data)
            except Exception as exc:  # one malformed card must not stop the others
                stats.unreadable += 1
                log.warning("sync.unreadable_card", href=href, error=repr(exc)[:200])
                continue
            if c is not None:
                contacts.append(c)
        stats.objects = len(cached)
        todo, uids = contact_commands(source_id, contacts, directory, known)
        results = await self.bus.record(ws, "people", todo, f"sync:{source_id}") if todo else []
        for r in results:
            if accepted(r):
                stats.recorded += 0 if r.get("duplicate") else 1
                stats.already_recorded += 1 if r.get("duplicate") else 0
            elif len(stats.rejected) < 5:
                stats.rejected.append(str(r.get("error")))
        async with self.state_pool.connection() as conn:
            await state.remember_contacts(conn, source_id, uids)
