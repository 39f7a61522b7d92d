"""NATS subject layout. Every subject carries the workspace, so permissions and consumers can be
scoped per workspace, and a wildcard can never cross from one workspace into another's data.

- events on the log:   ``{prefix}.ev.{workspace}.{type}``  (``type`` like ``relationship.met``);
  person events add the person: ``{prefix}.ev.{workspace}.person.added.{person_id}`` so the
  write side can check that a person exists with one direct get on the stream.
- commands (request/reply): ``{prefix}.cmd.{workspace}.{service}.{action}``
- dead letters:         ``{prefix}.dlq.{projection}``
"""

from __future__ import annotations

from tieline.events_schema.models import Event


def is_person_event(event_type: str) -> bool:
    """Person events carry the person in their subject (one direct get finds a person)."""
    return event_type.startswith("person.")


def event_subject(prefix: str, event: Event) -> str:
    """The subject an event is published on."""
    base = f"{prefix}.ev.{event.workspace_id}.{event.type}"
    if is_person_event(event.type):
        return f"{base}.{getattr(event, 'person_id')}"  # noqa: B009  (person events carry it)
    return base


def msg_id(event: Event) -> str:
    """The ``Nats-Msg-Id`` an event is published with: its workspace and its id. Ids are unique
    per workspace, so JetStream's dedupe window must not drop another workspace's event that
    happens to use the same id (a workspace id cannot contain ``/``: it is a subject token)."""
    return f"{event.workspace_id}/{event.event_id}"


def event_subject_template(prefix: str, event_type: str) -> str:
    """The subjects of ``event_type`` with ``{workspace}`` (and ``{person_id}``) left as
    parameters: what :func:`event_subject` fills in, as documentation (AsyncAPI) writes it."""
    base = f"{prefix}.ev.{{workspace}}.{event_type}"
    return f"{base}.{{person_id}}" if is_person_event(event_type) else base


def person_added_subject(prefix: str, workspace_id: str, person_id: str) -> str:
    return f"{prefix}.ev.{workspace_id}.person.added.{person_id}"


def command_subject(prefix: str, workspace_id: str, service: str, action: str) -> str:
    return f"{prefix}.cmd.{workspace_id}.{service}.{action}"


def command_wildcard(prefix: str, service: str) -> str:
    """What a service subscribes to: its commands for every workspace."""
    return f"{prefix}.cmd.*.{service}.*"


def dlq_subject(prefix: str, projection: str) -> str:
    return f"{prefix}.dlq.{projection}"


def workspace_of_subject(prefix: str, subject: str) -> str | None:
    """The workspace token of an event subject, or None when the subject is not one."""
    parts = subject.split(".")
    if len(parts) < 5 or parts[0] != prefix or parts[1] != "ev":
        return None
    return parts[2]
