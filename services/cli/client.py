"""How the terminal front-end commands talk to the HTTP API.

Every API command takes the same options (``--api-url``, ``--workspace``, ``--token``,
``--json``; the first three also from ``TIELINE_API_URL``, ``TIELINE_WORKSPACE``,
``TIELINE_TOKEN``; an option given on the command line wins over the environment) and goes
through :class:`Api`, so every command fails the same way:

* the API does not answer (refused, timed out, not a URL): one line naming the URL, exit 2;
* no token, or a token the API refuses (401) or that may not do this (403): one line saying
  which option or variable the token came from, and where ``tieline up`` keeps the admin
  token it printed; exit 1;
* any other refusal: the status and the API's sentence naming the field at fault, then one
  line per field error; exit 1. With ``--json`` the API's error document goes to stdout too.

Both error shapes the API has used are read: RFC 9457 problem documents (``detail`` a
sentence, ``errors`` a list of ``{loc, msg}``) and the older ``{"error", "detail": [...]}``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

if TYPE_CHECKING:
    import httpx

DEFAULT_API = "http://127.0.0.1:8080"
DEFAULT_WORKSPACE = "default"
TOKEN_ENV = "TIELINE_TOKEN"
#: Where `tieline up` keeps its data when not told otherwise (same rule as `tieline up`).
DEFAULT_DATA_DIR = Path(os.environ.get("TIELINE_DATA_DIR", Path.home() / ".local/share/tieline"))
#: A request may wait for ``min_seq`` (TIELINE_MIN_SEQ_WAIT_S, 5 s by default) and an erasure
#: scans the stream: generous for reads, short to notice that nothing answers.
TIMEOUT_S = 120.0
CONNECT_TIMEOUT_S = 10.0

ApiUrl = Annotated[
    str,
    typer.Option(
        "--api-url", envvar="TIELINE_API_URL", help="Base URL of the HTTP API ($TIELINE_API_URL)."
    ),
]
Workspace = Annotated[
    str,
    typer.Option(
        "--workspace", "-w", envvar="TIELINE_WORKSPACE", help="Workspace id ($TIELINE_WORKSPACE)."
    ),
]
Token = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar=TOKEN_ENV,
        show_default=False,
        help="API token, sent as a bearer token ($TIELINE_TOKEN; `tieline up` prints one).",
    ),
]
AsJson = Annotated[
    bool,
    typer.Option("--json", help="Print the answer as one JSON document (machine-readable)."),
]


def command_name(ctx: typer.Context) -> str:
    """``tieline <group> <command>`` of the running command, for messages."""
    parts: list[str] = []
    at: Any = ctx
    while at is not None and at.parent is not None:
        parts.append(at.info_name or "")
        at = at.parent
    return " ".join(["tieline", *reversed(parts)])


def _token_source(ctx: typer.Context) -> str:
    """Where the token came from: the option or the environment variable."""
    source = ctx.get_parameter_source("token")
    return "--token" if source is not None and source.name == "COMMANDLINE" else TOKEN_ENV


def admin_token_note() -> str:
    """Where a person finds a token: what ``tieline up`` printed and where it keeps it."""
    path = DEFAULT_DATA_DIR / "secrets" / "admin-token"
    kept = (
        f"keeps it in {path}"
        if path.exists()
        else f"keeps it in <data-dir>/secrets/admin-token (data dir by default {DEFAULT_DATA_DIR})"
    )
    return (
        f"`tieline up` printed an admin token for workspace '{DEFAULT_WORKSPACE}' and {kept}; "
        "`tieline token create` makes others"
    )


def echo_err(text: str) -> None:
    """One line on stderr, never wrapped or styled (so it stays one line in logs)."""
    typer.echo(text, err=True)


def _plain(value: Any) -> Any:
    """What JSON cannot hold as it is: times in ISO 8601, anything else as text."""
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def emit_json(data: Any) -> None:
    """One JSON document on stdout."""
    typer.echo(json.dumps(data, indent=2, default=_plain, ensure_ascii=False))


def problem_lines(data: Any) -> tuple[str, list[str]]:
    """The API's error sentence and one line per field error, from either error shape."""
    if not isinstance(data, dict):
        return (str(data)[:300] if data else "", [])
    detail, error = data.get("detail"), data.get("error")
    headline = next((t for t in (detail, error, data.get("title")) if isinstance(t, str) and t), "")
    errors = data.get("errors")
    if not isinstance(errors, list):
        errors = detail if isinstance(detail, list) else []
    fields = []
    for e in errors:
        if not isinstance(e, dict):
            continue
        loc = ".".join(str(p) for p in e.get("loc") or []) or "(body)"
        line = f"{loc}: {e.get('msg', '')}"
        if line not in headline:
            fields.append(line)
    return headline, fields


