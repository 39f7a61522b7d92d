"""The one encode/decode path for events.

Everything that turns bytes into an :class:`~events_schema.models.Event` (services, the
projection worker, import, replay) goes through an :class:`EventRegistry`, so that old schema
versions are upcast before validation in exactly one place.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Union

import pydantic
from pydantic import Field, TypeAdapter
from tieline.events_schema.models import (
    EVENT_CLASSES,
    Event,
    EventRetractedV1,
    IntroductionOutcomeV1,
    event_type_of,
)

#: Turns the JSON object of version ``n`` into the JSON object of version ``n + 1``.
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


class EventDecodeError(ValueError):
    """Raised when bytes are not a valid event. ``reason`` is a short machine-readable code."""

    reason: str = "invalid_event"

    def __init__(self, message: str, *, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []


class InvalidJson(EventDecodeError):
    reason = "invalid_json"


class UnknownEventType(EventDecodeError):
    reason = "unknown_type"


class UnsupportedSchemaVersion(EventDecodeError):
    reason = "unsupported_schema_version"


class InvalidEvent(EventDecodeError):
    reason = "invalid_event"


def _field_errors(exc: pydantic.ValidationError) -> list[dict[str, Any]]:
    """Validation errors as plain dicts naming the field (``loc``) and the problem (``msg``)."""
    return [
        {"loc": [str(p) for p in err["loc"]], "msg": err["msg"], "type": err["type"]}
        for err in exc.errors(include_url=False, include_context=False, include_input=False)
    ]


def describe(errors: list[dict[str, Any]]) -> str:
    """A one-line human description of field errors, e.g. ``participants.1: String should ...``."""
    return "; ".join(f"{'.'.join(e['loc']) or '(body)'}: {e['msg']}" for e in errors)


@dataclass
class EventRegistry:
    """Maps ``type`` to the current model, and ``(type, version)`` to upcasters.

    ``decode`` accepts every version from 1 to the current one; a newer version than this code
    knows raises :class:`UnsupportedSchemaVersion` (a worker parks such a message in the
    dead-letter subject instead of guessing).
    """

    classes: dict[str, type[Event]] = field(default_factory=dict)
    upcasters: dict[tuple[str, int], Upcaster] = field(default_factory=dict)
    #: Frozen models of released older versions, kept for JSON Schema generation.
    historical: dict[tuple[str, int], type[Event]] = field(default_factory=dict)
    _adapter: TypeAdapter[Any] | None = field(default=None, init=False, repr=False)

    def register(self, cls: type[Event]) -> None:
        """Register ``cls`` as the current model of its ``type``."""
        self.classes[event_type_of(cls)] = cls
        self._adapter = None

    def register_upcaster(self, event_type: str, from_version: int, fn: Upcaster) -> None:
        """Register ``fn`` to turn ``event_type`` at ``from_version`` into ``from_version + 1``."""
        self.upcasters[(event_type, from_version)] = fn

    def current_version(self, event_type: str) -> int:
        return self.classes[event_type].version

    def versions(self) -> Iterable[tuple[str, int, type[Event]]]:
        """Every (type, version, model) this registry can describe, oldest first."""
        for (t, v), cls in sorted(self.historical.items()):
            yield t, v, cls
        for t, cls in sorted(self.classes.items()):
            yield t, cls.version, cls

    def _union_adapter(self) -> TypeAdapter[Any]:
        if self._adapter is None:
            union = Union[tuple(self.classes.values())]  # type: ignore[valid-type]  # noqa: UP007
            self._adapter = TypeAdapter(
                Annotated[union, Field(discriminator="type")]  # type: ignore[arg-type]
            )
        return self._adapter

    # -- decoding -------------------------------------------------------------------------

    def decode(self, raw: bytes | str) -> Event:
        """Bytes from the log (or a client) to a validated event, upcasting older versions."""
        try:
            event = self._union_adapter().validate_json(raw)
        except pydantic.ValidationError:
            return self._decode_slow(raw)
        assert isinstance(event, Event)
        if event.schema_version != type(event).version:
            return self._decode_slow(raw)
        return event

    def decode_obj(self, obj: Mapping[str, Any]) -> Event:
        """A JSON object (already parsed) to a validated event, upcasting older versions."""
        data = dict(obj)
        event_type = data.get("type")
        if not isinstance(event_type, str) or event_type not in self.classes:
            known = ", ".join(sorted(self.classes))
            raise UnknownEventType(
                f"type: unknown event type {event_type!r} (known: {known})",
                errors=[{"loc": ["type"], "msg": f"unknown event type {event_type!r}"}],
            )
        cls = self.classes[event_type]
        version = data.get("schema_version", cls.version)
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise InvalidEvent(
                "schema_version: must be a positive integer",
                errors=[{"loc": ["schema_version"], "msg": "must be a positive integer"}],
            )
        if version > cls.version:
            raise UnsupportedSchemaVersion(
                f"schema_version: {event_type} v{version} is newer than this code knows "
                f"(v{cls.version}); add the model before replaying it",
                errors=[{"loc": ["schema_version"], "msg": f"unsupported version {version}"}],
            )
        data = self.upcast(event_type, version, data)
        try:
            return cls.model_validate(data)
        except pydantic.ValidationError as exc:
            errors = _field_errors(exc)
            raise InvalidEvent(describe(errors), errors=errors) from exc

    def upcast(self, event_type: str, version: int, data: dict[str, Any]) -> dict[str, Any]:
        """Apply the upcasters from ``version`` to the current version of ``event_type``."""
        current = self.classes[event_type].version
        while version < current:
            step = self.upcasters.get((event_type, version))
            if step is None:
                raise UnsupportedSchemaVersion(
                    f"schema_version: no upcaster for {event_type} v{version}",
                    errors=[{"loc": ["schema_version"], "msg": f"no upcaster from v{version}"}],
                )
            data = step(dict(data))
            version += 1
            data["schema_version"] = version
        return data

    def _decode_slow(self, raw: bytes | str) -> Event:
        try:
            obj = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidJson(
                f"(body): not valid JSON: {exc}",
                errors=[{"loc": [], "msg": "not valid JSON"}],
            ) from exc
        if not isinstance(obj, dict):
            raise InvalidJson(
                "(body): an event must be a JSON object",
                errors=[{"loc": [], "msg": "must be a JSON object"}],
            )
        return self.decode_obj(obj)

    # -- encoding -------------------------------------------------------------------------

    @staticmethod
    def encode(event: Event) -> bytes:
        """The canonical JSON bytes of an event (what goes onto the log)."""
        return event.model_dump_json(exclude_none=True).encode()


def default_registry() -> EventRegistry:
    """The registry of every event type this code knows, with its upcasters."""
    registry = EventRegistry()
    for cls in EVENT_CLASSES:
        registry.register(cls)
    # Released older versions: the frozen model (for the JSON Schemas) and the upcaster.
    registry.historical[("introduction.outcome", 1)] = IntroductionOutcomeV1
    registry.register_upcaster("introduction.outcome", 1, _outcome_v1_to_v2)
    registry.historical[("event.retracted", 1)] = EventRetractedV1
    registry.register_upcaster("event.retracted", 1, _retracted_v1_to_v2)
    return registry


def _outcome_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    """introduction.outcome v1 named nobody: as v2 it names nobody either (``requester`` and
    ``target`` left out), which keeps its note readable with the key it was encrypted with."""
    return data


def _retracted_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    """event.retracted v1 named nobody: as v2 it names nobody either (``about`` left out),
    which keeps its reason readable with the key it was encrypted with (the workspace's)."""
    return data


REGISTRY = default_registry()
