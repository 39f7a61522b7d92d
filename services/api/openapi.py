"""The OpenAPI document's parts that FastAPI does not derive from the routes: the problem
responses each route declares (``responses=``), the event commands a client may send (the
JSON Schemas ``events_schema.generate`` writes to ``jsonschema/commands/``), examples, and a
last pass (:func:`install`) that puts the shared schemas into ``components``, documents 500
and 503 on every operation, and drops FastAPI's own validation-error schema, which this API
never sends.
"""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from tieline.events_schema.generate import command_schema
from tieline.events_schema.registry import REGISTRY
from tieline.services.api.errors import PROBLEM_JSON, PROBLEM_TYPES, FieldError, Problem

REF = "#/components/schemas/"
Responses = dict[int | str, dict[str, Any]]

#: Problem types a status can carry, for the examples of each documented response.
_SLUGS_BY_STATUS: dict[int, list[str]] = {}
for _slug, _kind in PROBLEM_TYPES.items():
    _SLUGS_BY_STATUS.setdefault(_kind.status, []).append(_slug)

_EXAMPLE_DETAIL = {
    "validation": ("query.limit: Input should be less than or equal to 1000", ["query", "limit"]),
    "min-seq-beyond-log": ("min_seq: 900 is beyond the log, whose last sequence is 812",
                           ["query", "min_seq"]),
    "unauthorized": ("unauthorized: send Authorization: Bearer <token>", None),
    "forbidden": ("forbidden: the token is not a write token of workspace 'default'", None),
    "not-found": ("participants.1: unknown person 'ghost' in workspace 'default'",
                  ["participants", "1"]),
    "no-such-route": ("no route matches /v1/workspaces/default/peple", None),
    "method-not-allowed": ("PUT /v1/workspaces/default/people: Method Not Allowed", None),
    "conflict": ("person_id: person 'ada' already exists", ["person_id"]),
    "gone": ("participants.0: person 'ada' was forgotten", ["participants", "0"]),
    "payload-too-large": ("body: larger than the 65536-byte limit", ["body"]),
    "rate-limited": ("too many failed authentication attempts from this client; retry later",
                     None),
    "internal": ("unexpected error; it has been logged", None),
    "bad-gateway": ("the people service answered: ...", None),
    "unavailable": ("min_seq: the projection has reached seq 40, not 42, within 5s; "
                    "retry later", ["query", "min_seq"]),
    "not-ready": ("projection lags the log by 120000 events", None),
}  # fmt: skip

