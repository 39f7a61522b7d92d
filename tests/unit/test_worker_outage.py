"""Which query errors during a per-event trial are the database's (retried as an outage)
and which are the event's own (counted, then parked): projections/worker_support.outage."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import psycopg
import pytest
from psycopg import errors
from tieline.projections.worker_support import outage


def _conn(broken: bool) -> Any:
    return SimpleNamespace(broken=broken)


@pytest.mark.parametrize(
    "exc",
    [errors.DiskFull(), errors.OutOfMemory(), errors.DeadlockDetected(), errors.LockNotAvailable()],
    ids=lambda e: type(e).__name__,
)
def test_what_the_database_state_causes_is_an_outage(exc: psycopg.OperationalError) -> None:
    """A full disk would otherwise fail every event in turn, and park them all."""
    assert outage(_conn(False), exc)


@pytest.mark.parametrize(
    "exc", [errors.QueryCanceled(), errors.StatementTooComplex()], ids=lambda e: type(e).__name__
)
def test_what_the_statement_brings_on_itself_is_the_events(exc: psycopg.OperationalError) -> None:
    assert not outage(_conn(False), exc)
    assert outage(_conn(True), exc)  # unless the connection broke meanwhile


def test_an_error_without_a_sqlstate_on_a_live_connection_is_an_outage() -> None:
    assert outage(_conn(False), psycopg.OperationalError("the connection is lost"))
