"""Leases on a real SQLite file shared by several ledgers (as processes share it): a live
process's jobs are left alone, a stopped one's are closed once its lease runs out, at once
after a clean stop, and processes racing to close the same orphans close each exactly once."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bot.catalog import Cost
from bot.leases import LeaseKeeper
from bot.ledger.ledger import Ledger, NewJob
from bot.recovery import CrashRecovery, RecoveryReport
from bot.stores.local import LocalImageStore

UNIT = Cost(634, 57_600)
LEASE = 10.0


class Clock:
    """One clock for every 'process', moved by the test."""

    def __init__(self) -> None:
        self.now = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def generate_job(user: str) -> NewJob:
    params = {"prompt": "p", "unit_micro_usd": UNIT.micro_usd,
              "unit_milli_neurons": UNIT.milli_neurons, "slots": []}  # fmt: skip
    return NewJob("generate", user, "", UNIT, 1, "m", None, params)


async def process(path: Path, clock: Clock, name: str) -> Ledger:
    """A 'process': a ledger of its own on the shared file, registered with a lease."""
    ledger = await Ledger.open(path, clock=clock, instance_id=name)
    await ledger.leases.register(LEASE)
    return ledger


def recovery(ledger: Ledger, tmp_path: Path) -> CrashRecovery:
    return CrashRecovery(ledger, LocalImageStore(tmp_path / "images", "http://127.0.0.1:1"))


async def reserve_open_jobs(ledger: Ledger, count: int) -> list[str]:
    """``count`` open jobs, each of its own user (u0, u1, …), so no daily limit stops them."""
    jobs = []
    for n in range(count):
        limits = await ledger.limits_for(f"u{n}", "")
        jobs.append((await ledger.reserve(generate_job(f"u{n}"), limits)).id)
    return jobs


async def test_a_live_process_jobs_are_left_alone_until_its_lease_runs_out(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "bot.sqlite3"
    a, b = await process(path, clock, "a"), await process(path, clock, "b")
    try:
        jobs = await reserve_open_jobs(a, 3)
        clock.advance(LEASE - 1)  # a is slow to renew, but its lease still holds
        assert await recovery(b, tmp_path).run() == RecoveryReport()
        assert [(await b.get_job(j)).state for j in jobs] == ["reserved"] * 3  # type: ignore[union-attr]

        assert await a.leases.renew(LEASE)  # renewed in time: still a's
        clock.advance(LEASE - 1)
        assert await recovery(b, tmp_path).run() == RecoveryReport()

        clock.advance(2)  # a stopped renewing (killed): its lease ran out
        assert await recovery(b, tmp_path).run() == RecoveryReport(refunded=3)
        for job_id in jobs:
            job = await b.get_job(job_id)
            assert job is not None and (job.state, job.error_code) == ("refunded", "interrupted")
        assert (await b.user_usage("u1")).images == 0
        assert await b.audit() == {"counter_mismatches": 0, "open_jobs": 0}

        # a comes back late: its renewal says the lease had lapsed, and it is live again.
        assert not await a.leases.renew(LEASE)
        assert await a.leases.renew(LEASE)
    finally:
        await a.close()
        await b.close()


async def test_a_process_never_closes_its_own_running_jobs(tmp_path: Path) -> None:
    clock = Clock()
    a = await process(tmp_path / "bot.sqlite3", clock, "a")
    try:
        await reserve_open_jobs(a, 2)
        clock.advance(LEASE * 5)  # even with its own lease lapsed, they are running here
        assert await recovery(a, tmp_path).run() == RecoveryReport()
        assert (await a.audit())["open_jobs"] == 2
    finally:
        await a.close()


async def test_after_a_clean_stop_what_was_left_open_is_closed_at_once(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "bot.sqlite3"
    a, b = await process(path, clock, "a"), await process(path, clock, "b")
    try:
        await reserve_open_jobs(a, 2)
        keeper = LeaseKeeper(a, recovery(a, tmp_path), LEASE)
        await keeper.stop()  # gives the lease up without waiting for it to run out
        assert await recovery(b, tmp_path).run() == RecoveryReport(refunded=2)
    finally:
        await a.close()
        await b.close()


async def test_processes_racing_for_the_same_orphans_close_each_exactly_once(
    tmp_path: Path,
) -> None:
    clock = Clock()
    path = tmp_path / "bot.sqlite3"
    dead = await process(path, clock, "dead")
    sweepers = [await process(path, clock, f"live-{n}") for n in range(4)]
    try:
        jobs = await reserve_open_jobs(dead, 40)
        await dead.close()
        clock.advance(LEASE + 1)
        for sweeper in sweepers:
            await sweeper.leases.renew(LEASE)  # the live ones renewed on time
        reports = await asyncio.gather(*(recovery(s, tmp_path).run() for s in sweepers))
        assert sum(r.refunded for r in reports) == len(jobs)  # each closed once, by one of them
        notes = [(await sweepers[0].get_job(j)) for j in jobs]
        assert all(job is not None and job.state == "refunded" for job in notes)
        assert await sweepers[0].audit() == {"counter_mismatches": 0, "open_jobs": 0}
        assert sum([(await sweepers[0].user_usage(f"u{n}")).images for n in range(40)]) == 0
    finally:
        for sweeper in sweepers:
            await sweeper.close()


async def test_the_keeper_sweeps_on_its_own_beat(tmp_path: Path) -> None:
    """A running keeper closes another process's orphans without anyone calling it."""
    path = tmp_path / "bot.sqlite3"
    dead = await Ledger.open(path, instance_id="dead")
    live = await Ledger.open(path)
    keeper = LeaseKeeper(live, recovery(live, tmp_path), lease_seconds=0.3)
    try:
        await dead.leases.register(0.3)
        [job_id] = await reserve_open_jobs(dead, 1)
        await keeper.start()  # dead's lease still holds: nothing to close yet
        assert (await live.get_job(job_id)).state == "reserved"  # type: ignore[union-attr]
        for _ in range(200):
            await asyncio.sleep(0.05)
            if (await live.get_job(job_id)).state == "refunded":  # type: ignore[union-attr]
                break
        else:
            raise AssertionError("the keeper never closed the orphan")
    finally:
        await keeper.stop()
        await dead.close()
        await live.close()


class StuckRecovery(CrashRecovery):
    """A sweep that never ends once the keeper is running (a slow store, thousands of
    orphans): the first run, at start-up, returns at once."""

    def __init__(self, ledger: Ledger, tmp_path: Path) -> None:
        super().__init__(ledger, LocalImageStore(tmp_path / "images", "http://127.0.0.1:1"))
        self.runs = 0

    async def run(self) -> RecoveryReport:
        self.runs += 1
        if self.runs > 1:
            await asyncio.Event().wait()
        return RecoveryReport()


async def test_a_long_sweep_never_holds_the_renewal_back(tmp_path: Path) -> None:
    """While the keeper's sweep is stuck, its lease is still renewed: its running job never
    becomes another process's orphan."""
    path = tmp_path / "bot.sqlite3"
    live = await Ledger.open(path)
    other = await Ledger.open(path, instance_id="other")
    stuck = StuckRecovery(live, tmp_path)
    keeper = LeaseKeeper(live, stuck, lease_seconds=0.3)
    try:
        await keeper.start()
        await reserve_open_jobs(live, 1)
        for _ in range(40):  # 2 s: several leases' worth, the sweep stuck all along
            await asyncio.sleep(0.05)
            assert await other.leases.orphans() == []
        assert stuck.runs == 2  # the sweep did start, and is still stuck
    finally:
        await keeper.stop()
        await other.close()
        await live.close()