_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"schema": {"type": "string"}, "description": "`Bearer`"}},
    405: {"Allow": {"schema": {"type": "string"}, "description": "The methods the path has."}},
    429: {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait."}},
    503: {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait."}},
}


def _example(slug: str) -> dict[str, Any]:
    kind = PROBLEM_TYPES[slug]
    detail, loc = _EXAMPLE_DETAIL[slug]
    body: dict[str, Any] = {
        "type": kind.uri,
        "title": kind.title,
        "status": kind.status,
        "detail": detail,
        "instance": "/v1/workspaces/default/events",
        "errors": [] if loc is None else [{"loc": loc, "msg": detail.split(": ", 1)[1]}],
    }
    if slug == "min-seq-beyond-log":
        body["last_seq"] = 812
    return body


def problems(*statuses: int) -> Responses:
    """The documented problem responses for ``statuses``: the Problem schema under
    ``application/problem+json``, an example per problem type of the status, and the headers
    the status carries."""
    out: Responses = {}
    for status in statuses:
        slugs = [s for s in _SLUGS_BY_STATUS[status] if s not in ("not-ready", "no-such-route")]
        meaning = " ".join(f"`{s}`: {PROBLEM_TYPES[s].meaning}" for s in slugs)
        doc: dict[str, Any] = {
            "description": meaning,
            "content": {
                PROBLEM_JSON: {
                    "schema": {"$ref": REF + "Problem"},
                    "examples": {s: {"value": _example(s)} for s in slugs},
                }
            },
        }
        if status in _HEADERS:
            doc["headers"] = copy.deepcopy(_HEADERS[status])
        out[status] = doc
    return out


#: Every route that needs a token (the workspace in the path and the token's role).
AUTH = problems(401, 403, 422, 429)
#: Reads (``?min_seq``: 422 beyond the log, 503 when the projection is late).
READ = AUTH | problems(503)
#: Writes through the write-side services.
WRITE = AUTH | problems(404, 409, 410, 413, 502, 503)


def created_responses(base: Responses) -> Responses:
    """A write's answers: 201 documented by the route, 200 for a re-sent ``event_id``."""
    return base | {
        200: {
            "description": "The event_id was recorded before: nothing new; the original seq.",
            "content": {"application/json": {"schema": {"$ref": REF + "WriteResult"}}},
        }
    }


# -- the event commands ---------------------------------------------------------------------


def command_component(event_type: str) -> str:
    """The component name of a command: ``relationship.met`` -> ``RelationshipMetCommand``."""
    words = event_type.replace("_", ".").split(".")
    return "".join(w.capitalize() for w in words) + "Command"


def command_components() -> dict[str, dict[str, Any]]:
    """Every current event type's command schema, by component name (without ``$id``, which
    would change the base URI of references inside the OpenAPI document)."""
    out = {}
    for event_type, cls in sorted(REGISTRY.classes.items()):
        schema = command_schema(event_type, cls.version, cls)
        schema.pop("$id", None)
        # Nested models (a ParameterSet) become components of their own: generators do not
        # follow a "#/$defs/..." reference inside an OpenAPI component.
        for name, nested in schema.pop("$defs", {}).items():
            out[name] = _local_refs(nested)
        out[command_component(event_type)] = _local_refs(schema)
    return out


def _local_refs(node: Any) -> Any:
    """``node`` with every ``#/$defs/X`` reference pointing at the component ``X``."""
    if isinstance(node, dict):
        return {
            k: REF + v.removeprefix("#/$defs/")
            if k == "$ref" and isinstance(v, str) and v.startswith("#/$defs/")
            else _local_refs(v)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_local_refs(v) for v in node]
    return node


EVENT_EXAMPLES: dict[str, dict[str, Any]] = {
    "met": {
        "summary": "Two people met",
        "value": {
            "type": "relationship.met",
            "participants": ["ada", "grace"],
            "depth": "meal_or_activity",
            "duration_minutes": 90,
            "context": "dinner after the keynote",
            "event_id": "0b6d1f7e-5a51-4f8e-9a4b-1c2d3e4f5a04",
        },
    },
    "follow_up": {
        "summary": "A follow-up that got a reply",
        "value": {
            "type": "relationship.followed_up",
            "from_person": "ada",
            "to_person": "grace",
            "channel": "email",
            "replied": True,
        },
    },
    "helped": {
        "summary": "One helped the other",
        "value": {"type": "relationship.helped", "helper": "grace", "helped": "ada",
                  "what": "reviewed the talk"},
    },
}  # fmt: skip


def event_body() -> dict[str, Any]:
    """The request body of ``POST .../events``: one of the command schemas, told apart by
    ``type``."""
    names = {t: command_component(t) for t in sorted(REGISTRY.classes)}
    return {
        "requestBody": {
            "required": True,
            "description": "One event command: `type` plus its fields. The JSON Schemas are "
            "also published as files (events_schema/jsonschema/commands/).",
            "content": {
                "application/json": {
                    "schema": {
                        "oneOf": [{"$ref": REF + n} for n in names.values()],
                        "discriminator": {
                            "propertyName": "type",
                            "mapping": {t: REF + n for t, n in names.items()},
                        },
                    },
                    "examples": EVENT_EXAMPLES,
                }
            },
        }
    }


def batch_body() -> dict[str, Any]:
    """The request body of ``POST .../events/batch``: JSON Lines of commands."""
    lines = [
        '{"type":"person.added","person_id":"linus","display_name":"Linus"}',
        '{"type":"relationship.met","participants":["ada","linus"],"depth":"brief_chat"}',
    ]
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/x-ndjson": {
                    "schema": {
                        "type": "string",
                        "description": "JSON Lines: one event command per line (as the "
                        "body of POST .../events); blank lines are skipped.",
                    },
                    "example": "\n".join(lines) + "\n",
                }
            },
        }
    }


# -- the last pass --------------------------------------------------------------------------


def _components(doc: dict[str, Any]) -> None:
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    problem = Problem.model_json_schema(ref_template=REF + "{model}")
    problem.pop("$defs", None)
    schemas["Problem"] = problem
    schemas["FieldError"] = FieldError.model_json_schema(ref_template=REF + "{model}")
    schemas.update(command_components())
    used = str(doc["paths"])
    for name in ("HTTPValidationError", "ValidationError"):
        if REF + name not in used:
            schemas.pop(name, None)


def _every_operation_fails_like_this(doc: dict[str, Any]) -> None:
    """500 and 503 can come from any route (a bug; a dependency down); a 422 FastAPI
    documented by itself (its own validation-error shape) is the validation problem."""
    fastapi_422 = {"$ref": REF + "HTTPValidationError"}
    for path in doc["paths"].values():
        for op in path.values():
            responses = op.setdefault("responses", {})
            own = responses.get("422", {}).get("content", {}).get("application/json", {})
            if own.get("schema") == fastapi_422:
                responses["422"] = problems(422)[422]
            for status, slug in ((500, "internal"), (503, "unavailable")):
                if str(status) not in responses:
                    responses[str(status)] = problems(status)[status]
                    responses[str(status)]["description"] = PROBLEM_TYPES[slug].meaning


def install(app: FastAPI) -> None:
    """Replace ``app.openapi`` with the complete document (built once, then cached)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
                tags=app.openapi_tags,
            )
            _every_operation_fails_like_this(doc)
            _components(doc)
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
