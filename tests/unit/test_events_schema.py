"""Unit tests of the event schema: golden fixtures, generated JSON Schema, upcasting, decode
errors and the model rules. Plain pytest, no servers."""

from __future__ import annotations

import json
import re
import string
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args

import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tieline import events_schema
from tieline.events_schema.generate import SCHEMA_DIR, schema_files
from tieline.events_schema.models import (
    EVENT_CLASSES,
    Depth,
    Event,
    Mode,
    PersonAdded,
    PersonUpdated,
    RelationshipClosenessRated,
    RelationshipFollowedUp,
    RelationshipHelped,
    RelationshipIntroduced,
    RelationshipMet,
)
from tieline.events_schema.registry import (
    REGISTRY,
    EventDecodeError,
    EventRegistry,
    InvalidEvent,
    InvalidJson,
    UnknownEventType,
    UnsupportedSchemaVersion,
)

GOLDEN_DIR = Path(events_schema.__file__).parent / "golden"
GOLDEN_NAME = re.compile(r"^(?P<type>[a-z_.]+)\.v(?P<version>[1-9][0-9]*)\.json$")
DATETIME_FIELDS = ("occurred_at", "recorded_at")
REGISTRY_VERSIONS = [(t, v, cls) for t, v, cls in REGISTRY.versions()]


def golden_path(event_type: str, version: int) -> Path:
    return GOLDEN_DIR / f"{event_type}.v{version}.json"


def golden_dict(event_type: str, version: int = 1) -> dict[str, Any]:
    obj = json.loads(golden_path(event_type, version).read_text())
    assert isinstance(obj, dict)
    return obj


def golden_bytes(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj).encode()


def normalised(obj: dict[str, Any]) -> dict[str, Any]:
    """The JSON object with its datetimes parsed, so that ``Z`` and ``+00:00`` (or a different
    number of fraction digits) compare by the instant and offset they denote, not by spelling.
    Every other value is compared exactly, and the key sets must match."""
    out = dict(obj)
    for name in DATETIME_FIELDS:
        if name in out:
            parsed = datetime.fromisoformat(out[name])
            assert parsed.tzinfo is not None, f"{name} in a fixture must carry a UTC offset"
            out[name] = (parsed, parsed.utcoffset())
    return out


def envelope(**fields: Any) -> dict[str, Any]:
    """Envelope fields for building events directly in Python."""
    base: dict[str, Any] = {
        "event_id": uuid.UUID("0b6d1f7e-5a51-4f8e-9a4b-1c2d3e4f5aff"),
        "schema_version": 1,
        "occurred_at": datetime(2026, 3, 14, 18, 30, tzinfo=UTC),
        "recorded_at": datetime(2026, 3, 14, 21, 2, 11, tzinfo=UTC),
        "workspace_id": "acme",
        "recorded_by": "token:alice",
    }
    base.update(fields)
    return base


# -- 1. golden fixtures -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event_type", "version", "cls"),
    REGISTRY_VERSIONS,
    ids=[f"{t}.v{v}" for t, v, _ in REGISTRY_VERSIONS],
)
def test_every_golden_fixture_decodes_and_reencodes_to_the_same_json(
    event_type: str, version: int, cls: type[Event]
) -> None:
    path = golden_path(event_type, version)
    assert path.is_file(), (
        f"missing golden fixture {path.relative_to(GOLDEN_DIR.parent.parent)} for "
        f"{event_type} v{version}: add one (a complete, realistic event of that version)"
    )
    raw = path.read_bytes()
    fixture = json.loads(raw)

    event = REGISTRY.decode(raw)

    # A released older version decodes as the current model, upcast; the current one as is.
    current = REGISTRY.classes[event_type]
    assert type(event) is current and isinstance(event, cls)
    assert event.type == event_type
    assert event.schema_version == current.version
    reencoded = json.loads(REGISTRY.encode(event))
    expected = REGISTRY.upcast(event_type, version, fixture)
    assert normalised(reencoded) == normalised(expected)
    # And the canonical bytes decode to the very same event.
    assert REGISTRY.decode(REGISTRY.encode(event)) == event


