"""Production code stays readable: every function under 60 lines, every module under 600.

The limits come from the project guide. A function is measured from its ``def`` line to its
last line (decorators left out, docstring and comments counted: they are part of what a reader
has to take in). The test reads the source with :mod:`ast`, so it needs no import of the code.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("services", "projections", "plumbing", "events_schema")
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 600

# Files another helper is splitting on its own branch while this test lands. The lead empties
# this list after merging those branches; a file listed here is skipped by both checks, and a
# listed file that has come within the limits fails the test below, so the list cannot go stale.
# (services/service_app.py is not listed: main split it with the write-side change, b13a930.)
STILL_BEING_SPLIT: frozenset[str] = frozenset()  # empty since every branch merged


def _modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def _long_functions(path: Path) -> list[str]:
    """``name:line (N lines)`` for each function or method in ``path`` over the limit."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            assert node.end_lineno is not None
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                found.append(f"{node.name}:{node.lineno} ({length} lines)")
    return found


def _module_lines(path: Path) -> int:
    return len(path.read_text().splitlines())


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_the_packages_are_where_the_test_looks() -> None:
    # Guards against a test that passes because it read nothing.
    assert len(_modules()) > 50


@pytest.mark.parametrize("path", _modules(), ids=_rel)
def test_functions_and_modules_fit_the_limits(path: Path) -> None:
    if _rel(path) in STILL_BEING_SPLIT:
        pytest.skip("being split on another branch (STILL_BEING_SPLIT)")
    lines = _module_lines(path)
    assert lines <= MAX_MODULE_LINES, f"{_rel(path)} has {lines} lines (> {MAX_MODULE_LINES})"
    long_ones = _long_functions(path)
    assert not long_ones, f"{_rel(path)}: functions over {MAX_FUNCTION_LINES} lines: {long_ones}"


def test_the_allow_list_names_only_files_still_over_a_limit() -> None:
    stale = []
    for rel in sorted(STILL_BEING_SPLIT):
        path = ROOT / rel
        if not path.exists():
            stale.append(f"{rel} (no such file)")
        elif _module_lines(path) <= MAX_MODULE_LINES and not _long_functions(path):
            stale.append(f"{rel} (within the limits now)")
    assert not stale, f"remove from STILL_BEING_SPLIT: {stale}"


def test_the_checker_sees_a_long_function(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    sample = tmp_path / "sample.py"
    sample.write_text(f"def short():\n    return 1\n\n\ndef too_long():\n{body}\n")
    assert _long_functions(sample) == [f"too_long:5 ({MAX_FUNCTION_LINES + 1} lines)"]
