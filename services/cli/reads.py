"""Commands that read, one per read route of the HTTP API: a table (or a few lines) for a
person, the answer as one JSON document with ``--json``.

Lists take ``--limit`` and ``--cursor`` (the ``next_cursor`` of the page before), and
``--all`` follows every page and prints them as one (see :meth:`Api.pages`). Reads take
``--min-seq N`` to read their own writes: the API waits until the projection has applied the
stream sequence a write printed.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from tieline.services.cli.client import (
    DEFAULT_API,
    DEFAULT_WORKSPACE,
    Api,
    ApiUrl,
    AsJson,
    Token,
    Workspace,
    emit_json,
    out,
)
from tieline.services.cli.events import _iso_time

console = Console()

AsOf = Annotated[
    str | None,
    typer.Option(
        "--as-of", callback=_iso_time, help="Answer as of this ISO 8601 time (with a timezone)."
    ),
]
MinSeq = Annotated[
    int | None,
    typer.Option(
        "--min-seq",
        help="Read your writes: wait until the projection has applied this stream seq "
        "(the seq a write printed).",
    ),
]
Limit = Annotated[int | None, typer.Option(help="Items per page (the API's default if left out).")]
Cursor = Annotated[
    str | None, typer.Option(help="Start at this page: the next_cursor of the page before.")
]
All = Annotated[bool, typer.Option("--all", help="Follow every page; print them as one.")]


def cell(value: Any) -> str:
    """A value for a table cell: numbers with one decimal, nothing for null, and text as it
    is (escaped: a name like "[bold]" is data, not rich markup)."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.1f}"
    return escape(str(value))


def new_table(*columns: str, title: str | None = None) -> Table:
    """A table whose cells wrap (long ids and types fold) rather than end in an ellipsis:
    what a person reads must be whole."""
    table = Table(title=cell(title) if title else None)
    for name in columns:
        table.add_column(name, overflow="fold")
    return table


def show_table(columns: list[str], rows: list[dict[str, Any]], title: str | None = None) -> None:
    table = new_table(*columns, title=title)
    for row in rows:
        table.add_row(*(cell(row.get(c)) for c in columns))
    console.print(table)


def show_fields(data: dict[str, Any], keys: list[str], title: str | None = None) -> None:
    """A two-column table of ``keys`` of ``data`` (present ones only)."""
    table = new_table("field", "value", title=title)
    for key in keys:
        if key in data:
            table.add_row(key, cell(data[key]))
    console.print(table)


def next_page_note(data: dict[str, Any]) -> None:
    """Tell a person how to get the next page (scripts use --json or --all)."""
    if data.get("next_cursor"):
        out(f"more: --cursor {data['next_cursor']}  (or --all)")
    elif "next_cursor" not in data and data.get("next"):
        out(f"more: --all (next after {data['next']})")


# -- people -------------------------------------------------------------------------------


