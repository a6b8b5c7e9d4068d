"""FakeClock (moved by hand) and SystemClock (real)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import anyio
import pytest

from openbuda.clock import SystemClock
from openbuda.ports import Clock
from openbuda.testing import FakeClock

pytestmark = pytest.mark.anyio

START = datetime(2030, 5, 1, 12, 0, tzinfo=UTC)


def test_both_clocks_are_clocks() -> None:
    clocks: list[Clock] = [FakeClock(), SystemClock()]
    assert all(clock.now().tzinfo is not None for clock in clocks)


def test_now_is_controlled() -> None:
    clock = FakeClock(START)

    assert clock.now() == START
    assert clock.advance(90) == START + timedelta(seconds=90)
    assert clock.now() == START + timedelta(seconds=90)
    clock.set(START + timedelta(days=1))
    assert clock.now() == START + timedelta(days=1)


def test_time_does_not_go_backwards_or_lose_its_zone() -> None:
    clock = FakeClock(START)

    with pytest.raises(ValueError, match="backwards"):
        clock.advance(-1)
    with pytest.raises(ValueError, match="backwards"):
        clock.set(START - timedelta(seconds=1))
    with pytest.raises(ValueError, match="timezone"):
        FakeClock(datetime(2030, 1, 1))


async def test_sleep_advances_the_clock_by_default() -> None:
    clock = FakeClock(START)

    with anyio.fail_after(1):
        await clock.sleep(3600)
        await clock.sleep(0.5)

    assert clock.now() == START + timedelta(seconds=3600.5)
    assert clock.sleeps == [3600, 0.5]


async def test_sleep_waits_for_the_test_to_move_the_clock() -> None:
    clock = FakeClock(START, auto_advance=False)
    woke: list[datetime] = []

    async def sleeper(seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append(clock.now())

    with anyio.fail_after(2):
        async with anyio.create_task_group() as group:
            group.start_soon(sleeper, 10)
            group.start_soon(sleeper, 30)
            await clock.wait_for_sleepers(2)
            assert clock.sleeping == 2

            clock.advance(5)
            await anyio.sleep(0.01)
            assert woke == []

            clock.advance(5)
            await anyio.sleep(0.01)
            assert woke == [START + timedelta(seconds=10)]

            clock.advance(60)

    assert woke == [START + timedelta(seconds=10), START + timedelta(seconds=70)]
    assert clock.sleeping == 0


async def test_a_waiting_sleep_is_cancellable() -> None:
    clock = FakeClock(auto_advance=False)

    with anyio.move_on_after(0.05):
        await clock.sleep(10)

    assert clock.sleeping == 0


async def test_zero_sleep_returns_at_once() -> None:
    clock = FakeClock(START, auto_advance=False)

    with anyio.fail_after(1):
        await clock.sleep(0)

    assert clock.now() == START


async def test_system_clock() -> None:
    clock = SystemClock()
    before = datetime.now(UTC)

    await clock.sleep(0.01)
    await clock.sleep(-1)

    assert clock.now() >= before + timedelta(seconds=0.01)
    assert clock.now().tzinfo is UTC
