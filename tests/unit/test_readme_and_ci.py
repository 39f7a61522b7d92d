"""The README's two commands, and CI running exactly the README's test command."""

from __future__ import annotations

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
CI_RUN = ROOT / ".ci" / "run"

RUN_COMMAND = "pip install -e . && tieline up"
TEST_COMMAND = "pip install -e '.[test]' && python -m pytest"

FENCE = re.compile(r"^```[^\n`]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def fenced_blocks(text: str) -> list[str]:
    """The contents of every fenced code block, stripped."""
    return [m.group(1).strip() for m in FENCE.finditer(text)]


def test_readme_has_exactly_the_two_fenced_commands() -> None:
    blocks = fenced_blocks(README.read_text())
    assert RUN_COMMAND in blocks, f"README needs a fenced block that is exactly {RUN_COMMAND!r}"
    assert TEST_COMMAND in blocks, f"README needs a fenced block that is exactly {TEST_COMMAND!r}"
    install_blocks = [b for b in blocks if "pip install" in b]
    assert install_blocks == [RUN_COMMAND, TEST_COMMAND], (
        "the README's install commands must be exactly the two commands, run then test, each "
        f"alone in its fenced block; found {install_blocks!r}"
    )


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    readme_test_commands = [b for b in fenced_blocks(README.read_text()) if "pytest" in b]
    assert readme_test_commands == [TEST_COMMAND]
    lines = [line.strip() for line in CI_RUN.read_text().splitlines()]
    assert TEST_COMMAND in lines, f".ci/run must run the README's test command {TEST_COMMAND!r}"


def test_ci_treats_pytest_exit_code_5_as_a_failure() -> None:
    lines = [line.strip() for line in CI_RUN.read_text().splitlines()]
    at = lines.index(TEST_COMMAND)
    # The command's status is captured right after it ...
    captured = re.fullmatch(r"(\w+)=\$\?", lines[at + 1])
    assert captured, f".ci/run must capture the test command's exit code, got {lines[at + 1]!r}"
    var = captured.group(1)
    # ... and a check of that status against 5 exits non-zero.
    check = re.compile(rf"""^if\s+\[\[?\s+"?\$\{{?{var}\}}?"?\s+(-eq|==|=)\s+"?5"?\s+\]\]?""")
    starts = [i for i, line in enumerate(lines) if i > at and check.match(line)]
    assert starts, f".ci/run must check ${var} for pytest's exit code 5 (no tests collected)"
    body = lines[starts[0] + 1 : lines.index("fi", starts[0])]
    exits = [re.fullmatch(r"exit\s+(\d+)", line) for line in body]
    codes = [int(m.group(1)) for m in exits if m]
    assert codes and all(code != 0 for code in codes), (
        f"exit code 5 must make .ci/run fail, but the branch is {body!r}"
    )
    # Any other status is passed through, so test failures fail CI too.
    last = [line for line in lines if line][-1]
    assert re.fullmatch(rf'exit\s+"?\$\{{?{var}\}}?"?', last), (
        f".ci/run must end by passing the test command's status through, not {last!r}"
    )


def test_ci_script_is_executable_and_strict() -> None:
    assert os.access(CI_RUN, os.X_OK), ".ci/run must be executable"
    text = CI_RUN.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
