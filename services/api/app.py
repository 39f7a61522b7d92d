"""Composition root of the HTTP API (FastAPI). OpenAPI at /docs and /openapi.json."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import uuid4

import structlog
from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from nats.aio.client import Client as NatsClient
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from pydantic import BaseModel, ConfigDict, Field
from tieline.plumbing import db
from tieline.plumbing.config import Settings
from tieline.plumbing.crypto import FORGOTTEN, KeyStore, decrypt_value, master_key_from_env
from tieline.plumbing.jetstream import connect_nats, ensure_streams
from tieline.plumbing.state import ensure_state_schema
from tieline.plumbing.subjects import command_subject
from tieline.projections.readpool import LivePool
from tieline.projections.strength_model import PARAMS, Strength, can_vouch
from tieline.services.api import queries, ties
from tieline.services.api.erasure import forget_person
from tieline.services.auth import (
    FailureLimiter,
    Principal,
    create_token,
    list_tokens,
    revoke_token,
    verify_token,
)
from tieline.services.service_app import service_for

log = structlog.get_logger(__name__)

WS = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$", description="Workspace id")]
PID = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="Person id")]
AsOf = Annotated[
    datetime | None,
    Query(
        description=(
            "Answer as of this time (ISO 8601 with a timezone): only events that occurred by then "
            "count, and decay runs to then."
        )
    ),
]
MinSeq = Annotated[
    int | None,
    Query(
        ge=0,
        description=(
            "Read-your-writes: wait (bounded) until the projection has applied this stream seq; "
            "503 if it does not in time."
        ),
    ),
]
#: Lines per request/reply command; keeps each NATS message well under its payload limit.
CHUNK_LINES = 500


class PersonIn(BaseModel):
    """A person to add. ``person_id`` is generated when left out."""

    model_config = ConfigDict(extra="forbid")
    person_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,64}$")
    display_name: str
    email: str | None = None
    phone: str | None = None
    organization: str | None = None
    title: str | None = None
    notes: str | None = None
    event_id: str | None = None
    occurred_at: str | None = None


class WriteResult(BaseModel):
    status: int
    event_id: str | None = None
    person_id: str | None = None
    seq: int | None = None
    duplicate: bool = False
    error: str | None = None
    errors: list[dict[str, Any]] = []


class BatchResult(BaseModel):
    accepted: int
    rejected: int
    last_seq: int | None
    results: list[WriteResult]


class ApiError(Exception):
    def __init__(self, status: int, message: str, detail: list[dict[str, Any]] | None = None):
        super().__init__(message)
        self.status = status
        self.detail = detail or []


class Runtime:
    """Connections the API holds; created in the lifespan, never at import time."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pool = LivePool(settings, min_size=2, max_size=16)
        # The read-access log: one INSERT per read of personal data. Without waiting for its
        # WAL flush (an fsync per read, measured as the largest single cost of a read), a crash
        # of PostgreSQL itself can lose the last fraction of a second of access records; an
        # API crash loses none (each INSERT has reached PostgreSQL before the answer is sent).
        self.audit_pool = db.make_pool(
            settings, min_size=1, max_size=4, synchronous_commit=settings.audit_synchronous_commit
        )
        self.nc: NatsClient | None = None
        self.keystore = KeyStore(self.pool, master_key_from_env(settings.master_key))
        self.limiter = FailureLimiter(settings.auth_failures_per_minute, 60.0)
        self._principals: dict[str, tuple[float, Principal]] = {}
        self._checkpoint_changed = asyncio.Event()
        self._checkpoints: dict[str, int] = {}  # generation schema -> committed seq (NOTIFY)

    async def principal(self, token: str) -> Principal | None:
        """The token's principal, cached for a few seconds (revocation takes effect within
        that time); the cache is keyed by a hash, never by the token itself."""
        import hashlib

        key = hashlib.sha256(token.encode()).hexdigest()
        hit = self._principals.get(key)
        now = time.monotonic()
        if hit is not None and now - hit[0] < 5.0:
            return hit[1]
        async with self.pool.connection() as conn:
            found = await verify_token(conn, token)
        if found is not None:
            if len(self._principals) > 10_000:
                self._principals.clear()
            self._principals[key] = (now, found)
        return found

    async def pair(
        self, ws: str, a: str, b: str, as_of: datetime | None, min_seq: int | None
    ) -> Strength:
        """The pair's strength as of ``as_of`` from the pure model, or 404."""
        await self.wait_for_seq(min_seq)
        async with self.pool.connection() as conn:
            s = await ties.pair_strength(conn, ws, a, b, as_of)
        if s is None:
            raise HTTPException(404, "no recorded relationship between these people")
        return s

    async def audit(self, ws: str, who: Principal, endpoint: str, people: list[str]) -> None:
        """Record that ``who`` read personal data of ``people``."""
        if not people:
            return
        async with self.audit_pool.connection() as conn:
            await conn.execute(
                "INSERT INTO access_log (workspace_id, actor, endpoint, person_ids) "
                "VALUES (%s, %s, %s, %s)",
                (ws, who.actor, endpoint, people),
            )

    async def reveal(self, ws: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Decrypt people rows; a forgotten person shows as such, with nothing else."""
        keys = await self.keystore.keys(ws, [r["person_id"] for r in rows])
        out = []
        for r in rows:
            r = dict(r)
            forgotten = r.pop("forgotten", False)
            key = keys.get(r["person_id"])
            for f in ("display_name", "email", "phone", "organization", "title", "notes"):
                if f in r:
                    r[f] = None if forgotten else decrypt_value(key, ws, f, r[f])
            if forgotten:
                r["display_name"] = FORGOTTEN
            r["forgotten"] = forgotten
            out.append(r)
        return out

    async def command(
        self, ws: str, service: str, items: list[Any], actor: str, correlation_id: str
    ) -> list[dict[str, Any]]:
        assert self.nc is not None
        subject = command_subject(self.settings.subject_prefix, ws, service, "record")
        body = json.dumps(
            {"actor": actor, "correlation_id": correlation_id, "items": items}, default=str
        ).encode()
        try:
            reply = await self.nc.request(subject, body, timeout=self.settings.command_timeout_s)
        except NoRespondersError as exc:
            raise ApiError(503, f"the {service} service is not running") from exc
        except NatsTimeout as exc:
            raise ApiError(503, f"the {service} service did not answer in time") from exc
        data = json.loads(reply.data)
        if "results" not in data or len(data["results"]) != len(items):
            raise ApiError(502, f"the {service} service answered: {data.get('error')}")
        results: list[dict[str, Any]] = data["results"]
        return results

    async def wait_for_seq(self, min_seq: int | None) -> None:
        """Read-your-writes: wait until the live projection's checkpoint reaches ``min_seq``
        (bounded by ``min_seq_wait_s``). The worker's ``tieline_checkpoint`` NOTIFY says at
        once when a batch commits (and usually answers without a query); a short poll of the
        checkpoint remains the fallback."""
        if not min_seq:
            return
        deadline = time.monotonic() + self.settings.min_seq_wait_s
        while True:
            changed = self._checkpoint_changed  # taken before the read: no lost wake-up
            generation = self.pool.generation
            if self._checkpoints.get(generation.schema_name, 0) >= min_seq:
                return
            async with self.pool.connection() as conn:
                seen = await queries.checkpoint(conn, generation.consumer)
            if seen >= min_seq:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise ApiError(
                    503,
                    f"projection has reached seq {seen}, not min_seq {min_seq}, "
                    f"within {self.settings.min_seq_wait_s:g}s; retry later",
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), timeout=min(left, 0.05))

    async def listen_checkpoints(self) -> None:
        """Follow every projection's committed checkpoint ("<read-model schema> <seq>"
        notifications) and wake ``wait_for_seq`` callers."""
        while True:
            try:
                conn = await db.connect(self.settings)
                try:
                    await conn.execute("LISTEN tieline_checkpoint")
                    async for n in conn.notifies():
                        self._checkpoint_committed(n.payload)
                finally:
                    await conn.close()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # database restarting: waiters fall back to polling
                self._checkpoints.clear()  # notifications may have been missed meanwhile
                log.warning("api.checkpoint_listener_retry", error=str(exc))
                await asyncio.sleep(1.0)

    def _checkpoint_committed(self, payload: str) -> None:
        schema, _, seq = payload.rpartition(" ")
        if schema and seq.isdigit():
            # Commits of one projection are serial, so its notifications arrive in order.
            self._checkpoints[schema] = max(self._checkpoints.get(schema, 0), int(seq))
        woken, self._checkpoint_changed = self._checkpoint_changed, asyncio.Event()
        woken.set()


async def _read_body(request: Request, limit: int) -> bytes:
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


def _parse_json(raw: bytes, loc: list[str]) -> Any:
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise ApiError(
            422,
            f"{'.'.join(loc)}: not valid JSON ({exc})",
            [{"loc": loc, "msg": f"not valid JSON: {exc}"}],
        ) from exc


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise ApiError(
            422,
            "as_of: needs a timezone, e.g. 2025-06-30T00:00:00Z",
            [{"loc": ["query", "as_of"], "msg": "needs a timezone"}],
        )
    return value


def _single_response(result: dict[str, Any]) -> JSONResponse:
    return JSONResponse(
        WriteResult(**result).model_dump(exclude_none=True), status_code=result["status"]
    )


def require(role: str) -> Any:
    """Dependency: a valid bearer token for the workspace in the path, with ``role``.

    Errors say only 401 or 403: nothing that tells an attacker which part was wrong.
    """

    async def dependency(request: Request, ws: WS) -> Principal:
        rt: Runtime = request.app.state.runtime
        client = request.client.host if request.client else "unknown"
        if rt.limiter.blocked(client):
            raise ApiError(429, "too many failed authentication attempts; retry later")
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header[:7].lower() == "bearer " else ""
        found = await rt.principal(token) if token else None
        if found is None:
            rt.limiter.failed(client)
            raise ApiError(401, "unauthorized")
        if found.workspace_id != ws or not found.may(role):
            raise ApiError(403, "forbidden")
        structlog.contextvars.bind_contextvars(actor=found.actor, workspace_id=ws)
        return found

    return Depends(dependency)


Reader = Annotated[Principal, require("read")]
Writer = Annotated[Principal, require("write")]
Admin = Annotated[Principal, require("admin")]


class TokenIn(BaseModel):
    """A token to create: its role and a name that events record as ``recorded_by``."""

    model_config = ConfigDict(extra="forbid")
    role: Literal["read", "write", "admin"]
    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.@-]+$")


def create_app(settings: Settings) -> FastAPI:
    """Build the API; connections open in the lifespan."""
    rt = Runtime(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        rt.nc = await connect_nats(settings, name="tieline-api")
        await ensure_streams(rt.nc.jetstream(), settings)
        await rt.pool.open(wait=True)
        async with rt.pool.connection() as conn:
            await ensure_state_schema(conn, settings.database_schema)
        await rt.audit_pool.open(wait=True)
        listener = asyncio.create_task(rt.listen_checkpoints())
        log.info("api.started", port=settings.api_port)
        yield
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
        await rt.audit_pool.close()
        await rt.pool.close()
        await rt.nc.drain()

    app = FastAPI(
        title="tieline",
        version="0.1.0",
        lifespan=lifespan,
        description="Event-sourced relationship backend. Writes return the stream "
        "sequence; reads accept ?min_seq for read-your-writes.",
    )
    app.state.runtime = rt
    from tieline.services.api.export import router as export_router

    app.include_router(export_router)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        """FastAPI's own validation errors, in the same shape as every other rejection: an
        ``error`` line naming the field, and the details."""
        errors = [
            {"loc": [str(p) for p in e.get("loc", ())], "msg": e.get("msg", "")}
            for e in exc.errors()
        ]
        text = "; ".join(f"{'.'.join(e['loc']) or '(body)'}: {e['msg']}" for e in errors)
        return JSONResponse({"error": text or "invalid request", "detail": errors}, status_code=422)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(
            {"error": str(exc), "detail": exc.detail}, status_code=exc.status, headers=headers
        )

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"])
    async def readyz() -> JSONResponse:
        checks: dict[str, Any] = {}
        ok = True
        try:
            assert rt.nc is not None and rt.nc.is_connected
            info = await rt.nc.jetstream().stream_info(settings.stream_name)
            checks["nats"] = "ok"
            stream_seq = int(info.state.last_seq)
        except Exception as exc:
            checks["nats"] = f"unavailable: {type(exc).__name__}"
            ok, stream_seq = False, -1
        try:
            async with rt.pool.connection(timeout=2) as conn:
                seen = await queries.checkpoint(conn, rt.pool.generation.consumer)
            checks["postgres"] = "ok"
        except Exception as exc:
            checks["postgres"] = f"unavailable: {type(exc).__name__}"
            ok, seen = False, -1
        if stream_seq >= 0 and seen >= 0:
            lag = max(stream_seq - seen, 0)
            checks["projection"] = {
                "stream_seq": stream_seq,
                "checkpoint": seen,
                "lag": lag,
                "generation": rt.pool.generation.gen,
            }
            ok = ok and lag <= settings.ready_max_lag
        return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)

    # -- writes ---------------------------------------------------------------------------

    @app.post(
        "/v1/workspaces/{ws}/people",
        tags=["people"],
        status_code=201,
        response_model=WriteResult,
        responses={409: {}, 413: {}, 422: {}},
    )
    async def add_person(ws: WS, person: PersonIn, who: Writer) -> JSONResponse:
        obj = {"type": "person.added", **person.model_dump(exclude_none=True)}
        obj.setdefault("person_id", uuid4().hex)
        [result] = await rt.command(ws, "people", [obj], who.actor, str(uuid4()))
        if result["status"] < 300:
            result["person_id"] = obj["person_id"]
        return _single_response(result)

    @app.post(
        "/v1/workspaces/{ws}/events",
        tags=["events"],
        status_code=201,
        response_model=WriteResult,
        responses={404: {}, 409: {}, 413: {}, 422: {}},
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "description": "One event object: `type` plus its fields "
                            "(see events_schema/jsonschema)."
                            " event_id, occurred_at, correlation_id and causation_id are optional.",
                        }
                    }
                },
            }
        },
    )
    async def record_event(ws: WS, request: Request, who: Writer) -> JSONResponse:
        raw = await _read_body(request, settings.max_event_bytes)
        obj = _parse_json(raw, ["body"])
        if not isinstance(obj, dict):
            raise ApiError(
                422,
                "body: an event must be a JSON object",
                [{"loc": ["body"], "msg": "must be a JSON object"}],
            )
        [result] = await rt.command(
            ws, service_for(obj.get("type")), [obj], who.actor, str(uuid4())
        )
        return _single_response(result)

    @app.post(
        "/v1/workspaces/{ws}/events/batch",
        tags=["events"],
        response_model=BatchResult,
        responses={413: {}},
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/x-ndjson": {
                        "schema": {
                            "type": "string",
                            "description": "JSON Lines: one event object per line; "
                            "blank lines are skipped.",
                        }
                    }
                },
            }
        },
    )
    async def record_batch(ws: WS, request: Request, who: Writer) -> BatchResult:
        raw = await _read_body(request, settings.max_batch_bytes)
        lines = [ln for ln in raw.splitlines()]
        if len(lines) > settings.max_batch_lines:
            raise ApiError(413, f"body: more than {settings.max_batch_lines} lines")
        results: list[dict[str, Any] | None] = [None] * len(lines)
        runs: list[tuple[str, list[int]]] = []  # consecutive lines for the same service
        objs: dict[int, Any] = {}
        for i, line in enumerate(lines):
            if not line.strip():
                results[i] = {"status": 204}
                continue
            try:
                obj = json.loads(line)
            except ValueError as exc:
                results[i] = {
                    "status": 422,
                    "error": f"line {i + 1}: not valid JSON ({exc})",
                    "errors": [{"loc": ["line", str(i + 1)], "msg": "not valid JSON"}],
                }
                continue
            objs[i] = obj
            service = service_for(obj.get("type") if isinstance(obj, dict) else None)
            if runs and runs[-1][0] == service and len(runs[-1][1]) < CHUNK_LINES:
                runs[-1][1].append(i)
            else:
                runs.append((service, [i]))
        correlation = str(uuid4())
        for service, idx in runs:
            out = await rt.command(ws, service, [objs[i] for i in idx], who.actor, correlation)
            for i, r in zip(idx, out, strict=True):
                results[i] = r
        final = [WriteResult(**r) for r in results if r is not None and r["status"] != 204]
        seqs = [r.seq for r in final if r.seq is not None]
        accepted = sum(1 for r in final if r.status < 300)
        return BatchResult(
            accepted=accepted,
            rejected=len(final) - accepted,
            last_seq=max(seqs) if seqs else None,
            results=final,
        )

    # -- reads ----------------------------------------------------------------------------

    @app.get("/v1/workspaces/{ws}/people", tags=["people"])
    async def list_people(
        ws: WS,
        who: Reader,
        min_seq: MinSeq = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        after: str | None = None,
    ) -> dict[str, Any]:
        await rt.wait_for_seq(min_seq)
        async with rt.pool.connection() as conn:
            rows = await rt.reveal(ws, await queries.list_people(conn, ws, limit, after))
        await rt.audit(ws, who, "GET people", [r["person_id"] for r in rows])
        return {"people": rows, "next": rows[-1]["person_id"] if len(rows) == limit else None}

    @app.get("/v1/workspaces/{ws}/people/{person}", tags=["people"])
    async def get_person(
        ws: WS, person: PID, who: Reader, min_seq: MinSeq = None
    ) -> dict[str, Any]:
        await rt.wait_for_seq(min_seq)
        async with rt.pool.connection() as conn:
            row = await queries.get_person(conn, ws, person)
        if row is None:
            raise HTTPException(404, "person not found")
        await rt.audit(ws, who, "GET person", [person])
        return (await rt.reveal(ws, [row]))[0]

    @app.get("/v1/workspaces/{ws}/relationships/{person_a}/{person_b}", tags=["relationships"])
    async def strength(
        ws: WS,
        person_a: PID,
        person_b: PID,
        who: Reader,
        min_seq: MinSeq = None,
        as_of: AsOf = None,
    ) -> dict[str, Any]:
        """Strength of the tie now (or as of a date): score 0-100, tier, counts, reciprocity,
        whether each side could vouch for the other."""
        if as_of is None:
            # Now: one indexed row and the closed-form decay (the fast path).
            await rt.wait_for_seq(min_seq)
            async with rt.pool.connection() as conn:
                row = await ties.pair_row(conn, ws, person_a, person_b)
            if row is None:
                raise HTTPException(404, "no recorded relationship between these people")
            await rt.audit(ws, who, "GET relationship", [person_a, person_b])
            return ties.summary_now(row, ties.now())
        s = await rt.pair(ws, person_a, person_b, _aware(as_of), min_seq)
        await rt.audit(ws, who, "GET relationship", [person_a, person_b])
        return ties.summary(s, person_a, person_b)

    @app.get(
        "/v1/workspaces/{ws}/relationships/{person_a}/{person_b}/explain", tags=["relationships"]
    )
    async def explain(
        ws: WS,
        person_a: PID,
        person_b: PID,
        who: Reader,
        min_seq: MinSeq = None,
        as_of: AsOf = None,
        top: Annotated[int, Query(ge=1, le=100)] = 5,
    ) -> dict[str, Any]:
        """Why the score is what it is: top contributions, decay since the last contact,
        reciprocity, the tier and what would raise it."""
        s = await rt.pair(ws, person_a, person_b, _aware(as_of), min_seq)
        await rt.audit(ws, who, "GET explain", [person_a, person_b])
        return s.explain(top)

    @app.get("/v1/workspaces/{ws}/people/{person}/relationships", tags=["relationships"])
    async def relationships(
        ws: WS,
        person: PID,
        who: Reader,
        min_seq: MinSeq = None,
        order: Literal["strength", "recent"] = "strength",
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
        as_of: AsOf = None,
    ) -> dict[str, Any]:
        """A person's ties with their current (or as-of) score and Dunbar-like tier; tiers
        respect the layers' capacities (about 5 / 15 / 50 / 150)."""
        await rt.wait_for_seq(min_seq)
        async with rt.pool.connection() as conn:
            scored = await ties.scored_ties(conn, ws, person, _aware(as_of))
        await rt.audit(ws, who, "GET person relationships", [person])
        return {
            "person": person,
            "order": order,
            "as_of": as_of,
            "relationships": ties.ranked(scored, order, limit),
        }

    @app.get("/v1/workspaces/{ws}/people/{person}/follow-ups", tags=["relationships"])
    async def follow_ups_due(
        ws: WS, person: PID, who: Reader, min_seq: MinSeq = None, as_of: AsOf = None
    ) -> dict[str, Any]:
        """Ties whose time since last contact exceeds their tier's cadence, ordered by how
        much strength is at stake if nothing happens for another cadence."""
        await rt.wait_for_seq(min_seq)
        when = _aware(as_of) or ties.now()
        async with rt.pool.connection() as conn:
            scored = await ties.scored_ties(conn, ws, person, _aware(as_of))
        await rt.audit(ws, who, "GET follow-ups", [person])
        return {"person": person, "as_of": when, "due": ties.follow_ups(scored, when)}

    @app.get("/v1/workspaces/{ws}/people/{person}/give-and-take", tags=["relationships"])
    async def give_and_take(
        ws: WS, person: PID, who: Reader, min_seq: MinSeq = None, one_sided: bool | None = None
    ) -> dict[str, Any]:
        """Per tie: who initiates, follows up, replies and helps whom; one-sided ties flagged
        (one side makes nearly all the effort: the "sell and disappear" pattern)."""
        await rt.wait_for_seq(min_seq)
        async with rt.pool.connection() as conn:
            rows = await ties.ties_of(conn, ws, person)
        await rt.audit(ws, who, "GET give-and-take", [person])
        out = [
            {"other": r["other"], "one_sided": r["one_sided"], "reciprocity": r["reciprocity"]}
            for r in rows
            if one_sided is None or r["one_sided"] == one_sided
        ]
        out.sort(key=lambda x: (not x["one_sided"], x["other"]))
        return {"person": person, "ties": out}

    @app.get("/v1/workspaces/{ws}/introductions/check", tags=["introductions"])
    async def can_introduce(
        ws: WS, who: Reader, introducer: str, a: str, b: str, as_of: AsOf = None
    ) -> dict[str, Any]:
        """can_introduce(introducer, a, b): the introducer must know both well enough to vouch
        (strength tier, a real conversation, history length, not one-sided), with reasons."""
        out: dict[str, Any] = {"introducer": introducer, "a": a, "b": b}
        ok = True
        async with rt.pool.connection() as conn:
            for side in (a, b):
                s = await ties.pair_strength(conn, ws, introducer, side, _aware(as_of))
                if s is None:
                    out[side] = {
                        "can_vouch": False,
                        "reasons": [f"{introducer} has no recorded contact with {side}"],
                    }
                    ok = False
                    continue
                vouch, reasons = can_vouch(s, PARAMS)
                out[side] = {
                    "can_vouch": vouch,
                    "score": round(s.score, 4),
                    "tier": s.tier,
                    "reasons": reasons,
                }
                ok = ok and vouch
        await rt.audit(ws, who, "GET can-introduce", [introducer, a, b])
        out["can_introduce"] = ok and a != b
        return out

    @app.get("/v1/workspaces/{ws}/people/{person}/warm-paths", tags=["introductions"])
    async def warm_paths(
        ws: WS,
        person: PID,
        who: Reader,
        target: Annotated[str, Query(pattern=r"^[A-Za-z0-9_-]{1,64}$")],
        limit: Annotated[int, Query(ge=1, le=100)] = 10,
        min_seq: MinSeq = None,
    ) -> dict[str, Any]:
        """Who can introduce ``person`` to ``target``: at most two intermediaries, every link
        strong enough to vouch, ranked by the weakest link."""
        await rt.wait_for_seq(min_seq)
        async with rt.pool.connection() as conn:
            paths = await ties.warm_paths(conn, ws, person, target, limit)
        await rt.audit(ws, who, "GET warm paths", [person, target])
        return {"person": person, "target": target, "paths": paths}

    @app.get(
        "/v1/workspaces/{ws}/relationships/{person_a}/{person_b}/timeline", tags=["relationships"]
    )
    async def timeline(
        ws: WS,
        person_a: PID,
        person_b: PID,
        who: Reader,
        min_seq: MinSeq = None,
        as_of: AsOf = None,
    ) -> dict[str, Any]:
        """How the relationship developed: each event, who recorded it and when, its
        contribution, and the strength right after it."""
        await rt.wait_for_seq(min_seq)
        a, b = queries.ordered(person_a, person_b)
        async with rt.pool.connection() as conn:
            events = await ties.pair_events(conn, ws, a, b, _aware(as_of))
            cur = await conn.execute(
                "SELECT event_id, recorded_at, recorded_by FROM pair_events_v1 "
                "WHERE workspace_id = %s AND person_a = %s AND person_b = %s",
                (ws, a, b),
            )
            recorded = {str(r["event_id"]): r for r in await cur.fetchall()}
            retracted = await queries.timeline(conn, ws, a, b, 10000)
        await rt.audit(ws, who, "GET timeline", [person_a, person_b])
        view = ties.timeline_view(events, _aware(as_of), recorded)
        gone = [
            dict(r, contribution=0.0, strength_after=None)
            for r in retracted
            if r["retracted"] and (as_of is None or r["occurred_at"] <= as_of)
        ]
        return {"person_a": a, "person_b": b, "as_of": as_of, "events": view, "retracted": gone}

    @app.get("/v1/workspaces/{ws}/introductions", tags=["introductions"])
    async def introductions(
        ws: WS, who: Reader, person: str | None = None, min_seq: MinSeq = None
    ) -> dict[str, Any]:
        """Introductions (double opt-in) and where each stands."""
        await rt.wait_for_seq(min_seq)
        async with rt.pool.connection() as conn:
            cur = await conn.execute(
                """SELECT introduction_id, requester, introducer, target, requester_consent,
                          target_consent, status, made_event_id, outcome, requested_at,
                          updated_at
                   FROM introductions_v1 WHERE workspace_id = %(ws)s AND (%(p)s::text IS NULL
                     OR %(p)s IN (requester, introducer, target))
                   ORDER BY requested_at DESC LIMIT 500""",
                {"ws": ws, "p": person},
            )
            rows = await cur.fetchall()
        return {"introductions": rows}

    # -- administration -------------------------------------------------------------------

    @app.post("/v1/workspaces/{ws}/people/{person}/forget", tags=["privacy"])
    async def forget(ws: WS, person: PID, who: Admin) -> dict[str, Any]:
        """Erase a person: destroy their key, purge the read models, and report a scan of the
        stream, the archive and every read-model table for their former values."""
        async with rt.pool.connection() as conn:
            known = await queries.get_person(conn, ws, person)
        if known is None:
            raise HTTPException(404, "person not found")
        report = await forget_person(rt, ws, person, who.actor)
        return report

    @app.get("/v1/workspaces/{ws}/access-log", tags=["privacy"])
    async def access_log(
        ws: WS,
        who: Admin,
        person: str | None = None,
        limit: Annotated[int, Query(ge=1, le=10000)] = 100,
    ) -> dict[str, Any]:
        async with rt.pool.connection() as conn:
            cur = await conn.execute(
                """SELECT at, actor, endpoint, person_ids FROM access_log
                   WHERE workspace_id = %s AND (%s::text IS NULL OR %s = ANY(person_ids))
                   ORDER BY id DESC LIMIT %s""",
                (ws, person, person, limit),
            )
            rows = await cur.fetchall()
        return {"entries": rows}

    @app.post("/v1/workspaces/{ws}/tokens", tags=["privacy"], status_code=201)
    async def new_token(ws: WS, body: TokenIn, who: Admin) -> dict[str, Any]:
        """Create a token for this workspace; the plaintext is shown only in this answer."""
        async with rt.pool.connection() as conn:
            token = await create_token(conn, ws, body.role, body.name)
        log.info("token.created", workspace_id=ws, role=body.role, name=body.name, by=who.actor)
        return {
            "token": token,
            "token_id": token.split("_")[1],
            "role": body.role,
            "name": body.name,
        }

    @app.get("/v1/workspaces/{ws}/tokens", tags=["privacy"])
    async def tokens(ws: WS, who: Admin) -> dict[str, Any]:
        async with rt.pool.connection() as conn:
            rows = await list_tokens(conn, ws)
        keys = ("token_id", "workspace_id", "role", "name", "created_at", "revoked_at")
        return {"tokens": [dict(zip(keys, r, strict=True)) for r in rows]}

    @app.delete("/v1/workspaces/{ws}/tokens/{token_id}", tags=["privacy"])
    async def revoke(ws: WS, token_id: str, who: Admin) -> dict[str, Any]:
        async with rt.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT 1 FROM api_tokens WHERE token_id = %s AND workspace_id = %s", (token_id, ws)
            )
            if await cur.fetchone() is None:
                raise HTTPException(404, "no such token")
            done = await revoke_token(conn, token_id)
        rt._principals.clear()
        return {"revoked": done}

    return app
