"""Recording events: one event per request, or a JSON Lines batch. Both go to the write-side
services as commands over NATS; each answer carries the stream sequence of what was written."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from tieline.services.api.deps import RT, WS, Writer
from tieline.services.api.errors import ApiError
from tieline.services.api.models import BatchResult, LineResult, WriteResult, write_answer
from tieline.services.api.observe import correlation_id
from tieline.services.api.openapi import WRITE, batch_body, created_responses, event_body
from tieline.services.api.strict_json import Unfit, loads
from tieline.services.service_app import service_for
from tieline.services.write_rules import ADMIN_ONLY_TYPES

router = APIRouter(tags=["events"])

#: Lines per request/reply command; keeps each NATS message well under its payload limit.
CHUNK_LINES = 500


def role_refusal(obj: Any, role: str) -> dict[str, Any] | None:
    """A 403 line result when ``obj`` is an event type the caller's role may not record."""
    kind = obj.get("type") if isinstance(obj, dict) else None
    if not isinstance(kind, str) or kind not in ADMIN_ONLY_TYPES or role == "admin":
        return None
    how = {
        "person.forgotten": "POST .../people/{person}/forget",
        "workspace.model_calibrated": "tieline calibrate --apply",
    }[kind]
    msg = f"recording {kind!r} needs an admin token ({how})"
    return {"status": 403, "error": f"type: {msg}", "errors": [{"loc": ["type"], "msg": msg}]}


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it exceeds ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(
            413,
            f"body: larger than the {limit}-byte limit",
            [{"loc": ["body"], "msg": f"larger than {limit} bytes"}],
        )
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(
                413,
                f"body: larger than the {limit}-byte limit",
                [{"loc": ["body"], "msg": f"larger than {limit} bytes"}],
            )
    return body


def parse_json(raw: bytes, loc: list[str]) -> Any:
    """``raw`` as strict JSON (:mod:`~tieline.services.api.strict_json`); 422 naming ``loc``
    when it is not."""
    try:
        return loads(raw)
    except Unfit as exc:
        raise ApiError(422, *_unfit(exc, loc, ".".join(loc))) from exc


async def send_runs(
    bus: Any,
    ws: str,
    runs: list[tuple[str, list[int]]],
    objs: dict[int, Any],
    actor: str,
    results: list[dict[str, Any] | None],
    role: str = "write",
) -> None:
    """Send each run of lines to its service and fill ``results``. A run whose service does
    not answer fails alone (503 per line), and that service's later runs are answered the
    same without waiting for it again: the whole batch used to answer 503, although the runs
    before it were on the log, and a client re-sending it without event_ids recorded them
    twice."""
    correlation = correlation_id()
    down: dict[str, ApiError] = {}  # a service that did not answer is not asked again
    for service, idx in runs:
        try:
            if service in down:
                raise down[service]
            out = await bus.command(ws, service, [objs[i] for i in idx], actor, correlation, role)
        except ApiError as exc:
            down[service] = exc
            out = [_unanswered(objs[i], exc) for i in idx]
        except Exception as exc:  # the runs before it are on the log: answer them still
            down[service] = ApiError(500, f"internal error ({type(exc).__name__})")
            out = [_unanswered(objs[i], down[service]) for i in idx]
        for i, r in zip(idx, out, strict=True):
            results[i] = r


def _unanswered(obj: Any, exc: ApiError) -> dict[str, Any]:
    """A line whose service did not answer (503) or failed unforeseen (500): it may or may
    not be on the log, so a retry is safe only with its ``event_id``."""
    eid = obj.get("event_id") if isinstance(obj, dict) else None
    out: dict[str, Any] = {"status": exc.status, "error": exc.detail, "errors": exc.errors}
    return out | ({"event_id": str(eid)} if eid is not None else {})