def test_every_golden_fixture_is_a_known_type_and_version() -> None:
    known = {(t, v) for t, v, _ in REGISTRY_VERSIONS}
    orphans = []
    for path in sorted(GOLDEN_DIR.glob("*.json")):
        m = GOLDEN_NAME.match(path.name)
        if m is None or (m["type"], int(m["version"])) not in known:
            orphans.append(path.name)
    assert not orphans, f"golden fixtures for no registered (type, version): {orphans}"


def test_golden_fixtures_declare_the_type_and_version_of_their_file_name() -> None:
    for path in sorted(GOLDEN_DIR.glob("*.json")):
        m = GOLDEN_NAME.match(path.name)
        assert m is not None, path.name
        obj = json.loads(path.read_text())
        assert obj["type"] == m["type"], path.name
        assert obj["schema_version"] == int(m["version"]), path.name


def test_there_is_a_registered_class_for_every_event_class() -> None:
    assert set(REGISTRY.classes.values()) == set(EVENT_CLASSES)


# -- 2. committed JSON Schema files are not stale ------------------------------------------


STALE_HINT = "events_schema/jsonschema/ is stale: run `python -m tieline.events_schema.generate`"


def _committed_schema_files() -> dict[str, str]:
    return {
        str(p.relative_to(SCHEMA_DIR)): p.read_text()
        for p in sorted(SCHEMA_DIR.rglob("*"))
        if p.is_file()
    }


def test_committed_json_schema_files_equal_the_generated_ones() -> None:
    expected = schema_files()
    committed = _committed_schema_files()
    assert sorted(committed) == sorted(expected), f"{STALE_HINT} (file names differ)"
    stale = [name for name in expected if committed[name] != expected[name]]
    assert not stale, f"{STALE_HINT} (stale: {stale})"


def test_generated_schema_files_name_every_registered_type_and_version() -> None:
    files = schema_files()
    events = {n.removeprefix("events/") for n in files if n.startswith("events/")}
    commands = {n.removeprefix("commands/") for n in files if n.startswith("commands/")}
    assert sorted(events) == sorted(f"{t}.v{v}.json" for t, v, _ in REGISTRY_VERSIONS)
    assert commands == {f"{t}.v{cls.version}.json" for t, cls in REGISTRY.classes.items()}
    assert len(files) == len(events) + len(commands)
    for name, text in files.items():
        schema = json.loads(text)
        kind, file = name.split("/")
        event_type, version = file.removesuffix(".json").rsplit(".v", 1)
        assert schema["x-schema-version"] == int(version)
        prefix = "https://tieline.dev/schemas/" + ("commands/" if kind == "commands" else "")
        assert schema["$id"] == f"{prefix}{event_type}/v{version}.json"
        assert schema["properties"]["type"]["const"] == event_type
        assert schema["additionalProperties"] is False


def _schema(kind: str, event_type: str, version: int | None = None) -> dict[str, Any]:
    """A generated schema (``version``: the current one when left out)."""
    version = version or REGISTRY.current_version(event_type)
    schema = json.loads(schema_files()[f"{kind}/{event_type}.v{version}.json"])
    assert isinstance(schema, dict)
    return schema


@pytest.mark.parametrize("event_type", sorted(REGISTRY.classes))
def test_command_schema_is_what_the_write_side_accepts_from_a_client(event_type: str) -> None:
    """A command leaves out the fields tieline sets (the write side refuses them from a
    client) and needs only ``type`` and the event's own fields; the stored event needs the
    whole envelope."""
    command, event = _schema("commands", event_type), _schema("events", event_type)
    assert not {"recorded_at", "recorded_by"} & set(command["properties"])
    assert {"recorded_at", "recorded_by"} <= set(event["required"])
    assert command["required"][0] == "type"
    envelope_fields = {"event_id", "schema_version", "occurred_at", "workspace_id"}
    assert not envelope_fields & set(command["required"])
    assert envelope_fields <= set(event["required"])
    own = set(event["required"]) - envelope_fields - {"recorded_at", "recorded_by"}
    assert set(command["required"]) == own | {"type"}


