"""The chaos soak (tests/faults/soak.py), short: ``TIELINE_SOAK_MINUTES`` (default 2)."""

from __future__ import annotations

import os
from pathlib import Path

from tests.faults.soak import soak

MINUTES = float(os.environ.get("TIELINE_SOAK_MINUTES", "2"))


async def test_chaos_soak_loses_and_doubles_nothing(tmp_path: Path) -> None:
    verdict, coverage = await soak(MINUTES, tmp_path)
    print(verdict.line)
    assert not coverage, coverage
    assert verdict.lost == 0 and verdict.double_counted == 0 and not verdict.problems, (
        verdict.line + "\n" + "\n".join(verdict.problems)
    )
