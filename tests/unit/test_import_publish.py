"""The importer's publishing step against an HTTP transport that answers as told: "later"
(503, 429) and refused connections are tried again under the HTTP retry policy, a 4xx answer
rejects the chunk's lines, a refused token aborts. (The real API is in tests/e2e.)"""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import Callable

import httpx
import pytest
from tieline.services.tools.import_publish import ImportAborted
from tieline.services.tools.importer import ImportSummary, publish_spool

LINES = [
    {"type": "person.added", "person_id": "ada", "display_name": "Ada"},
    {"type": "person.added", "person_id": "grace", "display_name": "Grace"},
]


def _publish(handler: Callable[[httpx.Request], httpx.Response]) -> ImportSummary:
    summary = ImportSummary(file="x.jsonl", format="jsonl", workspace="w1", valid=len(LINES))
    with tempfile.TemporaryFile() as spool:
        for n, obj in enumerate(LINES, 1):
            spool.write(f"{n}\t{obj['type']}\t{json.dumps(obj)}\n".encode())
        spool.flush()
        return asyncio.run(
            publish_spool(
                spool,
                summary,
                api_url="http://tieline.test",
                token="t",
                transport=httpx.MockTransport(handler),
            )
        )


def _created(request: httpx.Request) -> httpx.Response:
    lines = [line for line in request.content.split(b"\n") if line]
    return httpx.Response(200, json={"results": [{"status": 201, "seq": 1}] * len(lines)})


def test_answers_meaning_later_are_retried_until_the_batch_goes_through() -> None:
    answers = iter([503, 429])
    sent: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if not request.content:  # the access check before anything is sent
            return httpx.Response(200, json={"results": []})
        sent.append(1)
        status = next(answers, None)
        return _created(request) if status is None else httpx.Response(status, json={})

    summary = _publish(handler)
    assert len(sent) == 3
    assert summary.published == 2 and not summary.rejected


def test_a_refused_connection_is_retried() -> None:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if not request.content:
            return httpx.Response(200, json={"results": []})
        calls.append(1)
        if len(calls) == 1:
            raise httpx.ConnectError("refused", request=request)
        return _created(request)

    assert _publish(handler).published == 2
    assert len(calls) == 2


def test_a_client_error_rejects_the_lines_without_retrying() -> None:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if not request.content:
            return httpx.Response(200, json={"results": []})
        calls.append(1)
        return httpx.Response(400, json={"detail": "bad batch"})

    summary = _publish(handler)
    assert len(calls) == 1
    assert summary.rejected == [(1, "HTTP 400: bad batch"), (2, "HTTP 400: bad batch")]


def test_a_refused_token_aborts() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"detail": "no such token"})

    with pytest.raises(ImportAborted, match="401"):
        _publish(handler)
