"""Read-your-writes with partitioned workers: the api takes the smallest partition's
NOTIFY-ed checkpoint, never one partition's alone."""

from __future__ import annotations

from tieline.plumbing.config import Settings
from tieline.projections.generations import Generation
from tieline.services.api.runtime import ReadYourWrites


def test_a_partitioned_generation_has_reached_its_slowest_partition() -> None:
    ryw = ReadYourWrites(Settings(), connections=None)  # type: ignore[arg-type]  # unused here
    one = Generation(1, "s_g1", 4, "live", "c-g1")
    two = Generation(2, "s_g2", 4, "live", "c-g2", partitions=2)
    ryw.committed("s_g1 40")
    assert ryw.notified(one) == 40
    ryw.committed("s_g2/p1 90")
    assert ryw.notified(two) == 0  # partition 0 has said nothing yet
    ryw.committed("s_g2/p0 70")
    assert ryw.notified(two) == 70
    ryw.committed("s_g2 75")  # a follow-up scan's notification (at the minimum) wakes only
    ryw.committed("s_g2/p0 95")
    assert ryw.notified(two) == 90