def people(
    ctx: typer.Context,
    limit: Limit = None,
    cursor: Cursor = None,
    after: Annotated[
        str | None, typer.Option(help="Start after this person id (older APIs).")
    ] = None,
    follow: All = False,
    min_seq: MinSeq = None,
    api_url: ApiUrl = DEFAULT_API,
    workspace: Workspace = DEFAULT_WORKSPACE,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """The workspace's directory in person-id order, a page at a time (--all: every page)."""
    api = Api.of(ctx, api_url, workspace, token, as_json)
    params = {"limit": limit, "cursor": cursor, "after": after, "min_seq": min_seq}
    data = api.pages("/people", params, "people", follow)
    if as_json:
        emit_json(data)
        return
    cols = ["person_id", "display_name", "organization", "email", "forgotten"]
    show_table(cols, data.get("people") or [], title=f"people ({len(data.get('people') or [])})")
    next_page_note(data)


def person(
    ctx: typer.Context,
    person_id: Annotated[str, typer.Argument(metavar="PERSON")],
    min_seq: MinSeq = None,
    api_url: ApiUrl = DEFAULT_API,
    workspace: Workspace = DEFAULT_WORKSPACE,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """One person of the directory."""
    api = Api.of(ctx, api_url, workspace, token, as_json)
    data = api.get(f"/people/{person_id}", {"min_seq": min_seq})
    if as_json:
        emit_json(data)
        return
    show_fields(data, list(data), title=person_id)


# -- a relationship -----------------------------------------------------------------------

STRENGTH_FIELDS = [
    "score",
    "tier",
    "event_count",
    "meetings",
    "follow_ups",
    "introductions",
    "helps",
    "ratings",
    "first_contact_at",
    "last_contact_at",
    "days_since_contact",
    "can_vouch",
    "momentum",
    "episodes",
    "common_neighbours",
    "as_of",
]


def strength(
    ctx: typer.Context,
    person_a: str,
    person_b: str,
    as_of: AsOf = None,
    min_seq: MinSeq = None,
    api_url: ApiUrl = DEFAULT_API,
    workspace: Workspace = DEFAULT_WORKSPACE,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """The strength of the tie between A and B (now, or --as-of a date)."""
    api = Api.of(ctx, api_url, workspace, token, as_json)
    data = api.get(f"/relationships/{person_a}/{person_b}", {"as_of": as_of, "min_seq": min_seq})
    if as_json:
        emit_json(data)
        return
    show_fields(data, STRENGTH_FIELDS, title=f"{data.get('person_a')} - {data.get('person_b')}")


def explain(
    ctx: typer.Context,
    person_a: str,
    person_b: str,
    top: Annotated[int | None, typer.Option(help="How many contributions to show.")] = None,
    as_of: AsOf = None,
    min_seq: MinSeq = None,
    api_url: ApiUrl = DEFAULT_API,
    workspace: Workspace = DEFAULT_WORKSPACE,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Why the tie between A and B is as strong as it is, and what would raise it."""
    api = Api.of(ctx, api_url, workspace, token, as_json)
    params = {"as_of": as_of, "min_seq": min_seq, "top": top}
    data = api.get(f"/relationships/{person_a}/{person_b}/explain", params)
    if as_json:
        emit_json(data)
        return
    out(f"score {cell(data.get('score'))}, tier {data.get('tier')}")
    cols = ["occurred_at", "type", "points", "current", "reason"]
    show_table(cols, data.get("top_contributions") or [], title="top contributions")
    decay = data.get("decay") or {}
    show_fields(decay, list(decay), title="decay since the last contact")
    for line in data.get("to_raise") or []:
        out(f"to raise it: {line}")


def timeline(
    ctx: typer.Context,
    person_a: str,
    person_b: str,
    as_of: AsOf = None,
    limit: Limit = None,
    cursor: Cursor = None,
    follow: All = False,
    min_seq: MinSeq = None,
    api_url: ApiUrl = DEFAULT_API,
    workspace: Workspace = DEFAULT_WORKSPACE,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """How the relationship between A and B developed, event by event."""
    api = Api.of(ctx, api_url, workspace, token, as_json)
    params = {"as_of": as_of, "limit": limit, "cursor": cursor, "min_seq": min_seq}
    data = api.pages(f"/relationships/{person_a}/{person_b}/timeline", params, "events", follow)
    if as_json:
        emit_json(data)
        return
    table = new_table("occurred_at", "type", "recorded_by", "contribution", "strength after", "why")
    for e in data.get("events") or []:
        cols = ("occurred_at", "type", "recorded_by", "contribution", "strength_after", "reason")
        table.add_row(*(cell(e.get(c)) for c in cols))
    # Retracted events count for nothing; the audit trail still shows them.
    for e in data.get("retracted") or []:
        what = cell(f"[retracted] event_id {e.get('event_id')}")
        table.add_row(
            cell(e.get("occurred_at")),
            cell(e.get("type")),
            cell(e.get("recorded_by")),
            "",
            "",
            what,
        )
    console.print(table)
    next_page_note(data)


# -- a person's ties ----------------------------------------------------------------------


def ties(
    ctx: typer.Context,
    person_id: Annotated[str, typer.Argument(metavar="PERSON")],
    order: Annotated[
        str | None, typer.Option(help="strength (default) | recent | momentum")
    ] = None,
    limit: Limit = None,
    cursor: Cursor = None,
    follow: All = False,
    as_of: AsOf = None,
    min_seq: MinSeq = None,
    api_url: ApiUrl = DEFAULT_API,
    workspace: Workspace = DEFAULT_WORKSPACE,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """A person's ties, strongest first, with Dunbar-like tiers."""
    api = Api.of(ctx, api_url, workspace, token, as_json)
    params = {"order": order, "limit": limit, "cursor": cursor, "as_of": as_of, "min_seq": min_seq}
    data = api.pages(f"/people/{person_id}/relationships", params, "relationships", follow)
    if as_json:
        emit_json(data)
        return
    cols = ["other", "score", "tier", "momentum", "event_count", "meetings", "last_contact_at"]
    cols.append("one_sided")
    show_table(cols, data.get("relationships") or [], title=f"ties of {person_id}")
    next_page_note(data)


def follow_ups(
    ctx: typer.Context,
    person_id: Annotated[str, typer.Argument(metavar="PERSON")],
    order: Annotated[
        str | None, typer.Option(help="at_stake (default) | lapsing (least momentum first)")
    ] = None,
    limit: Limit = None,
    cursor: Cursor = None,
    follow: All = False,
    as_of: AsOf = None,
    min_seq: MinSeq = None,
    api_url: ApiUrl = DEFAULT_API,
    workspace: Workspace = DEFAULT_WORKSPACE,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Ties of PERSON that are due a follow-up, most strength at stake first (or least
    momentum first: the ties least likely to go on without a nudge)."""
    api = Api.of(ctx, api_url, workspace, token, as_json)
    params = {"order": order, "limit": limit, "cursor": cursor, "as_of": as_of}
    params["min_seq"] = min_seq
    data = api.pages(f"/people/{person_id}/follow-ups", params, "due", follow)
    if as_json:
        emit_json(data)
        return
    cols = ["other", "score", "tier_at_last_contact", "days_since_contact", "cadence_days"]
    cols += ["at_stake", "momentum"]
    show_table(cols, data.get("due") or [], title=f"follow-ups due ({person_id})")
    next_page_note(data)


def give_and_take(
    ctx: typer.Context,
    person_id: Annotated[str, typer.Argument(metavar="PERSON")],
    one_sided: Annotated[
        bool | None, typer.Option("--one-sided/--balanced", help="Only one-sided ties, or not.")
    ] = None,
    limit: Limit = None,
    cursor: Cursor = None,
    follow: All = False,
    min_seq: MinSeq = None,
    api_url: ApiUrl = DEFAULT_API,
    workspace: Workspace = DEFAULT_WORKSPACE,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Who initiates, follows up, replies and helps, per tie; one-sided ties flagged."""
    api = Api.of(ctx, api_url, workspace, token, as_json)
    params = {"one_sided": one_sided, "limit": limit, "cursor": cursor, "min_seq": min_seq}
    data = api.pages(f"/people/{person_id}/give-and-take", params, "ties", follow)
    if as_json:
        emit_json(data)
        return
    acts = ["initiated", "followed_up", "replies", "helped", "introduced"]
    table = new_table("other", "one-sided", *(f"{a} (me/them)" for a in acts), "balance")
    for t in data.get("ties") or []:
        rec, other = t.get("reciprocity") or {}, t.get("other")
        pairs = [
            f"{(rec.get(a) or {}).get(person_id, 0)}/{(rec.get(a) or {}).get(other, 0)}"
            for a in acts
        ]
        table.add_row(cell(other), cell(t.get("one_sided")), *pairs, cell(rec.get("balance")))
    console.print(table)
    next_page_note(data)


# -- introductions ------------------------------------------------------------------------


def warm_paths(
    ctx: typer.Context,
    person_id: Annotated[str, typer.Argument(metavar="PERSON")],
    target: Annotated[str, typer.Option("--target", help="Whom PERSON wants to meet.")],
    limit: Limit = None,
    min_seq: MinSeq = None,
    api_url: ApiUrl = DEFAULT_API,
    workspace: Workspace = DEFAULT_WORKSPACE,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Who can introduce PERSON to --target (at most two intermediaries)."""
    api = Api.of(ctx, api_url, workspace, token, as_json)
    params = {"target": target, "limit": limit, "min_seq": min_seq}
    data = api.get(f"/people/{person_id}/warm-paths", params)
    if as_json:
        emit_json(data)
        return
    for p in data.get("paths") or []:
        out(" -> ".join(p.get("path") or []) + f"   (weakest link {cell(p.get('weakest_link'))})")
    if not data.get("paths"):
        out(f"no warm path from {person_id} to {target}")


def can_introduce(
    ctx: typer.Context,
    introducer: str,
    person_a: str,
    person_b: str,
    as_of: AsOf = None,
    min_seq: MinSeq = None,
    api_url: ApiUrl = DEFAULT_API,
    workspace: Workspace = DEFAULT_WORKSPACE,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Whether INTRODUCER knows both A and B well enough to vouch, with reasons."""
    api = Api.of(ctx, api_url, workspace, token, as_json)
    params = {
        "introducer": introducer, "a": person_a, "b": person_b, "as_of": as_of,
        "min_seq": min_seq,
    }  # fmt: skip
    data = api.get("/introductions/check", params)
    if as_json:
        emit_json(data)
        return
    verdict = "can" if data.get("can_introduce") else "cannot"
    out(f"{introducer} {verdict} introduce {person_a} and {person_b}")
    table = new_table("knows", "can vouch", "score", "tier", "reasons")
    for side in (person_a, person_b):
        s = data.get(side) or {}
        reasons = "; ".join(s.get("reasons") or [])
        table.add_row(
            cell(side),
            cell(s.get("can_vouch")),
            cell(s.get("score")),
            cell(s.get("tier")),
            cell(reasons),
        )
    console.print(table)


def introductions(
    ctx: typer.Context,
    person_id: Annotated[
        str | None, typer.Option("--person", help="Only introductions naming this person.")
    ] = None,
    limit: Limit = None,
    cursor: Cursor = None,
    follow: All = False,
    min_seq: MinSeq = None,
    api_url: ApiUrl = DEFAULT_API,
    workspace: Workspace = DEFAULT_WORKSPACE,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Double opt-in introductions and where each stands."""
    api = Api.of(ctx, api_url, workspace, token, as_json)
    params = {"person": person_id, "limit": limit, "cursor": cursor, "min_seq": min_seq}
    data = api.pages("/introductions", params, "introductions", follow)
    if as_json:
        emit_json(data)
        return
    cols = ["introduction_id", "requester", "introducer", "target", "status", "updated_at"]
    show_table(cols, data.get("introductions") or [], title="introductions")
    next_page_note(data)


def access_log(
    ctx: typer.Context,
    person_id: Annotated[
        str | None, typer.Option("--person", help="Only reads of this person's data.")
    ] = None,
    limit: Limit = None,
    cursor: Cursor = None,
    follow: All = False,
    api_url: ApiUrl = DEFAULT_API,
    workspace: Workspace = DEFAULT_WORKSPACE,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Who read whose data, newest first (admin token)."""
    api = Api.of(ctx, api_url, workspace, token, as_json)
    params = {"person": person_id, "limit": limit, "cursor": cursor}
    data = api.pages("/access-log", params, "entries", follow)
    if as_json:
        emit_json(data)
        return
    table = new_table("at", "actor", "endpoint", "people")
    for e in data.get("entries") or []:
        people_read = ", ".join(e.get("person_ids") or [])
        table.add_row(
            cell(e.get("at")), cell(e.get("actor")), cell(e.get("endpoint")), cell(people_read)
        )
    console.print(table)
    next_page_note(data)


#: (command name, function): every read command, for :func:`register` and the tests.
COMMANDS: tuple[tuple[str, Any], ...] = (
    ("people", people),
    ("person", person),
    ("strength", strength),
    ("explain", explain),
    ("timeline", timeline),
    ("ties", ties),
    ("relationships", ties),
    ("follow-ups", follow_ups),
    ("give-and-take", give_and_take),
    ("warm-paths", warm_paths),
    ("can-introduce", can_introduce),
    ("introductions", introductions),
    ("access-log", access_log),
)


def register(app: typer.Typer) -> None:
    """Add the read commands to ``app``."""
    for name, fn in COMMANDS:
        app.command(name)(fn)
