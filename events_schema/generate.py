"""Writes two JSON Schemas per event type and version, one for each side of the contract:

- ``jsonschema/events/{type}.v{N}.json``: the event as the log stores it (every envelope field
  required, ``recorded_at`` and ``recorded_by`` set by tieline, personal fields as ciphertext).
- ``jsonschema/commands/{type}.v{N}.json``: what a client sends to record one (``type``
  required; ``event_id``, ``schema_version``, ``occurred_at`` and ``workspace_id`` optional;
  no ``recorded_at`` or ``recorded_by``, which tieline refuses from a client; personal fields
  in plaintext, at most ``x-max-plaintext-length`` characters).

Run ``python -m tieline.events_schema.generate`` after changing a model; a test fails when the
files are stale, so non-Python clients never read an outdated contract.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

from tieline.events_schema.registry import REGISTRY, EventRegistry

SCHEMA_DIR = Path(__file__).parent / "jsonschema"
EVENTS_DIR = SCHEMA_DIR / "events"
COMMANDS_DIR = SCHEMA_DIR / "commands"
BASE_ID = "https://tieline.dev/schemas"

#: Envelope fields only tieline sets: a client that sends one is refused (422).
SERVER_FIELDS = ("recorded_at", "recorded_by")
#: Envelope fields a client may leave out: tieline fills them in (a fresh id, the current
#: version, now, the workspace of the request path).
OPTIONAL_IN_COMMANDS = ("event_id", "schema_version", "occurred_at", "workspace_id")
#: Prefix of an encrypted personal value on the log (plumbing.crypto); never from a client.
CIPHERTEXT_PATTERN = "^enc:v1:"


def event_schema(event_type: str, version: int, cls: type[Any]) -> dict[str, Any]:
    """The JSON Schema of an event as the log stores it."""
    schema: dict[str, Any] = cls.model_json_schema()
    schema["$id"] = f"{BASE_ID}/{event_type}/v{version}.json"
    schema["title"] = f"{event_type} v{version}"
    schema["x-schema-version"] = version
    return schema


def _plaintext(prop: dict[str, Any]) -> None:
    """A personal field as a client sends it: plaintext of a bounded length (the write side
    encrypts it), never something that looks like ciphertext."""
    for branch in [prop, *prop.get("anyOf", [])]:
        limit = branch.get("x-max-plaintext-length")
        if branch.get("x-personal-data") and branch.get("type") == "string" and limit:
            branch["maxLength"] = limit
            branch["not"] = {"pattern": CIPHERTEXT_PATTERN}


def command_schema(event_type: str, version: int, cls: type[Any]) -> dict[str, Any]:
    """The JSON Schema of what a client sends to record an event of ``event_type``."""
    schema = copy.deepcopy(event_schema(event_type, version, cls))
    props: dict[str, Any] = schema["properties"]
    for name in SERVER_FIELDS:
        props.pop(name, None)
    for prop in props.values():
        _plaintext(prop)
    props["schema_version"]["description"] = (
        f"Defaults to the current version ({version}); older versions are upcast."
    )
    props["event_id"]["description"] = (
        "Idempotency key: sending the same id again records nothing new and answers with "
        "the original stream sequence. Generated when left out."
    )
    props["occurred_at"]["description"] = (
        "When it happened, with a timezone; defaults to now; at most a few minutes ahead."
    )
    props["workspace_id"]["description"] = "Optional; must equal the workspace in the path."
    required = [r for r in schema.get("required", []) if r not in OPTIONAL_IN_COMMANDS]
    required = ["type", *(r for r in required if r not in SERVER_FIELDS and r != "type")]
    schema["required"] = required
    schema["$id"] = f"{BASE_ID}/commands/{event_type}/v{version}.json"
    schema["title"] = f"{event_type} v{version} command"
    schema["description"] = (
        f"What a client sends to record a {event_type} event "
        "(POST /v1/workspaces/{ws}/events, or one line of /events/batch). "
        + schema.get("description", "")
    ).strip()
    return schema


def _text(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def schema_files(registry: EventRegistry = REGISTRY) -> dict[str, str]:
    """Path under ``jsonschema/`` (``events/...`` or ``commands/...``) -> JSON text, for every
    (type, version) the registry knows; commands only for current versions (a client always
    sends the current one; older ones are upcast, never published as a contract to write)."""
    files: dict[str, str] = {}
    for event_type, version, cls in registry.versions():
        files[f"events/{event_type}.v{version}.json"] = _text(
            event_schema(event_type, version, cls)
        )
        if registry.classes.get(event_type) is cls:
            files[f"commands/{event_type}.v{version}.json"] = _text(
                command_schema(event_type, version, cls)
            )
    return files


def main() -> int:
    for name, text in schema_files().items():
        path = SCHEMA_DIR / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}")
    for stale in sorted(SCHEMA_DIR.rglob("*.json")):
        if str(stale.relative_to(SCHEMA_DIR)) not in schema_files():
            stale.unlink()
            print(f"removed {stale}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
