"""The worker's garbage-collector setting (projections/worker_support.py: tune_gc)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from tieline.projections.worker_support import GC_YOUNG_THRESHOLD, tune_gc


@pytest.fixture
def restore_gc() -> Iterator[None]:
    saved = gc.get_threshold()
    yield
    gc.set_threshold(*saved)


@pytest.mark.usefixtures("restore_gc")
def test_tune_gc_raises_only_the_first_threshold() -> None:
    gc.set_threshold(700, 10, 10)
    tune_gc()
    assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, 10, 10)


@pytest.mark.usefixtures("restore_gc")
def test_tune_gc_never_lowers_a_higher_threshold_nor_turns_collection_on() -> None:
    gc.set_threshold(GC_YOUNG_THRESHOLD * 2, 5, 5)
    tune_gc()
    assert gc.get_threshold() == (GC_YOUNG_THRESHOLD * 2, 5, 5)
    gc.set_threshold(0, 10, 10)  # 0: automatic collection off
    tune_gc()
    assert gc.get_threshold() == (0, 10, 10)
