"""JobScheduler: per-user and overall slots, a bounded first-come queue that skips a user at their
limit, positions told as they change, and a slot granted to a cancelled waiter handed back."""

from __future__ import annotations

import asyncio

import pytest

from bot.errors import Busy
from bot.scheduler import JobScheduler


async def settle() -> None:
    """Let every ready task run until it blocks again."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_user_at_their_limit_does_not_hold_up_the_next_in_line() -> None:
    scheduler = JobScheduler(max_per_user=1, max_running=2, max_queue=10)
    started: list[str] = []
    gates = {name: asyncio.Event() for name in ("a1", "x", "a2", "b")}

    async def job(name: str, user: str) -> None:
        async with scheduler.slot(user):
            started.append(name)
            await gates[name].wait()

    first = asyncio.create_task(job("a1", "a"))
    other = asyncio.create_task(job("x", "x"))
    await settle()
    second_a = asyncio.create_task(job("a2", "a"))  # queued first, but "a" is at its limit
    await settle()
    b = asyncio.create_task(job("b", "b"))
    await settle()
    assert (started, scheduler.waiting) == (["a1", "x"], 2)
    gates["x"].set()  # an overall slot frees: "b" may run, "a2" may not (a1 still runs)
    await settle()
    assert started == ["a1", "x", "b"]
    gates["a1"].set()
    await settle()
    assert started == ["a1", "x", "b", "a2"]
    for gate in gates.values():
        gate.set()
    await asyncio.gather(first, other, second_a, b)
    assert (scheduler.running, scheduler.waiting) == (0, 0)


async def test_waiters_are_told_their_place_as_it_changes() -> None:
    scheduler = JobScheduler(max_per_user=5, max_running=1, max_queue=10)
    places: dict[str, list[int]] = {"w1": [], "w2": [], "w3": []}
    release = asyncio.Event()

    async def job(name: str) -> None:
        async with scheduler.slot(name, places[name].append if name in places else None):
            await release.wait()

    holder = asyncio.create_task(job("holder"))
    await settle()
    waiters = [asyncio.create_task(job(name)) for name in places]
    await settle()
    assert places == {"w1": [1], "w2": [2], "w3": [3]}
    release.set()
    await asyncio.gather(holder, *waiters)
    # Each moved up one place at a time, and never heard the same place twice.
    assert places == {"w1": [1], "w2": [2, 1], "w3": [3, 2, 1]}


async def test_the_queue_is_bounded_and_a_refusal_takes_no_place() -> None:
    scheduler = JobScheduler(max_per_user=1, max_running=1, max_queue=2)
    release = asyncio.Event()

    async def job() -> None:
        async with scheduler.slot("u"):
            await release.wait()

    tasks = [asyncio.create_task(job()) for _ in range(3)]  # one runs, two wait
    await settle()
    for _ in range(20):
        with pytest.raises(Busy) as refused:
            async with scheduler.slot("someone else"):
                pytest.fail("a full queue must refuse")
        assert "2 jobs are already waiting" in refused.value.user_message
    assert (scheduler.running, scheduler.waiting) == (1, 2)
    release.set()
    await asyncio.gather(*tasks)
    assert (scheduler.running, scheduler.waiting) == (0, 0)


async def test_a_slot_granted_to_a_waiter_cancelled_before_it_ran_goes_to_the_next() -> None:
    scheduler = JobScheduler(max_per_user=1, max_running=1, max_queue=10)
    entered: list[str] = []

    async def job(name: str) -> None:
        async with scheduler.slot("u"):
            entered.append(name)

    async with scheduler.slot("u"):
        granted = asyncio.create_task(job("granted"))
        following = asyncio.create_task(job("following"))
        await settle()
        assert scheduler.waiting == 2
    # Leaving the slot granted it to the first waiter, which has not run yet: cancel it now.
    assert scheduler.running == 1 and scheduler.waiting == 1
    granted.cancel()
    await asyncio.gather(granted, following, return_exceptions=True)
    assert granted.cancelled()
    assert entered == ["following"]
    assert (scheduler.running, scheduler.waiting) == (0, 0)


async def test_many_users_hammering_never_exceed_either_limit() -> None:
    scheduler = JobScheduler(max_per_user=2, max_running=5, max_queue=1000)
    active: dict[str, int] = {}
    peak_total = peak_user = 0

    async def job(user: str) -> None:
        nonlocal peak_total, peak_user
        async with scheduler.slot(user):
            active[user] = active.get(user, 0) + 1
            peak_total = max(peak_total, sum(active.values()))
            peak_user = max(peak_user, active[user])
            await asyncio.sleep(0)
            active[user] -= 1

    await asyncio.gather(*(job(f"user{n % 3}") for n in range(500)))
    assert (peak_total, peak_user) == (5, 2)
    assert (scheduler.running, scheduler.waiting) == (0, 0)
