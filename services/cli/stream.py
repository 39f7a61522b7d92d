"""``tieline stream``: tail the workspace's live updates (``GET /v1/workspaces/{ws}/stream``,
Server-Sent Events) like a browser's ``EventSource`` would.

One line per event (``--json``: the raw event as one JSON object per line: ``id``, ``event``
and ``data``). When the connection drops or the server ends the stream (a slow client is cut
off with an ``overflow`` message), it reconnects after the server's ``retry`` delay with
``Last-Event-ID`` set to the last id it saw, so nothing is missed and nothing is repeated;
``--last-event-id`` resumes an earlier run. A ``reset`` message (a position too old to resume)
is shown and the stream goes on; ``unauthorized`` (the token was revoked) ends it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Annotated, Any

import typer
from tieline.services.cli.client import (
    DEFAULT_API,
    DEFAULT_WORKSPACE,
    Api,
    ApiUrl,
    AsJson,
    Token,
    Workspace,
    echo_err,
    out,
)

#: Messages of the stream itself rather than changes of the workspace.
CONTROL = ("reset", "overflow", "unauthorized")
#: Longest wait between reconnection attempts while the API does not answer.
MAX_BACKOFF_S = 30.0


@dataclass(frozen=True)
class Sse:
    """One dispatched event: its id (the last id seen, as EventSource keeps it), type, data."""

    id: str
    event: str
    data: str

    def payload(self) -> Any:
        try:
            return json.loads(self.data)
        except ValueError:
            return self.data


@dataclass
class SseParser:
    """Server-Sent Events as the WHATWG HTML standard parses them: ``id``, ``event``,
    ``data`` and ``retry`` fields, ``:`` comments; a blank line dispatches the event and makes
    the id buffer the last event id (even when there is no data to dispatch). An event cut off
    by a dropped connection is never dispatched and its id never becomes the last one, so a
    reconnection resumes before it."""

    last_id: str = ""
    retry_ms: int | None = None
    _id: str | None = None
    _event: str = ""
    _data: list[str] = field(default_factory=list)

    def feed(self, line: str) -> Sse | None:
        """Take one line (without its end); return the event it dispatches, if any."""
        if line == "":
            if self._id is not None:
                self.last_id = self._id
            event, data = self._event or "message", self._data
            self._event, self._data = "", []
            return Sse(self.last_id, event, "\n".join(data)) if data else None
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._id = value
        elif name == "retry" and value.isdigit():
            self.retry_ms = int(value)
        return None

    def reset_partial(self) -> None:
        """A connection ended mid-event: what it had of that event is dropped."""
        self._id, self._event, self._data = None, "", []


def _pair(data: dict[str, Any]) -> str:
    return "-".join(str(p) for p in data.get("pair") or data.get("people") or [])


def _change(d: dict[str, Any]) -> str:
    """``12.3 -> 20.5  friend`` or, when the tier moved, ``... acquaintance -> friend``; a new
    pair has no score before, one whose last counting event was retracted none after."""
    before = "new" if d.get("score_before") is None else d["score_before"]
    after = "none" if d.get("score_after") is None else d["score_after"]
    tier = d.get("tier_after") or "none"
    if d.get("tier_changed"):
        tier = f"{d.get('tier_before') or 'new'} -> {tier}"
    return f"{before} -> {after}  {tier}"


def describe(ev: Sse) -> str:
    """One line for a person: position, kind and what changed."""
    d = ev.payload()
    if not isinstance(d, dict):
        return f"{ev.id}  {ev.event}  {ev.data}"
    if ev.event == "event.recorded":
        what = f"{d.get('type')}  {', '.join(d.get('people') or [])}  seq={d.get('seq')}"
    elif ev.event == "relationship.changed":
        what = f"{_pair(d)}  {_change(d)}  by {(d.get('cause') or {}).get('type', '')}"
    elif ev.event == "follow_up.due":
        what = f"{_pair(d)}  due since {d.get('due_at')}  (tier {d.get('tier_at_last_contact')})"
    elif ev.event == "person.forgotten":
        what = f"{d.get('person_id')}"
    elif ev.event in CONTROL:
        what = f"{d.get('reason', '')}  resume_from={d.get('resume_from')}"
    else:
        what = json.dumps(d, separators=(",", ":"), default=str)
    return f"{ev.id}  {ev.event}  {what}"


@dataclass
class Tail:
    """One ``tieline stream`` run: connects, prints, reconnects from the last id."""

    api: Api
    params: dict[str, str]
    parser: SseParser
    count: int | None
    reconnect: bool
    idle_timeout_s: float
    seen: int = 0
    #: This connection answered 200 / some connection of this run did.
    connected: bool = False
    ever_connected: bool = False

    def run(self) -> None:
        failures = 0
        while True:
            reason = self.connect_once()
            if reason is None:
                return
            failures = 0 if self.connected else failures + 1
            if not self.reconnect:
                echo_err(f"{self.api.command}: {reason}; stopped (--no-reconnect)")
                raise typer.Exit(2)
            wait = (self.parser.retry_ms or 2000) / 1000 * (2 ** min(failures, 5))
            wait = min(wait, MAX_BACKOFF_S)
            echo_err(
                f"{self.api.command}: {reason}; reconnecting in {wait:g}s from "
                f"{self.parser.last_id or 'now'}"
            )
            self.connected = False
            time.sleep(wait)

    def connect_once(self) -> str | None:
        """Read one connection to its end: None when done, else why it ended."""
        import httpx

        headers = {**self.api.headers(), "Accept": "text/event-stream"}
        if self.parser.last_id:
            headers["Last-Event-ID"] = self.parser.last_id
        timeout = httpx.Timeout(10.0, read=self.idle_timeout_s)
        url = self.api.url + self.api.path("/stream")
        try:
            with httpx.stream(
                "GET", url, params=self.params, headers=headers, timeout=timeout
            ) as r:
                if r.status_code != 200:
                    r.read()
                    self.refused(r)
                self.connected = self.ever_connected = True
                for line in r.iter_lines():
                    ev = self.parser.feed(line)
                    if ev is not None and self.handle(ev):
                        return None
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            self.parser.reset_partial()
            if not self.ever_connected:  # the API never answered: one line, exit code 2
                self.api.unreachable(exc)
            return f"connection lost ({(str(exc).splitlines() or [type(exc).__name__])[0]})"
        self.parser.reset_partial()
        return "the server ended the stream"

    def refused(self, resp: Any) -> None:
        if resp.status_code == 404:
            echo_err(
                f"{self.api.command}: the API at {self.api.url} has no event stream "
                f"(GET {self.api.path('/stream')} answered 404); it needs a tieline with live "
                "updates"
            )
            raise typer.Exit(1)
        self.api.refused(resp.status_code, self.api.body(resp))

    def handle(self, ev: Sse) -> bool:
        """Print one event; True when the run is over (--count reached, token revoked)."""
        if self.api.as_json:
            out(json.dumps({"id": ev.id, "event": ev.event, "data": ev.payload()}))
        elif ev.event in CONTROL:
            echo_err(describe(ev))
        else:
            out(describe(ev))
        if ev.event == "unauthorized":
            echo_err(
                f"{self.api.command}: the API ended the stream: the token is no longer valid "
                "(pass another with --token or TIELINE_TOKEN)"
            )
            raise typer.Exit(1)
        if ev.event in CONTROL:
            return False
        self.seen += 1
        return self.count is not None and self.seen >= self.count


def stream(
    ctx: typer.Context,
    person: Annotated[str | None, typer.Option(help="Only changes naming this person.")] = None,
    pair: Annotated[
        str | None, typer.Option(help="Only changes of this pair: A,B (and either's erasure).")
    ] = None,
    kinds: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated kinds (default all): event.recorded, relationship.changed, "
            "follow_up.due, person.forgotten."
        ),
    ] = None,
    last_event_id: Annotated[
        str | None,
        typer.Option("--last-event-id", "--from", help="Resume after this event id."),
    ] = None,
    count: Annotated[
        int | None, typer.Option(help="Stop after this many events (default: run until Ctrl-C).")
    ] = None,
    reconnect: Annotated[
        bool, typer.Option(help="Reconnect (resuming) when the connection drops.")
    ] = True,
    idle_timeout: Annotated[
        float, typer.Option(help="Seconds without a byte (heartbeats included) = a dead link.")
    ] = 60.0,
    api_url: ApiUrl = DEFAULT_API,
    workspace: Workspace = DEFAULT_WORKSPACE,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Tail the workspace's live updates (Server-Sent Events), one line per event (--json:
    JSON Lines); reconnects and resumes by itself. `stream backup|restore DIR` copy the
    JetStream log of record to files and back (operators)."""
    if ctx.invoked_subcommand is not None:
        return  # `tieline stream backup|restore`: nothing to tail
    params = {k: v for k, v in {"person": person, "pair": pair, "kinds": kinds}.items() if v}
    tail = Tail(
        Api.of(ctx, api_url, workspace, token, as_json),
        params,
        SseParser(last_id=last_event_id or ""),
        count,
        reconnect,
        idle_timeout,
    )
    try:
        tail.run()
    except KeyboardInterrupt:
        echo_err(f"{tail.api.command}: stopped; resume with --last-event-id {tail.parser.last_id}")
        raise typer.Exit(130) from None


def register(app: typer.Typer) -> None:
    """Make ``tieline stream`` (with no subcommand) tail the live updates. The name is shared
    with ``tieline stream backup|restore`` (services/cli/deploy.py), which mounts the group."""
    from tieline.services.cli.deploy import stream_app

    del app  # the group is mounted by deploy.register
    stream_app.callback(invoke_without_command=True, no_args_is_help=False)(stream)
