"""Publishing an import: validated lines in chunks through the HTTP batch endpoint, a bounded
number in flight, in causal order (see services/tools/importer.py), with progress reports and
retries under the HTTP policy of plumbing/retry.py."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any, Protocol

import httpx
from tenacity import retry_if_exception_type, retry_if_result
from tieline.plumbing.retry import HTTP
from tieline.services.tools.import_records import ImportAborted, ImportSummary
from tieline.services.writeside import PERSON_REF_FIELDS

MAX_CHUNK_BYTES = 4 * 1024 * 1024
#: Answers that mean "try again later": rate limited, or a proxy without a backend.
RETRY_STATUSES = frozenset({429, 502, 503, 504})


class Progress(Protocol):
    def start(self, total: int) -> None: ...
    def advance(self, n: int) -> None: ...
    def stop(self) -> None: ...


class LogProgress:
    """Plain log lines (for a log file or CI): at most one every ``every_s`` seconds."""

    def __init__(self, out: IO[str] | None = None, every_s: float = 2.0) -> None:
        self.out = out or sys.stderr
        self.every_s = every_s
        self.total = self.done = 0
        self.t0 = self.last = 0.0

    def start(self, total: int) -> None:
        self.total, self.done = total, 0
        self.t0 = self.last = time.monotonic()
        print(f"import: publishing {total} events", file=self.out, flush=True)

    def advance(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every_s or self.done >= self.total:
            self.last = now
            rate = self.done / max(now - self.t0, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else 0.0
            print(
                f"import: {self.done}/{self.total} events, {rate:,.0f} events/s, ETA {eta:,.0f}s",
                file=self.out,
                flush=True,
            )

    def stop(self) -> None:
        pass


class RichProgress:
    """A rich progress bar: events done/total, events/s, ETA."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("[bold]import"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("events"),
            TaskProgressColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self._task: Any = None
        self._t0 = 0.0
        self._done = 0

    def start(self, total: int) -> None:
        self._t0 = time.monotonic()
        self._progress.start()
        self._task = self._progress.add_task("import", total=total, rate="")

    def advance(self, n: int) -> None:
        self._done += n
        rate = self._done / max(time.monotonic() - self._t0, 1e-9)
        self._progress.update(self._task, advance=n, rate=f"{rate:,.0f} events/s")

    def stop(self) -> None:
        self._progress.stop()


def default_progress() -> Progress:
    return RichProgress() if sys.stderr.isatty() else LogProgress()


@dataclass
class Line:
    line: int
    type: str
    raw: bytes