@pytest.mark.parametrize(
    ("event_type", "version", "cls"),
    REGISTRY_VERSIONS,
    ids=[f"{t}.v{v}" for t, v, _ in REGISTRY_VERSIONS],
)
def test_golden_events_fit_the_event_schema_and_not_the_command_schema(
    event_type: str, version: int, cls: type[Event]
) -> None:
    """A stored event (golden fixture) is valid against its event schema; sent as a command
    it is refused for the server-set fields, and valid once they are taken out."""
    import jsonschema_rs

    stored = golden_dict(event_type, version)
    assert jsonschema_rs.validator_for(_schema("events", event_type, version)).is_valid(stored)
    if version < REGISTRY.current_version(event_type):
        return  # commands are written in the current version only
    command = jsonschema_rs.validator_for(_schema("commands", event_type, version))
    assert not command.is_valid(stored)
    sent = {k: v for k, v in stored.items() if k not in ("recorded_at", "recorded_by")}
    assert command.is_valid(sent)
    assert command.is_valid({"type": event_type, **{k: sent[k] for k in _own(event_type, sent)}})


def _own(event_type: str, obj: dict[str, Any]) -> list[str]:
    """The fields of ``obj`` that are the event's own (not its envelope)."""
    envelope_fields = set(Event.model_fields)
    return [k for k in obj if k not in envelope_fields]


def test_command_schema_refuses_ciphertext_and_overlong_plaintext() -> None:
    import jsonschema_rs

    command = jsonschema_rs.validator_for(_schema("commands", "person.added"))
    base = {"type": "person.added", "person_id": "ada", "display_name": "Ada"}
    assert command.is_valid(base)
    assert not command.is_valid({**base, "display_name": "enc:v1:AAAA"})
    assert not command.is_valid({**base, "notes": "x" * 2001})
    assert command.is_valid({**base, "notes": "x" * 2000})
    assert not command.is_valid({**base, "recorded_by": "token:me"})


# -- 3. personal data is marked in the schema ----------------------------------------------

PERSONAL_FIELDS = {
    "person.added": ["display_name", "email", "phone", "organization", "title", "notes"],
    "person.updated": ["display_name", "email", "phone", "organization", "title", "notes"],
    "relationship.met": ["context", "where"],
    "relationship.followed_up": ["note"],
    "relationship.introduced": ["reason"],
    "relationship.helped": ["what"],
    "event.retracted": ["reason"],
}
NOT_PERSONAL_FIELDS = {
    "person.added": ["person_id", "event_id", "workspace_id", "recorded_by", "occurred_at"],
    "person.updated": ["person_id", "event_id"],
    "relationship.met": ["participants", "initiated_by", "event_id", "depth", "duration_minutes"],
    "relationship.followed_up": ["from_person", "to_person", "event_id", "channel"],
    "relationship.introduced": ["introducer", "person_a", "person_b", "event_id"],
    "relationship.helped": ["helper", "helped", "event_id"],
    "relationship.closeness_rated": ["rater", "ratee", "rating", "event_id"],
    "event.retracted": ["retracted_event_id", "event_id"],
}


def _is_personal(prop: dict[str, Any]) -> bool:
    """Whether a property is marked personal: on the property itself, or (for an optional
    field) on every non-null branch of its ``anyOf``."""
    if prop.get("x-personal-data") is True:
        return True
    branches = [b for b in prop.get("anyOf", []) if b.get("type") != "null"]
    return bool(branches) and all(b.get("x-personal-data") is True for b in branches)


def _properties(event_type: str) -> dict[str, Any]:
    schema = json.loads(schema_files()[f"events/{event_type}.v1.json"])
    props = schema["properties"]
    assert isinstance(props, dict)
    return props


@pytest.mark.parametrize(
    ("event_type", "field"),
    [(t, f) for t, fs in PERSONAL_FIELDS.items() for f in fs],
)
def test_personal_data_fields_carry_x_personal_data_in_the_schema(
    event_type: str, field: str
) -> None:
    props = _properties(event_type)
    assert field in props, f"{event_type} has no field {field}"
    assert _is_personal(props[field]), f"{event_type}.{field} lacks x-personal-data: true"


