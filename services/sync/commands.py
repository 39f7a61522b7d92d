"""Commands to the write-side services over NATS request/reply, the way the API sends them
(``{prefix}.cmd.{workspace}.{service}.record``: ``{"actor", "correlation_id", "items"}`` in,
``{"results": [...]}`` out, one result per item in order)."""

from __future__ import annotations

import json
import uuid
from typing import Any

from nats.aio.client import Client as NatsClient
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from tieline.plumbing.config import Settings
from tieline.plumbing.subjects import command_subject


class CommandUnavailable(Exception):
    """The write side did not answer (not running, or too slow): nothing can be recorded now."""


def accepted(result: dict[str, Any]) -> bool:
    """Recorded now or before (2xx)."""
    return 200 <= int(result.get("status", 500)) < 300


class CommandBus:
    """Sends event commands as one actor (the sync source)."""

    def __init__(self, settings: Settings, nc: NatsClient) -> None:
        self.settings = settings
        self.nc = nc

    async def record(
        self, ws: str, service: str, items: list[dict[str, Any]], actor: str
    ) -> list[dict[str, Any]]:
        """One result per item, in order."""
        out: list[dict[str, Any]] = []
        chunk = self.settings.sync_chunk
        for i in range(0, len(items), chunk):
            out.extend(await self._send(ws, service, items[i : i + chunk], actor))
        return out

    async def _send(
        self, ws: str, service: str, items: list[dict[str, Any]], actor: str
    ) -> list[dict[str, Any]]:
        subject = command_subject(self.settings.subject_prefix, ws, service, "record")
        body = json.dumps(
            {"actor": actor, "correlation_id": str(uuid.uuid4()), "items": items}, default=str
        ).encode()
        try:
            reply = await self.nc.request(subject, body, timeout=self.settings.command_timeout_s)
        except NoRespondersError as exc:
            raise CommandUnavailable(f"the {service} service is not running") from exc
        except NatsTimeout as exc:
            raise CommandUnavailable(f"the {service} service did not answer in time") from exc
        data = json.loads(reply.data)
        results = data.get("results")
        if not isinstance(results, list) or len(results) != len(items):
            raise CommandUnavailable(f"the {service} service answered: {data.get('error')}")
        return results
