"""Writes the JSON Schema of every event type and version into ``events_schema/jsonschema/``.

Run ``python -m tieline.events_schema.generate`` after changing a model; a test fails when the files
are stale, so non-Python clients never read an outdated contract.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from tieline.events_schema.registry import REGISTRY, EventRegistry

SCHEMA_DIR = Path(__file__).parent / "jsonschema"


def schema_files(registry: EventRegistry = REGISTRY) -> dict[str, str]:
    """File name -> JSON text for every (type, version) the registry knows."""
    files: dict[str, str] = {}
    for event_type, version, cls in registry.versions():
        schema: dict[str, Any] = cls.model_json_schema()
        schema["$id"] = f"https://tieline.dev/schemas/{event_type}/v{version}.json"
        schema["title"] = f"{event_type} v{version}"
        schema["x-schema-version"] = version
        files[f"{event_type}.v{version}.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return files


def main() -> int:
    SCHEMA_DIR.mkdir(exist_ok=True)
    for name, text in schema_files().items():
        (SCHEMA_DIR / name).write_text(text)
        print(f"wrote {SCHEMA_DIR / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