@pytest.mark.parametrize(
    ("event_type", "field"),
    [(t, f) for t, fs in NOT_PERSONAL_FIELDS.items() for f in fs],
)
def test_ids_and_envelope_fields_are_not_marked_personal(event_type: str, field: str) -> None:
    props = _properties(event_type)
    assert field in props, f"{event_type} has no field {field}"
    assert not _is_personal(props[field])
    assert "x-personal-data" not in json.dumps(props[field])


ID_FIELDS = {
    "event_id",
    "workspace_id",
    "correlation_id",
    "causation_id",
    "person_id",
    "participants",
    "initiated_by",
    "from_person",
    "to_person",
    "introducer",
    "person_a",
    "person_b",
    "helper",
    "helped",
    "rater",
    "ratee",
    "retracted_event_id",
    "type",
    "schema_version",
}


def test_no_id_field_of_any_event_is_marked_personal() -> None:
    marked = []
    for name, text in schema_files().items():
        for field, prop in json.loads(text)["properties"].items():
            if field in ID_FIELDS and "x-personal-data" in json.dumps(prop):
                marked.append(f"{name}:{field}")
    assert not marked, f"ids must stay readable after erasure, but are marked personal: {marked}"


# -- 4. upcasting --------------------------------------------------------------------------


class RelationshipHelpedV2(RelationshipHelped):
    """A hypothetical v2 of relationship.helped with a new required field."""

    version: ClassVar[int] = 2
    kind: Literal["advice", "referral", "favour", "other"]


def _helped_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "kind": "other"}


def _registry_with_helped_v2(*, upcaster: bool) -> EventRegistry:
    registry = EventRegistry()
    for cls in EVENT_CLASSES:
        registry.register(cls)
    registry.register(RelationshipHelpedV2)
    registry.historical[("relationship.helped", 1)] = RelationshipHelped
    if upcaster:
        registry.register_upcaster("relationship.helped", 1, _helped_v1_to_v2)
    return registry


def test_a_v1_payload_is_upcast_to_the_current_v2_model() -> None:
    registry = _registry_with_helped_v2(upcaster=True)
    v1 = golden_dict("relationship.helped")

    event = registry.decode(golden_bytes(v1))

    assert type(event) is RelationshipHelpedV2
    assert event.schema_version == 2
    assert event.kind == "other"
    assert event.helper == v1["helper"]
    assert event.what == v1["what"]
    assert json.loads(registry.encode(event))["schema_version"] == 2


def test_a_v1_object_is_upcast_by_decode_obj_too() -> None:
    registry = _registry_with_helped_v2(upcaster=True)
    event = registry.decode_obj(golden_dict("relationship.helped"))
    assert type(event) is RelationshipHelpedV2
    assert (event.schema_version, event.kind) == (2, "other")


def test_a_v2_payload_decodes_directly_to_the_v2_model() -> None:
    registry = _registry_with_helped_v2(upcaster=True)
    v2 = {**golden_dict("relationship.helped"), "schema_version": 2, "kind": "advice"}

    event = registry.decode(golden_bytes(v2))

    assert type(event) is RelationshipHelpedV2
    assert (event.schema_version, event.kind) == (2, "advice")
    assert normalised(json.loads(registry.encode(event))) == normalised(v2)


def test_a_payload_newer_than_the_code_raises_unsupported_schema_version() -> None:
    registry = _registry_with_helped_v2(upcaster=True)
    v3 = {**golden_dict("relationship.helped"), "schema_version": 3, "kind": "advice"}

    with pytest.raises(UnsupportedSchemaVersion) as info:
        registry.decode(golden_bytes(v3))

    assert info.value.reason == "unsupported_schema_version"
    assert info.value.errors[0]["loc"] == ["schema_version"]


def test_a_v1_payload_without_an_upcaster_raises_unsupported_schema_version() -> None:
    registry = _registry_with_helped_v2(upcaster=False)

    with pytest.raises(UnsupportedSchemaVersion) as info:
        registry.decode(golden_bytes(golden_dict("relationship.helped")))

    assert info.value.reason == "unsupported_schema_version"
    assert "no upcaster" in str(info.value)


