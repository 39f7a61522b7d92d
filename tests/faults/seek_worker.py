"""A proposed fix for the worker-crash loss, used by tests/faults/test_worker_crash.py to show
that the scenario passes once the worker starts reading from its own checkpoint.

The product worker (projections/worker.py) binds to a durable consumer whose delivery state
lives in JetStream. When it is killed after fetching a batch and before acknowledging it, that
batch stays *pending* (delivered, unacknowledged) until ack_wait runs out. The restarted
worker is served the messages after the batch, commits a checkpoint past it and acknowledges
with AckPolicy.ALL, which acknowledges the pending batch as well: it is never applied.

The PostgreSQL checkpoint is the only truth about what was applied, so this worker derives the
consumer from it on every start: an ephemeral pull consumer that begins at
``checkpoint + 1`` (DeliverPolicy.BY_START_SEQUENCE). Nothing else changes. It needs no
permission beyond the worker's (``$JS.API.CONSUMER.CREATE.<S>.>``); the old incarnation's
consumer disappears after ``inactive_threshold``.

Run as ``python -m tests.faults.seek_worker`` (settings from TIELINE_*), like
``python -m tieline.services.runtime.run worker``.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import structlog
from nats.js import JetStreamContext
from nats.js import api as js_api
from tieline.plumbing.config import Settings
from tieline.plumbing.logging import configure_logging
from tieline.projections.worker import Worker, log, serve


class CheckpointSeekingWorker(Worker):
    """Worker whose consumer starts right after the committed checkpoint.

    Everything else is the product's Worker: the one change is made where ``start`` subscribes
    (right after it took the projection lock, so the checkpoint cannot move under us).
    """

    async def _acquire_lock(self) -> None:
        await super()._acquire_lock()
        if self._sub is None and self.js is not None:
            self._seek_on_subscribe(self.js)

    def _seek_on_subscribe(self, js: JetStreamContext) -> None:
        original = js.pull_subscribe

        async def pull_subscribe(
            subject: str,
            durable: str | None = None,
            stream: str | None = None,
            config: js_api.ConsumerConfig | None = None,
            **kwargs: Any,
        ) -> JetStreamContext.PullSubscription:
            checkpoint = await self.store.checkpoint(self._conn())
            config = dataclasses.replace(
                config or js_api.ConsumerConfig(),
                deliver_policy=js_api.DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=checkpoint + 1,
                inactive_threshold=max(self.settings.ack_wait_s, 30.0),
            )
            log.info("worker.seek", durable=durable, start_seq=checkpoint + 1)
            return await original(subject, durable=None, stream=stream, config=config, **kwargs)

        js.pull_subscribe = pull_subscribe  # type: ignore[method-assign,assignment]


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_level, settings.log_json)
    structlog.contextvars.bind_contextvars(role="worker", variant="checkpoint-seek")
    asyncio.run(serve(settings, CheckpointSeekingWorker))


if __name__ == "__main__":
    main()