def _unfit(exc: Unfit, loc: list[str], label: str) -> tuple[str, list[dict[str, Any]]]:
    """(error, errors) of a body or line that is not strict JSON, at ``loc``."""
    return f"{label}: {exc}", [{"loc": loc, "msg": str(exc)}]


@router.post(
    "/v1/workspaces/{ws}/events",
    status_code=201,
    response_model=WriteResult,
    response_model_exclude_none=True,
    responses=created_responses(WRITE),
    openapi_extra=event_body(),
)
async def record_event(
    ws: WS, request: Request, who: Writer, rt: RT, response: Response
) -> WriteResult:
    """Record one event: a command object with ``type`` (see the schemas of the request
    body). 201 with its ``seq``; a re-sent ``event_id`` answers 200 with the original."""
    raw = await read_body(request, rt.settings.max_event_bytes)
    obj = parse_json(raw, ["body"])
    if not isinstance(obj, dict):
        raise ApiError(
            422,
            "body: an event must be a JSON object",
            [{"loc": ["body"], "msg": "must be a JSON object"}],
        )
    refusal = role_refusal(obj, who.role)
    if refusal is not None:
        raise ApiError(403, refusal["error"], refusal["errors"])
    [result] = await rt.bus.command(
        ws, service_for(obj.get("type")), [obj], who.actor, correlation_id(), who.role
    )
    return write_answer(result, response)


@router.post(
    "/v1/workspaces/{ws}/events/batch",
    response_model=BatchResult,
    responses=WRITE,
    openapi_extra=batch_body(),
)
async def record_batch(ws: WS, request: Request, who: Writer, rt: RT) -> BatchResult:
    """Record many events: JSON Lines, one command per line. The answer is 200 with one
    result per non-blank line (each line succeeds or fails alone; see ``LineResult``); only
    a refusal of the whole request (too large, not authorized) is a problem document."""
    settings = rt.settings
    raw = await read_body(request, settings.max_batch_bytes)
    lines = [ln for ln in raw.splitlines()]
    if len(lines) > settings.max_batch_lines:
        raise ApiError(
            413,
            f"body: more than {settings.max_batch_lines} lines",
            [{"loc": ["body"], "msg": f"more than {settings.max_batch_lines} lines"}],
        )
    results: list[dict[str, Any] | None] = [None] * len(lines)
    runs: list[tuple[str, list[int]]] = []  # consecutive lines for the same service
    objs: dict[int, Any] = {}
    for i, line in enumerate(lines):
        if not line.strip():
            results[i] = {"status": 204}
            continue
        if len(line) > settings.max_event_bytes:  # as one event alone would be (413)
            msg = f"larger than the {settings.max_event_bytes}-byte limit of one event"
            results[i] = {
                "status": 413,
                "error": f"line {i + 1}: {msg}",
                "errors": [{"loc": ["line", str(i + 1)], "msg": msg}],
            }
            continue
        try:
            obj = loads(line)
        except Unfit as exc:
            error, errors = _unfit(exc, ["line", str(i + 1)], f"line {i + 1}")
            results[i] = {"status": 422, "error": error, "errors": errors}
            continue
        refusal = role_refusal(obj, who.role)
        if refusal is not None:
            results[i] = refusal
            continue
        objs[i] = obj
        service = service_for(obj.get("type") if isinstance(obj, dict) else None)
        if runs and runs[-1][0] == service and len(runs[-1][1]) < CHUNK_LINES:
            runs[-1][1].append(i)
        else:
            runs.append((service, [i]))
    await send_runs(rt.bus, ws, runs, objs, who.actor, results, who.role)
    final = [LineResult(**r) for r in results if r is not None and r["status"] != 204]
    seqs = [r.seq for r in final if r.seq is not None]
    accepted = sum(1 for r in final if r.status < 300)
    return BatchResult(
        accepted=accepted,
        rejected=len(final) - accepted,
        last_seq=max(seqs) if seqs else None,
        results=final,
    )
