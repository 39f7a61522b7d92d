"""Every logger of a process writes JSON lines once configure_logging(json=True) ran:
structlog's, the standard library's (uvicorn's, psycopg's) and FastStream's, which installs
plain-text handlers of its own."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
import structlog
from tieline.plumbing.logging import configure_logging, stdlib_logger


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    config = structlog.get_config()
    try:
        yield
    finally:
        root.handlers, root.level = handlers, level
        structlog.configure(**config)


def test_every_logger_writes_one_json_object_per_line(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("INFO", json=True)
    # FastStream sets up its own plain-text logger when imported (after configure_logging
    # in a real process); stdlib_logger() routes it back through the root handler.
    import faststream  # noqa: F401

    broker_log = stdlib_logger("tieline.faststream.broker")
    with structlog.contextvars.bound_contextvars(role="test"):
        structlog.get_logger("x").info("own.event", n=1)
        logging.getLogger("uvicorn.error").info("Started server process [%d]", 42)
        logging.getLogger("psycopg.pool").warning("pool %s is slow", "p")
        logging.getLogger("faststream").info("FastStream app starting...")
        broker_log.info("Received", extra={"subject": "tl.cmd.*.people.*"})
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("asyncio").exception("task failed")
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    records = [json.loads(ln) for ln in lines]  # every line is one JSON object
    by_event = {r["event"]: r for r in records}
    assert set(by_event) == {
        "own.event",
        "Started server process [42]",
        "pool p is slow",
        "FastStream app starting...",
        "Received",
        "task failed",
    }
    for r in records:
        assert r["role"] == "test" and r["level"] in ("info", "warning", "error")
        assert r["timestamp"].endswith("Z")
    assert by_event["Started server process [42]"]["logger"] == "uvicorn.error"
    assert by_event["Received"]["subject"] == "tl.cmd.*.people.*"
    assert "ValueError: boom" in by_event["task failed"]["exception"]
    assert "color_message" not in json.dumps(records)
