"""`transient_retry`: limits, no limit, the stop event, and who is told of each retry."""

from __future__ import annotations

import asyncio

import pytest

from worker.retry import transient_retry


async def _run(policy: object, failures: int, error: BaseException) -> int:
    """Attempts made by `policy` on work that fails `failures` times, then succeeds."""
    attempts = 0
    async for attempt in policy:  # type: ignore[attr-defined]
        with attempt:
            attempts += 1
            if attempts <= failures:
                raise error
    return attempts


async def test_with_no_limit_server_trouble_is_retried_until_it_passes() -> None:
    told: list[BaseException] = []
    policy = transient_retry(attempts=0, max_delay_s=0, backoff_max_s=0.001, on_retry=told.append)
    assert await _run(policy, 40, ConnectionResetError()) == 41
    assert len(told) == 40


async def test_a_limit_of_attempts_raises_the_last_error() -> None:
    policy = transient_retry(attempts=3, max_delay_s=0, backoff_max_s=0.001)
    with pytest.raises(ConnectionResetError):
        await _run(policy, 10, ConnectionResetError())


async def test_what_is_not_server_trouble_is_never_retried() -> None:
    told: list[BaseException] = []
    policy = transient_retry(attempts=0, max_delay_s=0, on_retry=told.append)
    with pytest.raises(ValueError, match="a bug"):
        await _run(policy, 1, ValueError("a bug"))
    assert told == []


async def test_a_set_stop_event_ends_the_sleep_and_the_attempts_at_once() -> None:
    stop = asyncio.Event()
    policy = transient_retry(attempts=0, max_delay_s=0, backoff_max_s=3600, stop=stop)
    attempts = 0
    failed = asyncio.Event()

    async def work() -> None:
        nonlocal attempts
        async for attempt in policy:
            with attempt:
                attempts += 1
                failed.set()
                raise ConnectionResetError

    task = asyncio.create_task(work())
    await failed.wait()
    await asyncio.sleep(0.01)  # in its backoff sleep of up to an hour now
    stop.set()
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(task, timeout=30)  # the bound of a hung test, not a timing
    assert attempts == 1
