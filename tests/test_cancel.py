"""Cancelling a job at the service: before the provider call it is refunded at once and charged
nothing; after it the image is still made and charged (and marked for private delivery); a
ticket leaves the scheduler's line; a hammer of cancels and completions keeps the ledger exact."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import pytest

from bot.errors import Forbidden, JobCancelled
from bot.providers.base import GeneratedImage, ImageRequest
from bot.requests import GenerateRequest, GenerationResult, Progress
from bot.runtime import Runtime, open_runtime
from bot.scheduler import JobScheduler, Ticket
from tests.conftest import CountingProvider
from tests.test_discord_imagine import SDXL
from tests.test_scheduler import settle

GUILD = "g1"


class GatedProvider(CountingProvider):
    """The local renderer, each call held until ``gate`` opens (no timing in the tests)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def generate(self, request: ImageRequest) -> GeneratedImage:
        self.calls += 1
        await self.gate.wait()
        return await super(CountingProvider, self).generate(request)


class Job:
    """A generation running as a task, with the job id its progress events carry."""

    def __init__(self, runtime: Runtime, user: str, prompt: str, **options: Any) -> None:
        self.job_id: str | None = None
        self.stages: list[str] = []
        request = GenerateRequest(prompt=prompt, user_id=user, guild_id=GUILD,
                                  progress=self.on_progress, **options)  # fmt: skip
        self.task = asyncio.create_task(runtime.service.generate(request))

    def on_progress(self, event: Progress) -> None:
        self.job_id = self.job_id or event.job_id
        self.stages.append(event.stage)

    async def reserved(self) -> str:
        await until(lambda: self.job_id is not None or self.task.done())
        if self.job_id is None:
            self.task.result()  # it failed before its reservation: that error
            raise AssertionError("the job ended without being reserved")
        return self.job_id

    async def generating(self) -> str:
        await until(lambda: "generating" in self.stages or self.task.done())
        return await self.reserved()


async def until(check: Callable[[], object], tries: int = 4000) -> None:
    """Poll ``check`` (bounded) until it holds."""
    for _ in range(tries):
        if check():
            return
        await asyncio.sleep(0.005)
    raise TimeoutError("the condition never held")


@pytest.fixture
async def gated(make_settings):
    env = {"MAX_CONCURRENT_JOBS": 1, "MAX_JOBS_PER_USER": 4, "QUOTA_USER_DAILY_IMAGES": 100,
           "QUOTA_USER_DAILY_USD": 10, "QUOTA_GUILD_DAILY_USD": 100}  # fmt: skip
    async with open_runtime(make_settings(**env)) as runtime:
        provider = GatedProvider()
        runtime.service.provider = provider
        yield runtime, provider
        provider.gate.set()
        await runtime.service.drain(10.0)  # every job the test left finishes


async def test_a_ticket_leaves_the_line_and_those_behind_move_up() -> None:
    scheduler = JobScheduler(max_per_user=5, max_running=1, max_queue=10)
    release = asyncio.Event()
    tickets = {name: Ticket() for name in ("a", "b", "c")}

    async def job(name: str) -> None:
        async with scheduler.slot(name, None, tickets.get(name)):
            await release.wait()

    tasks = [asyncio.create_task(job(n)) for n in ("holder", "a", "b", "c")]
    await settle()
    assert [tickets[n].position for n in "abc"] == [1, 2, 3]
    assert tickets["b"].leave(JobCancelled())
    await settle()
    assert tasks[2].done() and isinstance(tasks[2].exception(), JobCancelled)
    assert [tickets[n].position for n in "ac"] == [1, 2] and scheduler.waiting == 2
    assert not tickets["b"].leave(JobCancelled())  # once only
    release.set()
    await asyncio.gather(tasks[0], tasks[1], tasks[3])
    assert not tickets["a"].leave(JobCancelled())  # it ran: nothing to leave
    assert (scheduler.running, scheduler.waiting) == (0, 0)


async def test_cancel_while_queued_refunds_at_once_and_charges_nothing(gated):
    runtime, provider = gated
    first = Job(runtime, "u1", "first picture")
    await first.reserved()
    second = Job(runtime, "u1", "second picture")
    job_id = await second.reserved()
    reserved = await runtime.ledger.get_job(job_id)
    assert reserved is not None and reserved.state == "reserved" and reserved.micro_usd > 0

    done = await runtime.service.cancel_job(job_id, requester_id="u1", guild_id=GUILD)
    assert (done.outcome, done.state, done.refunded_micro_usd) == (
        "cancelled", "refunded", reserved.micro_usd
    )
    job = await runtime.ledger.get_job(job_id)  # released before the answer, not later
    assert job is not None and (job.state, job.error_code) == ("refunded", "cancelled")
    with pytest.raises(JobCancelled):
        await second.task
    again = await runtime.service.cancel_job(job_id, requester_id="u1", guild_id=GUILD)
    assert again.outcome == "already"

    provider.gate.set()
    result = await first.task
    assert provider.calls == 1  # the cancelled job never reached the provider
    usage = await runtime.ledger.user_usage("u1", GUILD)
    assert (usage.images, usage.micro_usd) == (1, result.cost.micro_usd)
    assert await runtime.ledger.audit() == {"counter_mismatches": 0, "open_jobs": 0}


