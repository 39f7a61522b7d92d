"""The checkpoint may only move over sequences that were applied or proven empty.

:func:`continuing` is the check the store runs inside the transaction that moves the
checkpoint; these cases are the ways a batch can fail to continue it.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tieline.projections.store import Gap, Item, SequenceGapError, Skipped, continuing


def seqs(items: list[Item]) -> list[int]:
    return [i.seq for i in items]


def test_a_batch_right_after_the_checkpoint_is_applied_whole() -> None:
    items: list[Item] = [Skipped(11), Skipped(12), Skipped(13)]
    assert seqs(continuing(items, 10)) == [11, 12, 13]


def test_a_redelivered_prefix_is_dropped_and_the_rest_continues() -> None:
    items: list[Item] = [Skipped(9), Skipped(10), Skipped(11)]
    assert seqs(continuing(items, 10)) == [11]


def test_a_fully_redelivered_batch_is_a_no_op() -> None:
    assert continuing([Skipped(5), Skipped(6)], 10) == []


def test_a_batch_that_starts_after_a_hole_is_refused() -> None:
    with pytest.raises(SequenceGapError) as err:
        continuing([Skipped(15), Skipped(16)], 10)
    assert (err.value.expected, err.value.got, err.value.checkpoint) == (11, 15, 10)


def test_a_hole_inside_a_batch_is_refused() -> None:
    with pytest.raises(SequenceGapError):
        continuing([Skipped(11), Skipped(13)], 10)


def test_out_of_order_items_are_refused() -> None:
    with pytest.raises(SequenceGapError):
        continuing([Skipped(11), Skipped(12), Skipped(11)], 10)


def test_a_proven_gap_lets_the_checkpoint_move_over_it() -> None:
    items: list[Item] = [Skipped(11), Gap(12, 14), Skipped(15)]
    assert seqs(continuing(items, 10)) == [11, 14, 15]


def test_a_gap_that_began_before_the_checkpoint_still_covers_the_rest() -> None:
    assert seqs(continuing([Gap(8, 12), Skipped(13)], 10)) == [12, 13]


def test_a_gap_that_does_not_reach_the_next_item_is_refused() -> None:
    with pytest.raises(SequenceGapError):
        continuing([Skipped(11), Gap(12, 13), Skipped(15)], 10)


@given(
    checkpoint=st.integers(0, 50),
    present=st.lists(st.integers(1, 120), unique=True, min_size=1, max_size=40),
)
def test_whatever_is_delivered_the_checkpoint_never_skips_a_sequence(
    checkpoint: int, present: list[int]
) -> None:
    """Any delivered subset of sequences: either everything up to the batch's end is
    covered (the result is contiguous from the checkpoint) or the batch is refused."""
    items: list[Item] = [Skipped(s) for s in sorted(present)]
    try:
        fresh = continuing(items, checkpoint)
    except SequenceGapError:
        return
    assert seqs(fresh) == list(range(checkpoint + 1, checkpoint + 1 + len(fresh)))
