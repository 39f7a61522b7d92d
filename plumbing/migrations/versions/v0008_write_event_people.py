"""The write side remembers whom each event it took names, so an erasure can clear its digest.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02

``write_events.digest`` is a SHA-256 of the body a client sent (its notes and other free text
in plaintext, before encryption), kept so that a re-sent ``event_id`` with another body is
refused (409). After a person's erasure their notes are unreadable in the log, but anyone
holding the database and the log could still *confirm a guess* of a note: fill the guess into
the event as the log shows it and compare the digests. ``people`` lists the people an event
names (and, for a retraction, those of the event it retracts); erasing any of them clears the
digest (``WriteState.forget_digests``). Rows taken before this revision get theirs from the
log once, at the write services' start (``write_backfill.backfill_people``). Both indexes are
built while the table is locked against writes: on a large table, run the migration
(``tieline migrate``) before starting the new release's services.
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade(**kw: str) -> None:
    """Add ``write_events.people`` (NULL: not known yet) and the indexes an erasure uses."""
    op.execute("ALTER TABLE write_events ADD COLUMN IF NOT EXISTS people text[]")
    op.execute("CREATE INDEX IF NOT EXISTS write_events_people ON write_events USING gin (people)")
    # The few rows whose people stay unknown (their event gone from the log) and keep a
    # digest: an erasure in their workspace clears them too.
    op.execute(
        "CREATE INDEX IF NOT EXISTS write_events_people_unknown ON write_events (workspace_id) "
        "WHERE people IS NULL AND digest IS NOT NULL"
    )


def downgrade(**kw: str) -> None:
    raise NotImplementedError("tieline migrates forward only; restore a backup to go back")
