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
from collections.abc import Iterator
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


#: Deeper than any event or command (their deepest value is a list inside an object inside
#: the body); far below the depth at which encoding the command would overflow the stack.
MAX_DEPTH = 32
#: orjson, which the services decode commands with, reads integers up to 64 bits.
MAX_INT = 2**63 - 1


def problem(obj: Any) -> tuple[list[str], str] | None:
    """(where, what) of the first value in ``obj`` no command can carry, or None. Walks with
    one iterator per level (memory grows with the depth, not the size) and builds the path
    only for what it refuses."""
    keys: list[str] = []
    stack: list[Iterator[tuple[str, Any]]] = [iter((("", obj),))]
    while stack:
        step = next(stack[-1], None)
        if step is None:
            stack.pop()
            if keys:
                keys.pop()
            continue
        key, value = step
        why = _bad_value(value, len(stack))
        if why:
            return [*keys[: len(stack) - 1], key][1:], why
        if isinstance(value, dict):
            bad = next((k for k in value if isinstance(k, str) and _bad_text(k)), None)
            if bad is not None:
                return [*keys[: len(stack) - 1], key, bad][1:], f"field name {_bad_text(bad)}"
            stack.append(iter([(str(k), v) for k, v in value.items()]))
            keys.append(key)
        elif isinstance(value, list):
            stack.append(((str(i), v) for i, v in enumerate(value)))
            keys.append(key)
    return None


def _bad_value(value: Any, depth: int) -> str:
    if isinstance(value, str):
        return _bad_text(value)
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    if isinstance(value, int) and not -MAX_INT - 1 <= value <= MAX_INT:
        return "is too large a number"
    if isinstance(value, dict | list) and depth > MAX_DEPTH:
        return f"is nested more than {MAX_DEPTH} levels deep"
    return ""


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
