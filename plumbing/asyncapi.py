"""The AsyncAPI 3.0 document of tieline's events on NATS, generated from the event registry
(every type and version, with the JSON Schema of the event as the log stores it) and the
subject layout of :mod:`tieline.plumbing.subjects`.

The API serves it at ``/asyncapi.json`` for its own subject prefix and stream; the copy in
``docs/asyncapi.json`` (default prefix ``tl``, stream ``TIELINE``) is written by
``python -m tieline.plumbing.asyncapi`` and a test fails when it is stale.
"""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path
from typing import Any

from tieline.events_schema.generate import event_schema
from tieline.events_schema.registry import REGISTRY, EventRegistry
from tieline.plumbing.subjects import event_subject_template, is_person_event

ASYNCAPI_VERSION = "3.0.0"
#: The committed copy, next to the other docs (only in a source checkout).
DOC_PATH = Path(__file__).resolve().parents[1] / "docs" / "asyncapi.json"

_DESCRIPTION = (
    "Every fact tieline records is an immutable event on a NATS JetStream stream (the log "
    "of record), one subject per workspace and event type. Subscribers read them with a "
    "JetStream consumer on the stream; the stream sequence orders them. Personal fields "
    "(`x-personal-data`) travel encrypted (`enc:v1:` + base64 of AES-GCM) under a key per "
    "person; forgetting a person destroys the key. Each message carries `Nats-Msg-Id` = "
    "`{workspace}/{event_id}` (JetStream dedupes re-sends within its window; event ids are "
    "unique per workspace). A reader decodes every "
    "version it finds (older ones are upcast); a version newer than it knows is parked, "
    "never guessed."
)
PARAMETERS = {
    "workspace": {
        "description": "Workspace slug: lower-case letters, digits, dashes.",
        "examples": ["default"],
    },
    "person_id": {
        "description": "The person the event is about (letters, digits, '_' and '-').",
        "examples": ["ada"],
    },
}


def _message_id(event_type: str, version: int) -> str:
    return f"{event_type}.v{version}"


def _channel(prefix: str, event_type: str, messages: list[str], doc: str) -> dict[str, Any]:
    params = ["workspace", "person_id"] if is_person_event(event_type) else ["workspace"]
    return {
        "address": event_subject_template(prefix, event_type),
        "title": event_type,
        "description": doc,
        "parameters": {p: PARAMETERS[p] for p in params},
        "messages": {m: {"$ref": f"#/components/messages/{m}"} for m in messages},
    }


def _message(event_type: str, version: int, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": event_type,
        "title": f"{event_type} v{version}",
        "summary": (schema.get("description") or event_type).split("\n")[0],
        "contentType": "application/json",
        "headers": {
            "type": "object",
            "properties": {
                "Nats-Msg-Id": {
                    "type": "string",
                    "pattern": "^[a-z0-9][a-z0-9-]*/[0-9a-f-]{36}$",
                    "description": "`{workspace}/{event_id}`: JetStream's dedupe key (event "
                    "ids are unique per workspace).",
                }
            },
        },
        "payload": {"$ref": f"#/components/schemas/{_message_id(event_type, version)}"},
    }


def asyncapi_document(
    prefix: str = "tl", stream: str = "TIELINE", registry: EventRegistry = REGISTRY
) -> dict[str, Any]:
    """The AsyncAPI 3.0 document for events published under ``prefix`` on ``stream``."""
    schemas: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    by_type: dict[str, list[str]] = {}
    docs: dict[str, str] = {}
    for event_type, version, cls in registry.versions():
        mid = _message_id(event_type, version)
        schema = event_schema(event_type, version, cls)
        schema.pop("$id", None)  # a base URI inside the document would re-root its $refs
        schemas[mid] = schema
        messages[mid] = _message(event_type, version, schema)
        by_type.setdefault(event_type, []).append(mid)
        docs[event_type] = inspect.cleandoc(cls.__doc__ or event_type)
    channels = {t: _channel(prefix, t, ms, docs[t]) for t, ms in sorted(by_type.items())}
    operations = {
        f"receive.{t}": {
            "action": "receive",
            "title": f"Read {t} events",
            "summary": f"A consumer of stream {stream} receives {t} events.",
            "channel": {"$ref": f"#/channels/{t}"},
            "messages": [{"$ref": f"#/channels/{t}/messages/{m}"} for m in by_type[t]],
        }
        for t in sorted(by_type)
    }
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "tieline events",
            "version": "0.1.0",
            "description": _DESCRIPTION + f" Stream: `{stream}`; subjects `{prefix}.ev.>`.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "nats": {
                "host": "127.0.0.1:4222",
                "protocol": "nats",
                "description": "NATS with JetStream (TIELINE_NATS_URL).",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }


def document_text() -> str:
    """The committed document's text (default prefix and stream)."""
    return json.dumps(asyncapi_document(), indent=2, sort_keys=True) + "\n"


def main() -> int:
    DOC_PATH.write_text(document_text())
    print(f"wrote {DOC_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