async def test_cancel_after_the_provider_call_started_is_charged_and_marked_private(gated):
    runtime, provider = gated
    running = Job(runtime, "u1", "a running picture")
    job_id = await running.reserved()
    await until(lambda: provider.calls > 0)
    done = await runtime.service.cancel_job(job_id, requester_id="u1", guild_id=GUILD)
    assert done.outcome == "too_late"
    assert (await runtime.service.cancel_job(job_id, requester_id="u1", guild_id=GUILD)).outcome \
        == "already"  # fmt: skip
    provider.gate.set()
    result = await running.task
    assert result.withdrawn and len(result.images) == 1
    job = await runtime.ledger.get_job(job_id)
    assert job is not None and job.state == "settled" and job.micro_usd == result.cost.micro_usd
    assert (await runtime.ledger.user_usage("u1", GUILD)).micro_usd == result.cost.micro_usd
    ended = await runtime.service.cancel_job(job_id, requester_id="u1", guild_id=GUILD)
    assert (ended.outcome, ended.state) == ("ended", "settled")


async def test_only_the_owner_or_an_admin_of_its_server_may_cancel(gated):
    runtime, _ = gated
    await Job(runtime, "u1", "a running picture").reserved()
    queued = Job(runtime, "u1", "a waiting picture")
    job_id = await queued.reserved()
    with pytest.raises(Forbidden):
        await runtime.service.cancel_job(job_id, requester_id="u2", guild_id=GUILD)
    with pytest.raises(Forbidden):  # an admin, but of another server
        await runtime.service.cancel_job(job_id, requester_id="u2", guild_id="g2", is_admin=True)
    assert (await runtime.ledger.get_job(job_id)).state == "reserved"
    done = await runtime.service.cancel_job(job_id, requester_id="u2", guild_id=GUILD,
                                            is_admin=True)  # fmt: skip
    assert done.outcome == "cancelled" and done.user_id == "u1"
    with pytest.raises(JobCancelled):
        await queued.task


async def test_the_queue_shows_places_etas_and_the_servers_queue(gated):
    runtime, _ = gated
    for n, user in enumerate(["u1", "u1", "u2", "u1"]):  # reserved in this order
        await Job(runtime, user, f"picture {n}").reserved()
    status = runtime.service.queue_status("u1", GUILD)
    assert [(j.stage, j.position) for j in status.jobs] == [
        ("generating", None), ("queued", 1), ("queued", 3)
    ]
    etas = [j.eta for j in status.jobs]
    assert etas == sorted(etas)  # each later in line is ready later
    assert (status.waiting_here, status.running_here, status.waiting_all) == (3, 1, 3)
    assert runtime.service.queue_status("u1", "g2").jobs == []


async def test_a_hammer_of_cancels_and_completions_keeps_the_ledger_exact(make_settings):
    env = {"MAX_CONCURRENT_JOBS": 3, "MAX_JOBS_PER_USER": 64, "MAX_QUEUE": 1000,
           "QUOTA_USER_DAILY_IMAGES": 1000, "QUOTA_USER_DAILY_USD": 100,
           "QUOTA_GUILD_DAILY_USD": 100, "QUOTA_DAILY_NEURONS": 100_000}  # fmt: skip
    async with open_runtime(make_settings(**env)) as runtime:
        provider = CountingProvider(delay=0.05)
        runtime.service.provider = provider
        rng = random.Random(11)
        small = {"model": SDXL, "width": 256, "height": 256, "steps": 4}
        jobs = [Job(runtime, f"u{n % 5}", f"hammer picture {n}", **small) for n in range(60)]
        owner = {id(job): f"u{n % 5}" for n, job in enumerate(jobs)}

        async def cancel(job: Job, when: str) -> str:
            """Press ❌ one to three times at once: as soon as reserved (mostly still in line),
            once generating (too late), or at some moment."""
            job_id = await (job.generating() if when == "generating" else job.reserved())
            if when == "random":
                await asyncio.sleep(rng.random() * 0.5)
            presses = await asyncio.gather(*(
                runtime.service.cancel_job(job_id, requester_id=owner[id(job)], guild_id=GUILD)
                for _ in range(rng.choice((1, 2, 3)))
            ))  # fmt: skip
            assert [p.outcome for p in presses].count("cancelled") <= 1
            return next((p.outcome for p in presses if p.outcome != "already"), "already")

        victims = rng.sample(jobs, 45)
        whens = ["reserved", "generating", "random"] * 15
        pairs = zip(victims, whens, strict=True)
        outcomes = await asyncio.gather(*(cancel(job, when) for job, when in pairs))
        results = await asyncio.gather(*(j.task for j in jobs), return_exceptions=True)

        cancelled = [r for r in results if isinstance(r, JobCancelled)]
        made = [r for r in results if isinstance(r, GenerationResult)]
        assert len(cancelled) + len(made) == 60
        assert outcomes.count("cancelled") == len(cancelled) > 0
        assert sum(r.withdrawn for r in made) == outcomes.count("too_late") >= 15
        assert provider.calls == len(made)
        today = runtime.ledger.today()
        report = await runtime.ledger.report(today, today, guild_id=GUILD)
        assert report.total_images == len(made)
        assert report.total_micro_usd == sum(r.cost.micro_usd for r in made)
        guild = await runtime.ledger.usage("guild", GUILD)
        assert (guild.images, guild.micro_usd) == (report.total_images, report.total_micro_usd)
        assert await runtime.ledger.audit() == {"counter_mismatches": 0, "open_jobs": 0}
        assert all(runtime.service.queue_status(f"u{n}", GUILD).jobs == [] for n in range(5))