class Publisher:
    """Sends prepared lines in chunks, concurrently, keeping causal order (see the module
    docstring), and tallies the per-line answers."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        workspace: str,
        summary: ImportSummary,
        progress: Progress | None,
        chunk_lines: int,
        concurrency: int,
        retries: int = 5,
        projection_timeout_s: float = 120.0,
    ) -> None:
        self.client = client
        self.ws = workspace
        self.summary = summary
        self.progress = progress
        self.chunk_lines = max(1, min(chunk_lines, 10_000))
        self.slots = asyncio.Semaphore(max(1, concurrency))
        self.retries = retries
        self.projection_timeout_s = projection_timeout_s
        self.tasks: set[asyncio.Task[None]] = set()
        self.max_seq = 0
        self.failure: BaseException | None = None

    async def run(self, lines: Iterator[Line]) -> None:
        chunk: list[Line] = []
        size = 0
        in_flight_people: set[str] = set()  # added by chunks that may still be in flight
        chunk_people: set[str] = set()  # added in the chunk being built
        synced = False  # the projection has caught up since the last independent line
        erasing = False  # the last line taken was an erasure (a group of them may follow)

        async def flush() -> None:
            nonlocal chunk, size, chunk_people
            if chunk:
                await self._launch(chunk)
                in_flight_people.update(chunk_people)
            chunk, size, chunk_people = [], 0, set()

        async def barrier(sync: bool = False) -> None:
            nonlocal synced
            await flush()
            await self.drain()
            in_flight_people.clear()
            if sync:
                await self.wait_projection()
                synced = True

        for ln in lines:
            if self.failure is not None:
                break
            obj = json.loads(ln.raw)
            t = ln.type
            dependent = needs_projection(obj)
            if erasing and t != "person.forgotten":
                await barrier()  # everything after an erasure waits for it
            if dependent:
                if not synced:
                    await barrier(sync=True)
            elif t == "person.forgotten":
                # An erasure waits for everything before it; adjacent erasures go in one
                # chunk, so a survivor and the people merged into it are forgotten in one
                # command (the write side refuses them apart).
                if not erasing:
                    await barrier()
            elif t.startswith("person."):
                named = {obj.get("person_id"), obj.get("survivor")}  # survivor: person.merged
                if t != "person.added" and named & (in_flight_people | chunk_people):
                    await barrier()
            elif in_flight_people and any(p in in_flight_people for p in _named(obj)):
                await barrier()
            if not dependent:
                synced = False
            chunk.append(ln)
            size += len(ln.raw) + 1
            erasing = t == "person.forgotten"
            if t == "person.added":
                chunk_people.add(str(obj.get("person_id")))
            if (len(chunk) >= self.chunk_lines and not erasing) or size >= MAX_CHUNK_BYTES:
                await flush()
        await flush()
        await self.drain()
        if self.failure is not None:
            raise self.failure

    async def drain(self) -> None:
        while self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)

    async def _launch(self, chunk: list[Line]) -> None:
        await self.slots.acquire()
        task = asyncio.create_task(self._send(chunk))
        self.tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self.tasks.discard(t)
            self.slots.release()
            if not t.cancelled() and t.exception() is not None and self.failure is None:
                self.failure = t.exception()

        task.add_done_callback(done)

    async def _post(self, body: bytes) -> httpx.Response:
        return await self.client.post(
            f"/v1/workspaces/{self.ws}/events/batch",
            content=body,
            headers={"content-type": "application/x-ndjson"},
        )

    async def _send(self, chunk: list[Line]) -> None:
        """POST one chunk; a refused connection or an answer saying "later" (429, 502-504) is
        tried again under the HTTP retry policy, at most ``retries`` more times."""
        retrying = HTTP.retrying(
            retry_if_exception_type(httpx.TransportError)
            | retry_if_result(lambda resp: resp.status_code in RETRY_STATUSES),
            attempts=self.retries + 1,
            # Giving up on a status hands back the last answer; on an exception, raises it.
            give_up=lambda state: state.outcome.result() if state.outcome else None,
        )
        try:
            resp: httpx.Response = await retrying(self._post, b"\n".join(ln.raw for ln in chunk))
        except httpx.TransportError as exc:
            return self._reject(chunk, f"cannot reach the API: {exc!r}")
        if resp.status_code in (401, 403):
            raise ImportAborted(
                f"the API answered {resp.status_code} "
                f"({error_text(resp)}): check the token and its role "
                f"(write) for workspace {self.ws!r}"
            )
        if resp.status_code != 200:
            return self._reject(chunk, f"HTTP {resp.status_code}: {error_text(resp)}")
        results = resp.json().get("results", [])
        if len(results) != len(chunk):
            error = f"the API answered {len(results)} results for {len(chunk)} lines"
            return self._reject(chunk, error)
        self._tally(chunk, results)

    def _reject(self, chunk: list[Line], error: str) -> None:
        for ln in chunk:
            self.summary.rejected.append((ln.line, error))
        if self.progress is not None:
            self.progress.advance(len(chunk))

    def _tally(self, chunk: list[Line], results: list[dict[str, Any]]) -> None:
        s = self.summary
        for ln, r in zip(chunk, results, strict=True):
            status = int(r.get("status", 500))
            seq = r.get("seq")
            if isinstance(seq, int):
                self.max_seq = max(self.max_seq, seq)
                s.last_seq = max(s.last_seq or 0, seq)
            error = str(r.get("error") or f"status {status}")
            exists = status == 409 and ln.type == "person.added" and "already exists" in error
            if status == 201:
                s.published += 1
            elif status == 200 or exists:
                s.already_present += 1
            else:
                if status == 409 and "event_id" in error:
                    error += " (this workspace has that id with other content: fix the record"
                    error += " or give it an event_id of its own)"
                s.rejected.append((ln.line, f"{status} {error}"))
        if self.progress is not None:
            self.progress.advance(len(chunk))

    async def wait_projection(self) -> None:
        """Wait until the projection has applied everything published so far (retractions
        are checked against the archive it writes)."""
        if not self.max_seq:
            return
        deadline = time.monotonic() + self.projection_timeout_s
        while time.monotonic() < deadline:
            try:
                resp = await self.client.get("/readyz")
                checkpoint = int(resp.json()["checks"]["projection"]["checkpoint"])
            except (httpx.HTTPError, ValueError, KeyError, TypeError):
                await asyncio.sleep(1.0)
                continue
            if checkpoint >= self.max_seq:
                return
            await asyncio.sleep(0.05)


def needs_projection(obj: dict[str, Any]) -> bool:
    """Whether the write side checks this event against the read models (a retraction's
    target in the archive, an introduction's state), so what precedes it must be projected."""
    if obj.get("type") == "event.retracted":
        return True
    return "introduction_id" in obj and obj.get("type") != "introduction.requested"


def _named(obj: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for f in PERSON_REF_FIELDS:
        v = obj.get(f)
        if isinstance(v, str):
            out.append(v)
        elif isinstance(v, list):
            out.extend(p for p in v if isinstance(p, str))
    return out


def error_text(resp: httpx.Response) -> str:
    try:
        data = resp.json()
    except ValueError:
        return resp.text[:200]
    if isinstance(data, dict):
        return str(data.get("detail") or data.get("error") or data)[:500]
    return str(data)[:500]


async def check_access(client: httpx.AsyncClient, workspace: str) -> None:
    """Fail fast (before sending anything) on a wrong URL or token."""
    try:
        resp = await client.post(
            f"/v1/workspaces/{workspace}/events/batch",
            content=b"",
            headers={"content-type": "application/x-ndjson"},
        )
    except httpx.TransportError as exc:
        raise ImportAborted(f"cannot reach tieline at {client.base_url}: {exc!r}") from exc
    if resp.status_code in (401, 403, 429):
        raise ImportAborted(
            f"the API answered {resp.status_code} ({error_text(resp)}): "
            f"check the token and its role (write) for workspace {workspace!r}"
        )
    if resp.status_code >= 400:
        raise ImportAborted(f"the API answered {resp.status_code}: {error_text(resp)}")
