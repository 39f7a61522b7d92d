"""The retry policies (plumbing/retry.py): growing waits with jitter and a cap, an end, and the
real exception (never tenacity's RetryError) when they give up."""

from __future__ import annotations

import asyncio
import time

import pytest
from tenacity import retry_if_result
from tieline.plumbing.retry import HTTP, LOCK, NATS, POSTGRES, PROCESS, Policy

FAST = Policy("test", initial=0.001, maximum=0.004, jitter=0.001)


@pytest.mark.parametrize("policy", [NATS, POSTGRES, HTTP, PROCESS], ids=lambda p: p.name)
def test_waits_grow_with_jitter_and_stay_under_the_cap(policy: Policy) -> None:
    for failures in range(1, 12):
        base = min(policy.initial * 2 ** (failures - 1), policy.maximum - policy.jitter)
        waits = [policy.delay(failures) for _ in range(50)]
        assert all(base <= w <= base + policy.jitter <= policy.maximum for w in waits), waits
    # Jitter: fifty draws of the first wait are not all the same number.
    assert len({policy.delay(1) for _ in range(50)}) > 1


@pytest.mark.parametrize("policy", [NATS, POSTGRES, HTTP, PROCESS, LOCK], ids=lambda p: p.name)
def test_waits_at_the_cap_are_still_spread(policy: Policy) -> None:
    """Clients that failed together and reached the cap must not retry together: tenacity's
    own ``wait_exponential_jitter`` clamps every wait there to exactly ``maximum``."""
    waits = [policy.delay(40) for _ in range(200)]
    assert all(policy.maximum - policy.jitter <= w <= policy.maximum for w in waits), waits
    assert max(waits) - min(waits) > policy.jitter / 2, (min(waits), max(waits))


def test_a_jitter_larger_than_the_cap_is_refused() -> None:
    with pytest.raises(ValueError, match="jitter"):
        Policy("bad", initial=0.1, maximum=0.5, jitter=1.0)


def test_async_retrying_retries_the_named_errors_then_succeeds() -> None:
    calls: list[int] = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("refused")
        return "ok"

    assert asyncio.run(FAST.retrying(ConnectionError, attempts=5)(flaky)) == "ok"
    assert len(calls) == 3


def test_giving_up_raises_the_last_real_error() -> None:
    calls: list[int] = []

    async def down() -> None:
        calls.append(1)
        raise ConnectionError(f"refused #{len(calls)}")

    with pytest.raises(ConnectionError, match="refused #4"):
        asyncio.run(FAST.retrying(ConnectionError, attempts=4)(down))


def test_other_errors_are_not_retried() -> None:
    calls: list[int] = []

    def bad() -> None:
        calls.append(1)
        raise ValueError("malformed")

    with pytest.raises(ValueError):
        FAST.retrying_sync(ConnectionError, attempts=5)(bad)
    assert len(calls) == 1


def test_a_result_condition_gives_back_the_last_result() -> None:
    answers = iter([503, 503, 502])
    retrying = FAST.retrying_sync(
        retry_if_result(lambda status: status >= 500),
        attempts=3,
        give_up=lambda state: state.outcome.result() if state.outcome else None,
    )
    assert retrying(lambda: next(answers)) == 502


def test_a_deadline_ends_the_retries() -> None:
    calls: list[int] = []

    def down() -> None:
        calls.append(1)
        raise TimeoutError

    with pytest.raises(TimeoutError):
        FAST.retrying_sync(TimeoutError, deadline_s=0.05)(down)
    assert 2 <= len(calls) < 1000


# -- the bootstrap's use of a policy (services/runtime/bootstrap.py) --------------------------


def test_bootstrap_retries_a_step_until_it_returns_its_value() -> None:
    from tieline.services.runtime.bootstrap import _retry

    calls: list[int] = []

    async def step() -> tuple[str, int]:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionRefusedError("not yet")
        return ("TIELINE", 1)

    deadline = time.monotonic() + 10
    assert asyncio.run(_retry("streams", step, deadline, FAST)) == ("TIELINE", 1)
    assert len(calls) == 3


def test_bootstrap_gives_up_at_the_deadline_naming_the_step() -> None:
    from tieline.services.runtime.bootstrap import _retry

    async def step() -> None:
        raise ConnectionRefusedError("refused")

    with pytest.raises(RuntimeError, match="bootstrap: admin token failed: ConnectionRefusedError"):
        asyncio.run(_retry("admin token", step, time.monotonic() + 0.1, FAST))


def test_bootstrap_does_not_retry_a_malformed_setting() -> None:
    from tieline.services.runtime.bootstrap import _retry

    calls: list[int] = []

    async def step() -> None:
        calls.append(1)
        raise ValueError("a token must look like tl_...")

    with pytest.raises(ValueError):
        asyncio.run(_retry("admin token", step, time.monotonic() + 10, FAST))
    assert len(calls) == 1
