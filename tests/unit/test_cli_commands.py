"""The CLI's commands against the contracts they mirror: every field of every event a client
may set has an option (or argument) on its command, and every command that talks to the API
takes the same connection options and ``--json``."""

from __future__ import annotations

import ast
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tieline.events_schema import models
from tieline.services.cli import calibrate, events, reads, stream

#: Fields the write side sets itself: a client never sends them.
SERVER_SET = {"type", "schema_version", "recorded_at", "workspace_id", "recorded_by"}

#: command function -> (its event, {event field: parameter name} where they differ)
EVENT_COMMANDS: list[tuple[Callable[..., Any], type[models.Event], dict[str, str]]] = [
    (events.add_person, models.PersonAdded, {"display_name": "name"}),
    (events.update_person, models.PersonUpdated, {"display_name": "name"}),
    (events.met, models.RelationshipMet, {"participants": "people", "duration_minutes": "minutes"}),
    (events.follow_up, models.RelationshipFollowedUp, {}),
    (events.helped, models.RelationshipHelped, {"helped": "helped_person"}),
    (events.rate, models.RelationshipClosenessRated, {}),
    (events.introduce, models.RelationshipIntroduced, {}),
    (events.retract, models.EventRetracted, {}),
    (events.intro_request, models.IntroductionRequested, {}),
    (events.intro_consent, models.IntroductionConsented, {}),
    (events.intro_outcome, models.IntroductionOutcome, {}),
    (events.forget, models.PersonForgotten, {"person_id": "person"}),
    (events.merge, models.PersonMerged, {"person_id": "person"}),
    (calibrate.calibrate_cmd, models.WorkspaceModelCalibrated, {}),
]
#: Envelope fields an endpoint does not accept (POST /people takes a person, not an event;
#: forget is a route of its own that records the event itself; calibrate computes its event).
NOT_ACCEPTED = {
    events.add_person: {"correlation_id", "causation_id"},
    events.forget: {"event_id", "occurred_at", "correlation_id", "causation_id"},
    # An outcome's two people are filled in by the write side from the request.
    events.intro_outcome: {"requester", "target"},
    # A retraction's people likewise, from the retracted event.
    events.retract: {"about"},
    # ``calibrate --apply`` records what the calibration found: every field is its result.
    calibrate.calibrate_cmd: set(models.WorkspaceModelCalibrated.model_fields),
}


def params(fn: Callable[..., Any]) -> set[str]:
    return set(inspect.signature(fn).parameters)


@pytest.mark.parametrize(
    ("fn", "event", "renamed"), EVENT_COMMANDS, ids=lambda x: getattr(x, "__name__", "")
)
def test_every_event_field_has_an_option(
    fn: Callable[..., Any], event: type[models.Event], renamed: dict[str, str]
) -> None:
    fields = set(event.model_fields) - SERVER_SET - NOT_ACCEPTED.get(fn, set())
    missing = {f for f in fields if renamed.get(f, f) not in params(fn)}
    assert not missing, f"{fn.__name__} has no option for {sorted(missing)}"


def test_every_event_type_has_a_command() -> None:
    covered = {event for _, event, _ in EVENT_COMMANDS}
    assert covered == set(models.EVENT_CLASSES)


API_COMMANDS = [fn for _, fn in events.COMMANDS + reads.COMMANDS] + [
    events.intro_request,
    events.intro_consent,
    events.intro_outcome,
    stream.stream,
]


@pytest.mark.parametrize("fn", API_COMMANDS, ids=lambda f: f.__name__)
def test_every_api_command_takes_the_connection_options_and_json(fn: Callable[..., Any]) -> None:
    assert {"ctx", "api_url", "workspace", "token", "as_json"} <= params(fn)


CLI = Path(events.__file__).parent


def test_main_is_short_and_every_function_fits_on_a_screen() -> None:
    assert len((CLI / "main.py").read_text().splitlines()) < 600
    long = []
    for path in sorted(CLI.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length >= 60:
                    long.append(f"{path.name}:{node.name} ({length} lines)")
    assert not long, long