def test_a_v1_payload_that_already_fits_v2_is_still_upcast_not_taken_as_is() -> None:
    # A v1 payload that happens to carry v2's field still goes through the upcaster, because
    # its schema_version says v1.
    registry = _registry_with_helped_v2(upcaster=True)
    v1 = {**golden_dict("relationship.helped"), "kind": "advice"}

    event = registry.decode(golden_bytes(v1))

    assert (event.schema_version, event.kind) == (2, "other")


def test_private_registry_leaves_the_global_registry_alone() -> None:
    _registry_with_helped_v2(upcaster=True)
    assert REGISTRY.classes["relationship.helped"] is RelationshipHelped
    assert REGISTRY.current_version("relationship.helped") == 1


def test_schema_files_describe_historical_and_current_versions() -> None:
    files = schema_files(_registry_with_helped_v2(upcaster=True))
    assert {"events/relationship.helped.v1.json", "events/relationship.helped.v2.json"} <= set(
        files
    )
    assert "commands/relationship.helped.v2.json" in files
    assert "commands/relationship.helped.v1.json" not in files
    v1 = json.loads(files["events/relationship.helped.v1.json"])
    v2 = json.loads(files["events/relationship.helped.v2.json"])
    assert "kind" not in v1["properties"]
    assert "kind" in v2["required"]
    assert v2["x-schema-version"] == 2


# -- 5. decode errors name the problem -----------------------------------------------------


@pytest.mark.parametrize("raw", [b"{not json", b"", b"\xff\xfe{", b'{"type": "person.added"'])
def test_invalid_json_raises_invalid_json(raw: bytes) -> None:
    with pytest.raises(InvalidJson) as info:
        REGISTRY.decode(raw)
    assert info.value.reason == "invalid_json"


@pytest.mark.parametrize("raw", [b"[]", b'[{"type": "person.added"}]', b'"x"', b"1", b"null"])
def test_json_that_is_not_an_object_raises_invalid_json(raw: bytes) -> None:
    with pytest.raises(InvalidJson) as info:
        REGISTRY.decode(raw)
    assert info.value.reason == "invalid_json"
    assert "JSON object" in str(info.value)


@pytest.mark.parametrize("bad_type", ["relationship.hugged", None, 7])
def test_unknown_type_raises_unknown_event_type_listing_the_known_types(bad_type: Any) -> None:
    obj = golden_dict("person.added")
    if bad_type is None:
        del obj["type"]
    else:
        obj["type"] = bad_type

    with pytest.raises(UnknownEventType) as info:
        REGISTRY.decode(golden_bytes(obj))

    assert info.value.reason == "unknown_type"
    assert info.value.errors[0]["loc"] == ["type"]
    for known in REGISTRY.classes:
        assert known in str(info.value)


def test_missing_required_field_raises_invalid_event_naming_the_field() -> None:
    obj = golden_dict("person.added")
    del obj["person_id"]

    with pytest.raises(InvalidEvent) as info:
        REGISTRY.decode(golden_bytes(obj))

    assert info.value.reason == "invalid_event"
    assert info.value.errors[0]["loc"] == ["person_id"]
    assert str(info.value).startswith("person_id:")


def test_extra_field_raises_invalid_event_naming_it() -> None:
    obj = {**golden_dict("relationship.met"), "mood": "cheerful"}

    with pytest.raises(InvalidEvent) as info:
        REGISTRY.decode(golden_bytes(obj))

    assert info.value.errors[0]["loc"] == ["mood"]
    assert info.value.errors[0]["type"] == "extra_forbidden"
    assert "mood" in str(info.value)


def test_naive_occurred_at_raises_invalid_event_naming_occurred_at() -> None:
    obj = {**golden_dict("relationship.met"), "occurred_at": "2026-03-14T18:30:00"}

    with pytest.raises(InvalidEvent) as info:
        REGISTRY.decode(golden_bytes(obj))

    assert [e["loc"] for e in info.value.errors] == [["occurred_at"]]
    assert str(info.value).startswith("occurred_at:")


