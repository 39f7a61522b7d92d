"""The Emmett peer of ``python -m bench peer`` runs for real at a tiny size: Node, the npm
packages from the committed lockfile, Emmett 0.42 on the test PostgreSQL (a database of its
own, dropped afterwards). Its two async projections must hold exactly what was appended. No
timing is asserted.

The appends here are awaited one at a time. With appends in flight, Emmett 0.42's projector can
skip events (it reads in transaction-id order but resumes after the last global position it
saw); the bench reports that as handled vs appended rather than this test pinning a number that
depends on how the transactions interleave.
"""

from __future__ import annotations

import subprocess

import pytest

from bench import emmett
from tests.conftest import Servers

pytestmark = pytest.mark.integration

MEETINGS = [(f"p{i % 7}", f"q{i % 5}", 5 + i % 40) for i in range(60)]


@pytest.fixture(scope="module")
def installed() -> None:
    reason = emmett.unavailable()
    if reason:
        pytest.skip(reason)
    try:
        emmett.install(timeout_s=300)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"npm ci of bench/peer_emmett failed (no registry reachable?): {e}")


def test_emmett_projections_hold_every_appended_meeting(installed: None, servers: Servers) -> None:
    out = emmett.run_emmett(
        servers.database_url, list(MEETINGS), sequential=len(MEETINGS), idle_ms=60_000
    )
    assert out["emmett_version"] == "0.42.0"
    assert out["sequential"][0] == len(MEETINGS) and out["concurrent"][0] == 0
    pairs = {tuple(sorted((a, b))) for a, b, _ in MEETINGS}
    minutes = sum(m for _, _, m in MEETINGS)
    assert set(out["projections"]) == {"raw_sql", "pongo"}
    for kind, p in out["projections"].items():
        assert p["handled"] == len(MEETINGS), kind
        assert p["projected"] == {
            "pairs": len(pairs),
            "meetings": len(MEETINGS),
            "minutes": minutes,
        }, kind


def test_the_peer_gets_a_database_of_its_own() -> None:
    url = "postgresql://u:pw@db.example:5433/postgres?sslmode=disable"
    assert emmett.with_database(url, "tieline_emmett_1") == (
        "postgresql://u:pw@db.example:5433/tieline_emmett_1?sslmode=disable"
    )
