"""Commands that record events, one per event type, through the HTTP API.

Options mirror the event's fields (events_schema/models.py). The CLI checks only types (a
number is a number, an id is a UUID, a time parses); every rule is the write side's, so a
refusal shows the API's sentence naming the field. Every command takes ``--event-id`` (the
idempotency key: sending the same id again records nothing new; by default a new uuid4, printed
with the result, so a failed attempt can be retried safely) and ``--occurred-at``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID, uuid4

import typer
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


def _iso_time(value: str | None) -> str | None:
    """Only checks that the value parses as an ISO 8601 time; the API decides the rest."""
    if value is not None:
        try:
            datetime.fromisoformat(value)
        except ValueError:
            raise typer.BadParameter(
                f"{value!r} is not an ISO 8601 time, e.g. 2025-06-30T18:30:00Z"
            ) from None
    return value


EventId = Annotated[
    UUID | None,
    typer.Option(
        "--event-id",
        show_default=False,
        help="Idempotency key: the same id again records nothing new (default: a new uuid4, "
        "printed). Reuse it to retry a write whose answer was lost.",
    ),
]
OccurredAt = Annotated[
    str | None,
    typer.Option(
        "--occurred-at",
        "--at",
        callback=_iso_time,
        help="When it happened: ISO 8601 with a timezone (default: now).",
    ),
]
CorrelationId = Annotated[
    UUID | None, typer.Option(help="Groups events of one interaction (optional).")
]
CausationId = Annotated[
    UUID | None, typer.Option(help="The event that caused this one (optional).")
]
Note = Annotated[str | None, typer.Option(help="Free text (personal data: encrypted).")]
Reason = Annotated[str | None, typer.Option(help="Why (free text, personal data: encrypted).")]


def envelope(
    event_id: UUID | None,
    occurred_at: str | None,
    correlation_id: UUID | None,
    causation_id: UUID | None,
) -> dict[str, Any]:
    """The envelope fields a client may set; the event id is always set (a new uuid4)."""
    return {
        "event_id": event_id or uuid4(),
        "occurred_at": occurred_at,
        "correlation_id": correlation_id,
        "causation_id": causation_id,
    }


def _wire(fields: dict[str, Any]) -> dict[str, Any]:
    """Fields as JSON: unset ones left out (the event's defaults apply), UUIDs as text."""
    return {k: str(v) if isinstance(v, UUID) else v for k, v in fields.items() if v is not None}


def _show(api: Api, what: str, data: dict[str, Any], extra: dict[str, Any]) -> None:
    """The write's answer: one line (event_id and seq last, for scripts), or its JSON."""
    if api.as_json:
        emit_json({**data, **extra})
        return
    more = "".join(f" {k}={v}" for k, v in extra.items())
    dup = " (already recorded: nothing new)" if data.get("duplicate") else ""
    out(f"{what}{more} event_id={data.get('event_id')} seq={data.get('seq')}{dup}")


def record(api: Api, event: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
    """POST one event; print its event_id and stream seq (or, with --json, the answer)."""
    body = _wire(event)
    unsure = f"; it may have been recorded: retry with --event-id {body['event_id']}"
    data: dict[str, Any] = api.post("/events", body, unsure=unsure)
    _show(api, f"recorded {body['type']}", data, extra or {})


# -- people -------------------------------------------------------------------------------


def add_person(
    ctx: typer.Context,
    name: Annotated[str, typer.Option("--name", help="Display name.")],
    person_id: Annotated[
        str | None, typer.Argument(help="Id to give the person (default: a generated one).")
    ] = None,
    email: str | None = None,
    phone: str | None = None,
    organization: str | None = None,
    title: str | None = None,
    notes: Note = None,
    event_id: EventId = None,
    occurred_at: OccurredAt = None,
    api_url: ApiUrl = DEFAULT_API,
    workspace: Workspace = DEFAULT_WORKSPACE,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Add a person to the workspace's directory (person.added)."""
    api = Api.of(ctx, api_url, workspace, token, as_json)
    body = _wire(
        {
            "person_id": person_id,
            "display_name": name,
            "email": email,
            "phone": phone,
            "organization": organization,
            "title": title,
            "notes": notes,
            **envelope(event_id, occurred_at, None, None),
        }
    )
    unsure = f"; it may have been recorded: retry with --event-id {body['event_id']}"
    data = api.post("/people", body, unsure=unsure)
    _show(api, f"added {data.get('person_id') or person_id}", data, {})


def update_person(
    ctx: typer.Context,
    person_id: Annotated[str, typer.Argument(help="The person whose fields change.")],
    name: Annotated[str | None, typer.Option("--name", help="New display name.")] = None,
    email: str | None = None,
    phone: str | None = None,
    organization: str | None = None,
    title: str | None = None,
    notes: Note = None,
    event_id: EventId = None,
    occurred_at: OccurredAt = None,
    correlation_id: CorrelationId = None,
    causation_id: CausationId = None,
    api_url: ApiUrl = DEFAULT_API,
    workspace: Workspace = DEFAULT_WORKSPACE,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Change some of a person's directory fields (person.updated); fields left out stay."""
    record(
        Api.of(ctx, api_url, workspace, token, as_json),
        {
            "type": "person.updated",
            "person_id": person_id,
            "display_name": name,
            "email": email,
            "phone": phone,
            "organization": organization,
            "title": title,
            "notes": notes,
            **envelope(event_id, occurred_at, correlation_id, causation_id),
        },
    )


# -- relationships ------------------------------------------------------------------------


def met(
    ctx: typer.Context,
    people: Annotated[list[str], typer.Argument(help="Two or more person ids.")],
    depth: Annotated[
        str,
        typer.Option(
            help="card_exchange | brief_chat | conversation | deep_conversation | meal_or_activity"
        ),
    ] = "conversation",
    minutes: Annotated[
        int | None, typer.Option("--minutes", "--duration-minutes", help="How long it lasted.")
    ] = None,
    mode: Annotated[str | None, typer.Option(help="in_person (default) | remote")] = None,
    remote: Annotated[bool, typer.Option("--remote", help="Same as --mode remote.")] = False,
    initiated_by: Annotated[str | None, typer.Option(help="Who set it up (a participant).")] = None,
    where: Annotated[str | None, typer.Option(help="Place (personal data: encrypted).")] = None,
    context: Note = None,
    event_id: EventId = None,
    occurred_at: OccurredAt = None,
    correlation_id: CorrelationId = None,
    causation_id: CausationId = None,
    api_url: ApiUrl = DEFAULT_API,
    workspace: Workspace = DEFAULT_WORKSPACE,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Record that people met (relationship.met)."""
    record(
        Api.of(ctx, api_url, workspace, token, as_json),
        {
            "type": "relationship.met",
            "participants": people,
            "depth": depth,
            "duration_minutes": minutes,
            "mode": "remote" if remote else mode,
            "initiated_by": initiated_by,
            "where": where,
            "context": context,
            **envelope(event_id, occurred_at, correlation_id, causation_id),
        },
    )


def follow_up(
    ctx: typer.Context,
    from_person: Annotated[str, typer.Argument(help="Who reached out.")],
    to_person: Annotated[str, typer.Argument(help="Whom they reached.")],
    channel: Annotated[
        str,
        typer.Option(help="email | phone | message | video | in_person | social | letter | other"),
    ] = "email",
    replied: Annotated[bool, typer.Option(help="The other side answered.")] = False,
    note: Note = None,
    event_id: EventId = None,
    occurred_at: OccurredAt = None,
    correlation_id: CorrelationId = None,
    causation_id: CausationId = None,
    api_url: ApiUrl = DEFAULT_API,
    workspace: Workspace = DEFAULT_WORKSPACE,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Record that FROM followed up with TO (relationship.followed_up)."""
    record(
        Api.of(ctx, api_url, workspace, token, as_json),
        {
            "type": "relationship.followed_up",
            "from_person": from_person,
            "to_person": to_person,
            "channel": channel,
            "replied": replied,
            "note": note,
            **envelope(event_id, occurred_at, correlation_id, causation_id),
        },
    )


def helped(
    ctx: typer.Context,
    helper: Annotated[str, typer.Argument(help="Who helped.")],
    helped_person: Annotated[str, typer.Argument(metavar="HELPED", help="Who was helped.")],
    what: Annotated[
        str | None, typer.Option(help="Advice, a referral, a favour... (encrypted).")
    ] = None,
    event_id: EventId = None,
    occurred_at: OccurredAt = None,
    correlation_id: CorrelationId = None,
    causation_id: CausationId = None,
    api_url: ApiUrl = DEFAULT_API,
    workspace: Workspace = DEFAULT_WORKSPACE,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Record that HELPER did something for HELPED (relationship.helped)."""
    record(
        Api.of(ctx, api_url, workspace, token, as_json),
        {
            "type": "relationship.helped",
            "helper": helper,
            "helped": helped_person,
            "what": what,
            **envelope(event_id, occurred_at, correlation_id, causation_id),
        },
    )


def rate(
    ctx: typer.Context,
    rater: Annotated[str, typer.Argument(help="Who rates.")],
    ratee: Annotated[str, typer.Argument(help="Whom they rate.")],
    rating: Annotated[int, typer.Argument(help="1 (acquaintance) to 5 (very close).")],
    event_id: EventId = None,
    occurred_at: OccurredAt = None,
    correlation_id: CorrelationId = None,
    causation_id: CausationId = None,
    api_url: ApiUrl = DEFAULT_API,
    workspace: Workspace = DEFAULT_WORKSPACE,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Record how close RATER feels to RATEE (relationship.closeness_rated)."""
    record(
        Api.of(ctx, api_url, workspace, token, as_json),
        {
            "type": "relationship.closeness_rated",
            "rater": rater,
            "ratee": ratee,
            "rating": rating,
            **envelope(event_id, occurred_at, correlation_id, causation_id),
        },
    )


def introduce(
    ctx: typer.Context,
    introducer: Annotated[str, typer.Argument(help="Who made the introduction.")],
    person_a: Annotated[str, typer.Argument(help="One person introduced.")],
    person_b: Annotated[str, typer.Argument(help="The other.")],
    reason: Reason = None,
    introduction_id: Annotated[
        UUID | None,
        typer.Option(help="The double opt-in introduction this completes (`tieline intro`)."),
    ] = None,
    event_id: EventId = None,
    occurred_at: OccurredAt = None,
    correlation_id: CorrelationId = None,
    causation_id: CausationId = None,
    api_url: ApiUrl = DEFAULT_API,
    workspace: Workspace = DEFAULT_WORKSPACE,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Record that INTRODUCER introduced A and B (relationship.introduced)."""
    record(
        Api.of(ctx, api_url, workspace, token, as_json),
        {
            "type": "relationship.introduced",
            "introducer": introducer,
            "person_a": person_a,
            "person_b": person_b,
            "reason": reason,
            "introduction_id": introduction_id,
            **envelope(event_id, occurred_at, correlation_id, causation_id),
        },
    )


def retract(
    ctx: typer.Context,
    retracted_event_id: Annotated[
        UUID, typer.Argument(metavar="EVENT_ID", help="The event recorded by mistake.")
    ],
    reason: Reason = None,
    event_id: EventId = None,
    occurred_at: OccurredAt = None,
    correlation_id: CorrelationId = None,
    causation_id: CausationId = None,
    api_url: ApiUrl = DEFAULT_API,
    workspace: Workspace = DEFAULT_WORKSPACE,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Retract an event recorded by mistake (event.retracted); events are never edited or
    deleted, a retraction removes exactly that event's effect."""
    record(
        Api.of(ctx, api_url, workspace, token, as_json),
        {
            "type": "event.retracted",
            "retracted_event_id": retracted_event_id,
            "reason": reason,
            **envelope(event_id, occurred_at, correlation_id, causation_id),
        },
    )


def merge(
    ctx: typer.Context,
    person: Annotated[str, typer.Argument(help="The duplicate, folded into SURVIVOR.")],
    survivor: Annotated[str, typer.Argument(help="The person who stays.")],
    event_id: EventId = None,
    occurred_at: OccurredAt = None,
    correlation_id: CorrelationId = None,
    causation_id: CausationId = None,
    api_url: ApiUrl = DEFAULT_API,
    workspace: Workspace = DEFAULT_WORKSPACE,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """PERSON is a duplicate of SURVIVOR (person.merged): every read model counts PERSON's
    history as SURVIVOR's. Undo with `tieline retract EVENT_ID` of the merge."""
    record(
        Api.of(ctx, api_url, workspace, token, as_json),
        {
            "type": "person.merged",
            "person_id": person,
            "survivor": survivor,
            **envelope(event_id, occurred_at, correlation_id, causation_id),
        },
    )


# -- double opt-in introductions ----------------------------------------------------------

intro_app = typer.Typer(
    help="Double opt-in introductions: request, each side consents, `tieline introduce "
    "... --introduction-id ID` makes it, then the outcome.",
    no_args_is_help=True,
)


@intro_app.command("request")
def intro_request(
    ctx: typer.Context,
    requester: Annotated[str, typer.Argument(help="Who asks to be introduced.")],
    introducer: Annotated[str, typer.Argument(help="Whom they ask.")],
    target: Annotated[str, typer.Argument(help="Whom they want to meet.")],
    reason: Reason = None,
    introduction_id: Annotated[
        UUID | None,
        typer.Option(help="Id of this introduction (default: a new uuid4, printed)."),
    ] = None,
    event_id: EventId = None,
    occurred_at: OccurredAt = None,
    correlation_id: CorrelationId = None,
    causation_id: CausationId = None,
    api_url: ApiUrl = DEFAULT_API,
    workspace: Workspace = DEFAULT_WORKSPACE,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """REQUESTER asks INTRODUCER to introduce them to TARGET (introduction.requested)."""
    intro_id = introduction_id or uuid4()
    record(
        Api.of(ctx, api_url, workspace, token, as_json),
        {
            "type": "introduction.requested",
            "introduction_id": intro_id,
            "requester": requester,
            "introducer": introducer,
            "target": target,
            "reason": reason,
            **envelope(event_id, occurred_at, correlation_id, causation_id),
        },
        extra={"introduction_id": str(intro_id)},
    )


@intro_app.command("consent")
def intro_consent(
    ctx: typer.Context,
    introduction_id: Annotated[UUID, typer.Argument(help="The requested introduction.")],
    person: Annotated[str, typer.Argument(help="Who answers (requester or target).")],
    consented: Annotated[bool, typer.Option("--yes/--no", help="Said yes or no.")] = True,
    note: Note = None,
    event_id: EventId = None,
    occurred_at: OccurredAt = None,
    correlation_id: CorrelationId = None,
    causation_id: CausationId = None,
    api_url: ApiUrl = DEFAULT_API,
    workspace: Workspace = DEFAULT_WORKSPACE,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """PERSON said yes (or --no) to a requested introduction (introduction.consented)."""
    record(
        Api.of(ctx, api_url, workspace, token, as_json),
        {
            "type": "introduction.consented",
            "introduction_id": introduction_id,
            "person": person,
            "consented": consented,
            "note": note,
            **envelope(event_id, occurred_at, correlation_id, causation_id),
        },
    )


@intro_app.command("outcome")
def intro_outcome(
    ctx: typer.Context,
    introduction_id: Annotated[UUID, typer.Argument(help="The introduction that was made.")],
    outcome: Annotated[str, typer.Argument(help="met | talking | no_response | declined")],
    note: Note = None,
    event_id: EventId = None,
    occurred_at: OccurredAt = None,
    correlation_id: CorrelationId = None,
    causation_id: CausationId = None,
    api_url: ApiUrl = DEFAULT_API,
    workspace: Workspace = DEFAULT_WORKSPACE,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """What came of an introduction that was made (introduction.outcome)."""
    record(
        Api.of(ctx, api_url, workspace, token, as_json),
        {
            "type": "introduction.outcome",
            "introduction_id": introduction_id,
            "outcome": outcome,
            "note": note,
            **envelope(event_id, occurred_at, correlation_id, causation_id),
        },
    )


def forget(
    ctx: typer.Context,
    person: Annotated[str, typer.Argument(help="The person to erase.")],
    api_url: ApiUrl = DEFAULT_API,
    workspace: Workspace = DEFAULT_WORKSPACE,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Erase a person (admin token; person.forgotten): destroy their key, purge the read
    models, print the erasure report. Exit code 1 unless the report is clean."""
    api = Api.of(ctx, api_url, workspace, token, as_json)
    data = api.post(f"/people/{person}/forget", None, unsure="; it may have happened: run again")
    if as_json:
        emit_json(data)
    else:
        out(f"forgot {person}: {'clean' if data.get('clean') else 'NOT clean'}")
        for key, value in data.items():
            if key not in ("person_id", "clean"):
                out(f"  {key}: {value}")
    if not data.get("clean"):
        raise typer.Exit(1)


#: (command name, function): every event command, for :func:`register` and the tests.
COMMANDS: tuple[tuple[str, Any], ...] = (
    ("add-person", add_person),
    ("update-person", update_person),
    ("met", met),
    ("follow-up", follow_up),
    ("helped", helped),
    ("rate", rate),
    ("introduce", introduce),
    ("retract", retract),
    ("merge", merge),
    ("forget", forget),
)


def register(app: typer.Typer) -> None:
    """Add the event commands and ``intro`` to ``app``."""
    for name, fn in COMMANDS:
        app.command(name)(fn)
    app.add_typer(intro_app, name="intro")