def test_invalid_nested_value_names_its_position() -> None:
    obj = {**golden_dict("relationship.met"), "participants": ["ada", "not a valid id"]}

    with pytest.raises(InvalidEvent) as info:
        REGISTRY.decode(golden_bytes(obj))

    assert info.value.errors[0]["loc"] == ["participants", "1"]


@pytest.mark.parametrize("version", [0, -1])
def test_non_positive_schema_version_is_an_invalid_event(version: int) -> None:
    obj = {**golden_dict("person.added"), "schema_version": version}
    with pytest.raises(InvalidEvent) as info:
        REGISTRY.decode(golden_bytes(obj))
    assert info.value.errors[0]["loc"] == ["schema_version"]


def test_decode_errors_are_value_errors_with_a_reason() -> None:
    for exc in (InvalidJson, UnknownEventType, UnsupportedSchemaVersion, InvalidEvent):
        assert issubclass(exc, EventDecodeError)
        assert issubclass(exc, ValueError)
    assert (
        len(
            {
                InvalidJson.reason,
                UnknownEventType.reason,
                UnsupportedSchemaVersion.reason,
                InvalidEvent.reason,
            }
        )
        == 4
    )


@pytest.mark.parametrize("version", [True, 1.0, "1"], ids=["true", "float", "string"])
def test_decode_rejects_a_non_integer_schema_version_like_decode_obj(version: Any) -> None:
    obj = {**golden_dict("person.added"), "schema_version": version}
    with pytest.raises(InvalidEvent):
        REGISTRY.decode_obj(obj)
    with pytest.raises(InvalidEvent):
        REGISTRY.decode(golden_bytes(obj))


# -- 6. model rules ------------------------------------------------------------------------


@pytest.mark.parametrize("event_type", sorted(REGISTRY.classes))
def test_events_are_frozen(event_type: str) -> None:
    event = REGISTRY.decode(golden_path(event_type, 1).read_bytes())
    before = event.model_dump()
    with pytest.raises(pydantic.ValidationError):
        event.recorded_by = "token:mallory"  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        event.schema_version = 2  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        event.type = "person.added"  # type: ignore[misc]
    assert event.model_dump() == before


def _met(participants: list[str], **fields: Any) -> RelationshipMet:
    return RelationshipMet(**envelope(participants=participants, depth="brief_chat", **fields))


@pytest.mark.parametrize(
    "participants",
    [["ada"], [], ["ada", "ada"], ["ada", "grace", "ada"]],
    ids=["one", "none", "same-twice", "duplicate-among-three"],
)
def test_met_needs_at_least_two_distinct_participants(participants: list[str]) -> None:
    with pytest.raises(pydantic.ValidationError):
        _met(participants)


def test_met_initiated_by_must_be_a_participant() -> None:
    with pytest.raises(pydantic.ValidationError, match="initiated_by"):
        _met(["ada", "grace"], initiated_by="linus")
    assert _met(["ada", "grace"], initiated_by="grace").initiated_by == "grace"
    assert _met(["ada", "grace"]).initiated_by is None


@pytest.mark.parametrize("minutes", [-1, 24 * 60 + 1])
def test_met_duration_is_between_zero_and_a_day(minutes: int) -> None:
    with pytest.raises(pydantic.ValidationError):
        _met(["ada", "grace"], duration_minutes=minutes)
    assert _met(["ada", "grace"], duration_minutes=24 * 60).duration_minutes == 24 * 60


def _introduced(introducer: str, a: str, b: str) -> RelationshipIntroduced:
    return RelationshipIntroduced(**envelope(introducer=introducer, person_a=a, person_b=b))


@pytest.mark.parametrize(
    ("introducer", "a", "b"),
    [
        ("ada", "grace", "grace"),
        ("ada", "ada", "grace"),
        ("ada", "grace", "ada"),
        ("ada", "ada", "ada"),
    ],
    ids=["a-equals-b", "introducer-is-a", "introducer-is-b", "all-the-same"],
)
def test_introduced_rejects_self_introduction_and_introducer_among_the_introduced(
    introducer: str, a: str, b: str
) -> None:
    with pytest.raises(pydantic.ValidationError):
        _introduced(introducer, a, b)


