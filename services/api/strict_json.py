"""JSON that the write side can take: what Python's ``json`` accepts but a command cannot carry.

Python's ``json`` reads ``NaN`` and ``Infinity``, strings with lone surrogates (``"\\ud800"``)
and ``\\u0000``, and fails on deep nesting with ``RecursionError`` (not a ``ValueError``). The
write-side services decode commands with orjson, which refuses the first two: the command got
no answer and the client a 503 after the command timeout. PostgreSQL text and jsonb cannot
hold ``\\u0000``: an event carrying one in a field that is not encrypted was accepted and then
dead-lettered by the projection. So bodies are parsed strictly here, every command's items are
checked with :func:`problem` before they are sent, and a refusal names the field.
"""

from __future__ import annotations

import json
import math
from typing import Any


class Unfit(ValueError):
    """A body that is not strict JSON."""


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def loads(raw: bytes | str) -> Any:
    """``raw`` parsed as strict JSON (no ``NaN``/``Infinity``); :class:`Unfit` when it is
    not JSON or is nested too deeply. The values in it are checked where every command
    passes, with :func:`problem` (services/api/runtime.py, ``CommandBus``)."""
    try:
        return json.loads(raw, parse_constant=_no_constant)
    except RecursionError:
        raise Unfit("not valid JSON: nested too deeply") from None
    except ValueError as exc:
        raise Unfit(f"not valid JSON ({exc})") from exc


def problem(obj: Any) -> tuple[list[str], str] | None:
    """(where, what) of the first value in ``obj`` no command can carry, or None. Walks
    without recursion, so a deep body cannot overflow the stack here either."""
    stack: list[tuple[list[str], Any]] = [([], obj)]
    while stack:
        loc, value = stack.pop()
        if isinstance(value, str):
            why = _bad_text(value)
            if why:
                return loc, why
        elif isinstance(value, float) and not math.isfinite(value):
            return loc, "must be a finite number"
        elif isinstance(value, dict):
            for key, item in reversed(value.items()):
                why = _bad_text(key) if isinstance(key, str) else ""
                if why:
                    return [*loc, key], f"field name {why}"
                stack.append(([*loc, str(key)], item))
        elif isinstance(value, list):
            stack.extend(([*loc, str(i)], item) for i, item in reversed(list(enumerate(value))))
    return None


def _bad_text(text: str) -> str:
    if "\x00" in text:
        return "must not contain the NUL character (\\u0000)"
    if text.isascii():
        return ""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode (a lone surrogate is not)"
    return ""
