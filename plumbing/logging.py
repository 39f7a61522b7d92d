"""structlog setup: JSON lines when not on a terminal, readable colours when on one.

Every logger of the process goes through the same processors and renderer: structlog's own
loggers directly, and the standard library's (uvicorn, FastStream, psycopg, nats, asyncio...)
through one root handler with :class:`structlog.stdlib.ProcessorFormatter`, so a log shipper
reading the stream never meets a plain-text line. A line carries ``event`` (what happened),
``level``, ``timestamp`` (UTC, ISO 8601), ``logger`` for standard-library records, and
whatever context is bound (``role``, ``request_id``, ``correlation_id``...).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

#: Standard-library loggers that install handlers of their own (plain text, not propagating):
#: they are sent to the root handler instead.
OWN_HANDLERS = ("faststream", "faststream.access", "faststream.access.nats", "uvicorn")


def _drop_color_message(
    _: Any, __: str, event_dict: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """uvicorn adds an ANSI-coloured copy of its message as an extra; one copy is enough."""
    event_dict.pop("color_message", None)
    return event_dict


def _renderer(as_json: bool) -> structlog.typing.Processor:
    return structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer()


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is *now*. A handler that kept the stream it was given
    at configure time would write to a closed file once that stream is swapped and closed
    (a CLI run inside typer's CliRunner, pytest's capture): "I/O operation on closed file"."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


_STDERR = _CurrentStderr()


def configure_logging(level: str = "INFO", json: bool | None = None) -> None:
    """Configure structlog and the stdlib root logger for a process.

    ``json=None`` picks JSON when stderr is not a terminal, so supervisors and log shippers get
    one object per line while a developer at a terminal gets readable output.
    """
    as_json = (not sys.stderr.isatty()) if json is None else json
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            _renderer(as_json),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=_STDERR),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(_STDERR)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            # Records from the standard library: name the logger, keep %-formatted messages.
            foreign_pre_chain=[
                *shared,
                structlog.stdlib.add_logger_name,
                structlog.stdlib.ExtraAdder(),
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                _drop_color_message,
                structlog.processors.format_exc_info,
                _renderer(as_json),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
    _reroute()


#: Libraries that log every request they make at INFO: a line per HTTP call of the CLI, the
#: importer or a webhook delivery is noise on a user's terminal (tieline logs what matters).
CHATTY = ("httpx", "httpcore")


def _reroute() -> None:
    for name in CHATTY:
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in OWN_HANDLERS:
        own = logging.getLogger(name)
        own.handlers = []
        own.propagate = True


def stdlib_logger(name: str) -> logging.Logger:
    """A standard-library logger that reaches the root handler, for libraries that take a
    logger: FastStream's default ones print plain text. Called once FastStream is imported,
    it also re-routes the logger FastStream set up at import (after configure_logging)."""
    _reroute()
    return logging.getLogger(name)
