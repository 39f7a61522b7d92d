"""The webhooks process hands over events the change log has no rows for, loudly: the
projection leaves out events recorded more than 24 hours before their batch (a projection
that was stalled that long), so their webhooks cannot be sent; the hand-over counts them in a
metric an alert watches and logs their sequences, instead of acknowledging them in silence."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from prometheus_client import REGISTRY
from tieline.plumbing.config import Settings
from tieline.projections.worker import Worker
from tieline.services.webhooks.app import WebhookService

from tests.integration.conftest import Log, make_event


def missed() -> float:
    """What the webhooks process has counted so far, as Prometheus reads it."""
    return REGISTRY.get_sample_value("tieline_webhooks_events_without_changes_total") or 0.0


async def test_hand_over_counts_events_that_have_no_change_rows(
    settings: Settings, log: Log
) -> None:
    ws = "w-hand"
    worker = Worker(settings)
    await worker.start()  # the live generation exists before the webhooks process reads it
    hooks = WebhookService(settings)
    await hooks.start()
    try:
        old = (datetime.now(UTC) - timedelta(days=2)).isoformat()
        meeting = {"type": "relationship.met", "depth": "conversation"}
        await log.publish(
            make_event(ws, participants=["a", "b"], recorded_at=old, occurred_at=old, **meeting)
        )
        last = await log.publish(make_event(ws, participants=["a", "c"], **meeting))
        async with asyncio.timeout(20):
            while worker.stats.last_seq < last:
                await worker.run_once()
        before = missed()
        async with asyncio.timeout(20):
            while hooks.handed_over < last:
                await hooks.hand_over_once()
        # The recent meeting has its rows; the one recorded two days ago has none.
        assert missed() == before + 1
    finally:
        await hooks.close()
        await worker.close()