@pytest.mark.parametrize(
    ("cls", "fields"),
    [
        (RelationshipFollowedUp, {"from_person": "ada", "to_person": "ada", "channel": "email"}),
        (RelationshipHelped, {"helper": "ada", "helped": "ada"}),
        (RelationshipClosenessRated, {"rater": "ada", "ratee": "ada", "rating": 3}),
    ],
    ids=["followed_up", "helped", "closeness_rated"],
)
def test_two_person_events_reject_self_reference(cls: type[Event], fields: dict[str, Any]) -> None:
    with pytest.raises(pydantic.ValidationError, match="must differ"):
        cls(**envelope(**fields))


@pytest.mark.parametrize("rating", [0, 6, -1])
def test_closeness_rating_outside_one_to_five_is_rejected(rating: int) -> None:
    with pytest.raises(pydantic.ValidationError):
        RelationshipClosenessRated(**envelope(rater="ada", ratee="grace", rating=rating))


@pytest.mark.parametrize("rating", [1, 2, 3, 4, 5])
def test_closeness_rating_one_to_five_is_accepted(rating: int) -> None:
    event = RelationshipClosenessRated(**envelope(rater="ada", ratee="grace", rating=rating))
    assert event.rating == rating


def test_person_updated_must_change_at_least_one_field() -> None:
    with pytest.raises(pydantic.ValidationError, match="at least one field"):
        PersonUpdated(**envelope(person_id="ada"))
    assert PersonUpdated(**envelope(person_id="ada", phone="+1")).phone == "+1"


@pytest.mark.parametrize("name", ["", "x" * 201])
def test_person_added_display_name_is_one_to_200_characters(name: str) -> None:
    with pytest.raises(pydantic.ValidationError, match="display_name"):
        PersonAdded(**envelope(person_id="ada", display_name=name))
    assert PersonAdded(**envelope(person_id="ada", display_name="x" * 200)).display_name


def test_person_added_rejects_a_whitespace_only_display_name() -> None:
    with pytest.raises(pydantic.ValidationError):
        PersonAdded(**envelope(person_id="ada", display_name="   "))


def test_pairs_of_a_three_person_meeting_are_the_three_sorted_pairs() -> None:
    event = _met(["linus", "ada", "grace"])
    pairs = event.pairs()
    assert sorted(pairs) == [("ada", "grace"), ("ada", "linus"), ("grace", "linus")]
    assert len(pairs) == 3
    assert all(a < b for a, b in pairs)
    assert event.people() == ("linus", "ada", "grace")


def test_pairs_of_an_introduction_are_the_three_sorted_pairs() -> None:
    event = _introduced("linus", "grace", "ada")
    pairs = event.pairs()
    assert sorted(pairs) == [("ada", "grace"), ("ada", "linus"), ("grace", "linus")]
    assert len(pairs) == 3
    assert all(a < b for a, b in pairs)


def test_pairs_of_two_person_events_are_the_one_sorted_pair() -> None:
    assert RelationshipHelped(**envelope(helper="zoe", helped="ada")).pairs() == [("ada", "zoe")]
    assert RelationshipFollowedUp(
        **envelope(from_person="zoe", to_person="ada", channel="phone")
    ).pairs() == [("ada", "zoe")]
    assert RelationshipClosenessRated(**envelope(rater="zoe", ratee="ada", rating=2)).pairs() == [
        ("ada", "zoe")
    ]
    assert PersonAdded(**envelope(person_id="ada", display_name="Ada")).pairs() == []


def test_encode_keeps_the_instant_of_an_offset_with_seconds() -> None:
    tz = timezone(timedelta(minutes=19, seconds=32))
    event = _met(["ada", "grace"], occurred_at=datetime(1930, 5, 1, 12, 0, tzinfo=tz))
    assert REGISTRY.decode(REGISTRY.encode(event)).occurred_at == event.occurred_at


# -- 7. property: RelationshipMet round-trips ----------------------------------------------