@dataclass(frozen=True)
class Api:
    """One API command's connection settings and how it reports failures."""

    url: str
    workspace: str
    token: str | None
    as_json: bool = False
    #: ``tieline <command>``, to begin every message with.
    command: str = "tieline"
    #: Where the token came from (``--token`` or ``TIELINE_TOKEN``), for the hints.
    token_source: str = TOKEN_ENV

    @classmethod
    def of(
        cls,
        ctx: typer.Context,
        api_url: str,
        workspace: str,
        token: str | None,
        as_json: bool = False,
    ) -> Api:
        """The API of the running command ``ctx`` with its common options."""
        return cls(
            api_url.rstrip("/"),
            workspace,
            token or None,
            as_json,
            command_name(ctx),
            _token_source(ctx),
        )

    def path(self, rest: str) -> str:
        """``/v1/workspaces/{ws}`` + ``rest``."""
        return f"/v1/workspaces/{self.workspace}{rest}"

    def get(self, rest: str, params: dict[str, Any] | None = None) -> Any:
        return self.request("GET", self.path(rest), params=params)

    def post(self, rest: str, body: Any, *, unsure: str = "") -> Any:
        return self.request("POST", self.path(rest), body=body, unsure=unsure)

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        body: Any = None,
        unsure: str = "",
    ) -> Any:
        """The answer's JSON; a failure ends the command (see the module docstring).
        ``unsure`` is added to the message when a write may have happened anyway."""
        import httpx  # here, not at the top: `tieline up` must reach its port check fast

        params = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            resp = httpx.request(
                method,
                self.url + path,
                params=params,
                json=body,
                headers=self.headers(),
                timeout=httpx.Timeout(TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
            )
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            self.unreachable(exc, unsure)
        data = self.body(resp)
        if resp.status_code >= 400:
            self.refused(resp.status_code, data, unsure)
        return data

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def body(self, resp: httpx.Response) -> Any:
        """The answer's JSON; an answer that is not JSON (not a tieline API) ends the command."""
        if not resp.content:
            return {}
        try:
            return resp.json()
        except ValueError:
            if resp.status_code >= 400:
                return resp.text[:300]
            echo_err(
                f"{self.command}: {self.url} answered HTTP {resp.status_code} with something "
                "that is not JSON; is it a tieline API? (--api-url / TIELINE_API_URL)"
            )
            raise typer.Exit(2) from None

    def unreachable(self, exc: BaseException, unsure: str = "") -> NoReturn:
        """The API did not answer: one line naming the URL, exit code 2."""
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        echo_err(
            f"{self.command}: cannot reach the tieline API at {self.url}: {reason} "
            f"(is `tieline up` running? set --api-url or TIELINE_API_URL){unsure}"
        )
        raise typer.Exit(2) from None

    def refused(self, status: int, data: Any, unsure: str = "") -> NoReturn:
        """The API refused: a hint for token problems, else the field errors; exit code 1."""
        if self.as_json:
            emit_json({"status": status, **data} if isinstance(data, dict) else data)
        headline, fields = problem_lines(data)
        maybe = unsure if status >= 500 else ""
        echo_err(f"{self.command}: {self.refusal(status, headline)}{maybe}")
        for line in fields:
            echo_err(f"  {line}")
        raise typer.Exit(1)

    def refusal(self, status: int, headline: str) -> str:
        """The one-line explanation of a refusal with ``status``."""
        if status == 401 and not self.token:
            return f"no API token (401): pass --token or set {TOKEN_ENV}; {admin_token_note()}"
        if status == 401:
            return (
                f"the API refused the token from {self.token_source} "
                f"(401 {headline or 'unauthorized'}: unknown, malformed or revoked); "
                "pass a valid one with --token or "
                f"{TOKEN_ENV}; {admin_token_note()}"
            )
        if status == 403:
            return (
                f"the token from {self.token_source} may not do this in workspace "
                f"'{self.workspace}' (403 {headline or 'forbidden'}): it belongs to another "
                "workspace (choose one with --workspace or TIELINE_WORKSPACE) or its role is too "
                "low (writes need write, forget and access-log need admin)"
            )
        return f"refused ({status}): {headline or 'no reason given'}"

    def pages(self, rest: str, params: dict[str, Any], key: str, follow: bool) -> dict[str, Any]:
        """A list read; with ``follow``, every page merged into the first one's document.

        Pages are followed by ``next_cursor`` (passed back as ``cursor``) when the answer has
        that member, else by the older ``next`` (passed back as ``after``)."""
        first: dict[str, Any] = self.get(rest, params)
        if not follow:
            return first
        items = list(first.get(key) or [])
        for page in self._following(rest, params, first):
            items.extend(page.get(key) or [])
        merged = {**first, key: items}
        for end in ("next_cursor", "next"):
            if end in merged:
                merged[end] = None
        return merged

    def _following(
        self, rest: str, params: dict[str, Any], page: dict[str, Any]
    ) -> Iterator[dict[str, Any]]:
        base = {k: v for k, v in params.items() if k not in ("cursor", "after")}
        seen: set[str] = set()
        while True:
            if "next_cursor" in page:
                more = {"cursor": page["next_cursor"]} if page["next_cursor"] else None
            else:
                more = {"after": page["next"]} if page.get("next") else None
            if more is None:
                return
            mark = json.dumps(more, sort_keys=True)
            if mark in seen:  # a server that hands out the same page again: stop, not loop
                echo_err(f"{self.command}: the API repeated a page; stopped following")
                return
            seen.add(mark)
            page = self.get(rest, {**base, **more})
            yield page


def out(text: str) -> None:
    """One line on stdout, never wrapped."""
    typer.echo(text)
    sys.stdout.flush()
