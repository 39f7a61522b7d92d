"""Hooks for the schemathesis run of tests/e2e/test_contract.py (loaded by its command line
through SCHEMATHESIS_HOOKS).

- The batch endpoint takes ``application/x-ndjson`` (a string of JSON Lines): sent as the
  text serializer sends ``text/plain``.
- CPython 3.11 before 3.11.8 can raise ``SystemError: AST constructor recursion depth
  mismatch`` from ``ast.parse`` called deep in a recursion (CPython gh-106905); Hypothesis
  calls it only to describe a lambda in a strategy's repr, so that description falls back to
  a plain name instead of failing the whole operation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import schemathesis
from hypothesis.internal import lambda_sources

schemathesis.serializer.alias("application/x-ndjson", "text/plain")

_describe: Callable[[Any], str] = lambda_sources._lambda_description


def _described(f: Any) -> str:
    try:
        return _describe(f)
    except SystemError:  # gh-106905, see the module docstring
        return "lambda"


lambda_sources._lambda_description = _described
