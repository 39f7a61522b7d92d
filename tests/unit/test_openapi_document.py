"""The OpenAPI document, built without servers (create_app connects nothing until its
lifespan): every answer typed, every error documented as a problem document, the bearer
scheme on every workspace route, the event commands as the request body, examples."""

from __future__ import annotations

from typing import Any

import pytest
from tieline.events_schema.registry import REGISTRY
from tieline.plumbing.config import Settings
from tieline.services.api.app import create_app

PROBLEM = {"$ref": "#/components/schemas/Problem"}
#: Routes whose success is not a JSON object: JSON Lines exports, the AsyncAPI document.
UNTYPED_OK = {"/asyncapi.json"}


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return create_app(Settings()).openapi()


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(p, m, op) for p, item in doc["paths"].items() for m, op in item.items()]


def test_every_success_is_a_typed_object_or_a_declared_stream(doc: dict[str, Any]) -> None:
    """A JSON answer has a schema of its own (no free-form object); a stream (JSON Lines,
    Server-Sent Events, a page) declares its media type."""
    for path, method, op in operations(doc):
        ok = [s for s in op["responses"] if s.startswith("2")]
        assert ok, f"{method} {path}: no success documented"
        for status in ok:
            content = op["responses"][status].get("content", {})
            assert content, f"{method} {path} {status}: no media type"
            if "application/json" not in content or path in UNTYPED_OK:
                continue
            schema = content["application/json"]["schema"]
            assert "$ref" in schema, f"{method} {path} {status}: untyped answer {schema}"
    exports = [op for p, _, op in operations(doc) if "/export/" in p]
    assert len(exports) == 4
    assert all(set(op["responses"]["200"]["content"]) == {"application/x-ndjson"} for op in exports)


def test_every_error_is_documented_as_a_problem_document(doc: dict[str, Any]) -> None:
    for path, method, op in operations(doc):
        errors = {s: r for s, r in op["responses"].items() if s[0] in "45"}
        assert {"500", "503"} <= set(errors), f"{method} {path}: {sorted(errors)}"
        if "{ws}" in path:
            assert {"401", "403", "422", "429"} <= set(errors), f"{method} {path}"
        for status, response in errors.items():
            assert set(response["content"]) == {"application/problem+json"}, (path, status)
            assert response["content"]["application/problem+json"]["schema"] == PROBLEM
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    assert "Problem" in doc["components"]["schemas"]


def test_retry_after_and_www_authenticate_are_documented(doc: dict[str, Any]) -> None:
    op = doc["paths"]["/v1/workspaces/{ws}/people"]["get"]
    assert "Retry-After" in op["responses"]["429"]["headers"]
    assert "Retry-After" in op["responses"]["503"]["headers"]
    assert "WWW-Authenticate" in op["responses"]["401"]["headers"]


def test_bearer_scheme_guards_every_workspace_route(doc: dict[str, Any]) -> None:
    schemes = doc["components"]["securitySchemes"]
    assert schemes["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "tl_<id>_<secret>",
        "description": schemes["bearer"]["description"],
    }
    for path, method, op in operations(doc):
        if "{ws}" in path:
            assert op.get("security") == [{"bearer": []}], f"{method} {path}"
        else:
            assert "security" not in op, f"{method} {path}"


def test_the_event_body_is_one_of_the_command_schemas(doc: dict[str, Any]) -> None:
    body = doc["paths"]["/v1/workspaces/{ws}/events"]["post"]["requestBody"]
    media = body["content"]["application/json"]
    mapping = media["schema"]["discriminator"]["mapping"]
    assert set(mapping) == set(REGISTRY.classes)
    for event_type, ref in mapping.items():
        schema = doc["components"]["schemas"][ref.rsplit("/", 1)[1]]
        assert schema["properties"]["type"]["const"] == event_type
        assert "recorded_by" not in schema["properties"]
    assert {"met", "follow_up"} <= set(media["examples"])


def test_lists_take_a_cursor_and_answer_next_cursor(doc: dict[str, Any]) -> None:
    lists = [
        "/v1/workspaces/{ws}/people",
        "/v1/workspaces/{ws}/people/{person}/relationships",
        "/v1/workspaces/{ws}/people/{person}/follow-ups",
        "/v1/workspaces/{ws}/people/{person}/give-and-take",
        "/v1/workspaces/{ws}/relationships/{person_a}/{person_b}/timeline",
        "/v1/workspaces/{ws}/introductions",
        "/v1/workspaces/{ws}/access-log",
        "/v1/workspaces/{ws}/tokens",
    ]
    schemas = doc["components"]["schemas"]
    for path in lists:
        op = doc["paths"][path]["get"]
        names = {p["name"] for p in op["parameters"]}
        assert {"limit", "cursor"} <= names, path
        ref = op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
        assert "next_cursor" in schemas[ref.rsplit("/", 1)[1]]["properties"], path


def test_requests_and_answers_carry_examples(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    for name in ("PersonIn", "TokenIn", "WriteResult", "BatchResult", "Problem"):
        assert schemas[name].get("examples"), name
    batch = doc["paths"]["/v1/workspaces/{ws}/events/batch"]["post"]["requestBody"]
    assert batch["content"]["application/x-ndjson"]["example"].count("\n") == 2
    met = doc["paths"]["/v1/workspaces/{ws}/people"]["get"]["responses"]["422"]
    assert {"validation", "min-seq-beyond-log"} <= set(
        met["content"]["application/problem+json"]["examples"]
    )


def test_operation_ids_are_the_route_names(doc: dict[str, Any]) -> None:
    ids = [op["operationId"] for _, _, op in operations(doc)]
    assert len(ids) == len(set(ids))
    assert {"add_person", "record_event", "strength", "timeline", "list_people"} <= set(ids)


#: The tags of the routes that read the read models (projections), which a write's ``seq``
#: can be waited for: the README's "every read accepts ?min_seq=N".
READ_MODEL_TAGS = {"people", "relationships", "introductions", "export"}


def test_every_read_model_read_takes_min_seq(doc: dict[str, Any]) -> None:
    """Read-your-writes holds on every read of the read models: each takes ``min_seq`` and
    documents its 503 (not applied in time). /introductions/check once took no ``min_seq``
    (FastAPI ignores an unknown parameter), so a check right after a write could answer from
    before it."""
    reads = [
        (path, op)
        for path, method, op in operations(doc)
        if method == "get" and READ_MODEL_TAGS & set(op.get("tags", []))
    ]
    assert "/v1/workspaces/{ws}/introductions/check" in {p for p, _ in reads}
    for path, op in reads:
        names = {p["name"] for p in op.get("parameters", [])}
        assert "min_seq" in names, path
        assert "503" in op["responses"], path
