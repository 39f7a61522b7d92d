"""The published contract documents are generated, never hand-edited: the AsyncAPI document
of the event subjects (docs/asyncapi.json) equals what the registry and the subject layout
give, and it describes every event type and version on the subjects the services use."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime

import pytest
from tieline.events_schema.registry import REGISTRY
from tieline.plumbing.asyncapi import DOC_PATH, asyncapi_document, document_text
from tieline.plumbing.subjects import event_subject

STALE_HINT = "docs/asyncapi.json is stale: run `python -m tieline.plumbing.asyncapi`"


def test_committed_asyncapi_document_equals_the_generated_one() -> None:
    assert DOC_PATH.read_text() == document_text(), STALE_HINT


def test_asyncapi_names_every_event_type_and_version() -> None:
    doc = asyncapi_document()
    assert doc["asyncapi"] == "3.0.0"
    expected = {f"{t}.v{v}" for t, v, _ in REGISTRY.versions()}
    assert set(doc["components"]["messages"]) == expected
    assert set(doc["components"]["schemas"]) == expected
    assert set(doc["channels"]) == set(REGISTRY.classes)
    for t in REGISTRY.classes:
        op = doc["operations"][f"receive.{t}"]
        assert op["action"] == "receive" and op["channel"] == {"$ref": f"#/channels/{t}"}


def _concrete(address: str) -> re.Pattern[str]:
    """A channel address as a regex: each {parameter} one subject token."""
    return re.compile(re.sub(r"\\\{[a-z_]+\\\}", "[^.]+", re.escape(address)) + "$")


@pytest.mark.parametrize("event_type", sorted(REGISTRY.classes))
def test_channel_address_matches_the_subject_events_are_published_on(event_type: str) -> None:
    """The documented address (with its parameters) matches what ``event_subject`` gives a
    real event of that type, for another prefix too."""
    cls = REGISTRY.classes[event_type]
    fields = {
        "event_id": uuid.uuid4(),
        "schema_version": cls.version,
        "occurred_at": datetime(2026, 1, 1, tzinfo=UTC),
        "recorded_at": datetime(2026, 1, 1, tzinfo=UTC),
        "workspace_id": "acme",
        "recorded_by": "token:t",
        "person_id": "ada",
    }
    event = cls.model_construct(**{k: v for k, v in fields.items() if k in cls.model_fields})
    for prefix in ("tl", "t0abc"):
        channel = asyncapi_document(prefix)["channels"][event_type]
        subject = event_subject(prefix, event)
        assert _concrete(channel["address"]).match(subject), (channel["address"], subject)
        params = set(re.findall(r"\{([a-z_]+)\}", channel["address"]))
        assert params == set(channel["parameters"])


def test_served_document_uses_the_deployment_prefix_and_stream() -> None:
    doc = asyncapi_document("t0abc", "T_ABC")
    assert doc["channels"]["relationship.met"]["address"] == "t0abc.ev.{workspace}.relationship.met"
    assert "T_ABC" in doc["info"]["description"]
    json.dumps(doc)  # serialisable as served
