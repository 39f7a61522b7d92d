"""Running the state schema's Alembic revisions from tieline's own code (no alembic.ini).

``upgrade`` is synchronous (Alembic is); :func:`tieline.plumbing.state.ensure_state_schema`
runs it in a thread on a connection of its own, made from the caller's connection parameters.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import psycopg
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine
from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool
from tieline.plumbing.migrations import API_ROLE

HERE = Path(__file__).resolve().parent


#: Alembic's ``context`` and ``op`` are module-level proxies: one upgrade at a time per process
#: (other processes wait on the schema's advisory lock instead).
_ONE_AT_A_TIME = threading.Lock()


@dataclass(frozen=True)
class Upgrade:
    """What one upgrade did: the schema's revision before (None: not migrated yet) and after."""

    schema: str
    before: str | None
    after: str | None

    @property
    def changed(self) -> bool:
        return self.before != self.after


def config(schema: str) -> Config:
    """An Alembic configuration for ``schema`` (the scripts ship inside the package)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    cfg.attributes["schema"] = schema
    cfg.attributes["api_role"] = API_ROLE
    return cfg


@cache
def head() -> str:
    """The newest revision this release knows."""
    found = ScriptDirectory.from_config(config("tieline")).get_current_head()
    assert found is not None, "no migration scripts in the package"
    return found


def current(connection: Connection, schema: str) -> str | None:
    """The revision ``schema`` is at (None before the first upgrade)."""
    ctx = MigrationContext.configure(connection, opts={"version_table_schema": schema})
    return ctx.get_current_revision()


def upgrade(conninfo: str, schema: str, revision: str = "head") -> Upgrade:
    """Upgrade ``schema`` to ``revision`` in one transaction on a new connection."""
    engine = create_engine(
        "postgresql+psycopg://", creator=lambda: psycopg.connect(conninfo), poolclass=NullPool
    )
    try:
        with _ONE_AT_A_TIME, engine.begin() as connection:
            before = current(connection, schema)
            cfg = config(schema)
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, revision)
            after = current(connection, schema)
    finally:
        engine.dispose()
    return Upgrade(schema, before, after)