PERSON_ID_ALPHABET = string.ascii_letters + string.digits + "_-"
person_ids = st.text(alphabet=PERSON_ID_ALPHABET, min_size=1, max_size=64)
# Offsets in whole minutes: what RFC 3339 (and so the JSON on the log) can express.
offsets = st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
aware_datetimes = st.datetimes(
    min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=offsets
)
optional_short_text = st.none() | st.text(min_size=1, max_size=200).filter(str.strip)


@st.composite
def met_events(draw: st.DrawFn) -> RelationshipMet:
    participants = draw(st.lists(person_ids, min_size=2, max_size=6, unique=True))
    return RelationshipMet(
        event_id=draw(st.uuids()),
        schema_version=1,
        occurred_at=draw(aware_datetimes),
        recorded_at=draw(aware_datetimes),
        workspace_id=draw(st.from_regex(r"\A[a-z0-9][a-z0-9-]{0,62}\Z")),
        recorded_by=draw(st.text(min_size=1, max_size=200)),
        correlation_id=draw(st.none() | st.uuids()),
        participants=participants,
        depth=draw(st.sampled_from(get_args(Depth))),
        mode=draw(st.sampled_from(get_args(Mode))),
        duration_minutes=draw(st.integers(min_value=0, max_value=24 * 60)),
        initiated_by=draw(st.none() | st.sampled_from(participants)),
        where=draw(optional_short_text),
        context=draw(st.none() | st.text(max_size=2000)),
    )


@given(met_events())
def test_every_valid_met_event_survives_encode_then_decode(event: RelationshipMet) -> None:
    decoded = REGISTRY.decode(REGISTRY.encode(event))
    assert decoded == event
    assert type(decoded) is RelationshipMet
    assert decoded.occurred_at.utcoffset() == event.occurred_at.utcoffset()


@pytest.mark.parametrize(
    ("fields", "loc"),
    [
        (
            {"type": "relationship.closeness_rated", "rater": "a", "ratee": "a", "rating": 3},
            "ratee",
        ),
        ({"type": "relationship.helped", "helper": "a", "helped": "a"}, "helped"),
        (
            {
                "type": "relationship.followed_up",
                "from_person": "a",
                "to_person": "a",
                "channel": "email",
            },
            "to_person",
        ),
        (
            {"type": "relationship.met", "participants": ["a", "a"], "depth": "brief_chat"},
            "participants",
        ),
        (
            {
                "type": "relationship.met",
                "participants": ["a", "b"],
                "depth": "brief_chat",
                "initiated_by": "c",
            },
            "initiated_by",
        ),
        (
            {
                "type": "relationship.introduced",
                "introducer": "a",
                "person_a": "a",
                "person_b": "b",
            },
            "person_a",
        ),
        (
            {
                "type": "relationship.introduced",
                "introducer": "x",
                "person_a": "b",
                "person_b": "b",
            },
            "person_b",
        ),
        (
            {
                "type": "introduction.requested",
                "introduction_id": str(uuid.uuid4()),
                "requester": "a",
                "introducer": "b",
                "target": "a",
            },
            "target",
        ),
    ],
    ids=[
        "rated",
        "helped",
        "followed_up",
        "met_twice",
        "initiated_by",
        "introducer",
        "self_intro",
        "requested",
    ],
)
def test_a_rule_between_two_fields_names_the_field(fields: dict[str, Any], loc: str) -> None:
    """The API's 422 shows ``errors[].loc``: these rules were model validators, whose errors
    have an empty location ("(body)"), so a client could not point at the field."""
    with pytest.raises(EventDecodeError) as caught:
        REGISTRY.decode_obj(envelope(**fields))
    assert [e["loc"] for e in caught.value.errors] == [[loc]]


def test_a_refused_participants_list_adds_no_error_on_initiated_by() -> None:
    met = {"type": "relationship.met", "participants": ["a", "a"], "depth": "brief_chat"}
    with pytest.raises(EventDecodeError) as caught:
        REGISTRY.decode_obj(envelope(**met, initiated_by="a"))
    assert [e["loc"] for e in caught.value.errors] == [["participants"]]
