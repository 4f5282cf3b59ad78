"""Single-flight across processes: two runtimes (each its own instance id, lease, scheduler and
in-process single-flight) over one ledger, a real SQLite file or a real PostgreSQL database,
given the same request at once make one generation; the follower is served the leader's image
free, or makes it itself (charged as usual) when the leader fails, is cancelled or dies; no
flight row outlives its flight."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bot.catalog import Cost
from bot.config import Settings
from bot.errors import JobCancelled, ProviderUnavailable
from bot.ledger import Ledger
from bot.providers.base import GeneratedImage, ImageRequest
from bot.providers.local import LocalProvider
from bot.recovery import CrashRecovery
from bot.requests import GenerateRequest, GenerationResult
from bot.runtime import Runtime, open_runtime
from bot.stores.local import LocalImageStore
from tests.conftest import CountingProvider
from tests.test_leases import Clock

pytestmark = pytest.mark.both_ledgers

UNIT = Cost(634, 57_600)  # the default model at 1024×1024


class GatedProvider(LocalProvider):
    """Counts calls; each waits for ``gate``, then renders (or raises ``error``)."""

    def __init__(self, error: Exception | None = None) -> None:
        self.calls = 0
        self.error = error
        self.gate = asyncio.Event()
        self.started = asyncio.Event()

    async def generate(self, request: ImageRequest) -> GeneratedImage:
        self.calls += 1
        self.started.set()
        await self.gate.wait()
        if self.error is not None:
            raise self.error
        return await super().generate(request)


def ask(user: str, prompt: str = "a lighthouse at dusk", **fields: Any) -> GenerateRequest:
    return GenerateRequest(prompt=prompt, user_id=user, guild_id="g", **fields)


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(3000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition never held")


def joins(runtime: Runtime, outcome: str) -> float:
    """``imagebot_flight_joins_total{outcome}`` as a scrape of the runtime's /metrics reads it."""
    return joins_in(runtime.metrics.exposition().decode(), outcome)


def joins_in(text: str, outcome: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "imagebot_flight_joins_total" and sample.labels == {
                "outcome": outcome
            }:
                return sample.value
    return 0.0


async def books(runtime: Runtime) -> tuple[int, int]:
    today = runtime.ledger.today()
    report = await runtime.ledger.report(today, today)
    assert await runtime.ledger.audit() == {"counter_mismatches": 0, "open_jobs": 0}
    return report.total_images, report.total_micro_usd


Tasks = tuple[asyncio.Task[GenerationResult], asyncio.Task[GenerationResult]]


async def lead_and_follow(a: Runtime, b: Runtime, leading: GatedProvider) -> Tasks:
    """a leads a request on ``leading`` (held at its gate), b waits for a's flight; b's own
    provider is ``working``."""
    a.service.provider = leading
    leader = asyncio.create_task(a.service.generate(ask("u1")))
    await leading.started.wait()  # a claimed the flight and is generating
    follower = asyncio.create_task(b.service.generate(ask("u2")))
    await until(lambda: b.service.generation.shared.waiters == 1)
    return leader, follower


async def made_by_follower(
    follower: asyncio.Task[GenerationResult], working: CountingProvider
) -> None:
    """The follower made the image itself, charged as usual."""
    result = await follower
    assert working.calls == 1 and not result.cached and result.cost == UNIT


@pytest.fixture
async def pair(make_settings: Callable[..., Settings]) -> AsyncIterator[tuple[Runtime, Runtime]]:
    """Two 'processes' on one ledger and one image folder. The lease is long, so neither
    keeper renews or sweeps during a test unless the test makes it."""
    settings = make_settings(JOB_LEASE_SECONDS=3600)
    async with open_runtime(settings) as a, open_runtime(settings) as b:
        assert a.leases.instance_id != b.leases.instance_id
        yield a, b


async def test_two_processes_given_the_same_request_make_one_image(pair):  # type: ignore[no-untyped-def]
    a, b = pair
    provider = CountingProvider(delay=0.3)
    a.service.provider = b.service.provider = provider
    first, second = await asyncio.gather(
        a.service.generate(ask("u1")), b.service.generate(ask("u2"))
    )
    assert provider.calls == 1
    assert first.images[0].storage_key == second.images[0].storage_key
    assert sorted([first.cached, second.cached]) == [False, True]  # the follower's is free
    assert {first.cost, second.cost} == {UNIT, Cost(0, 0)}
    assert joins(a, "image") + joins(b, "image") == 1
    assert await books(a) == (1, UNIT.micro_usd)
    assert await a.ledger.flights.count() == 0


async def test_a_leader_that_fails_leaves_the_follower_to_make_it_charged_as_usual(pair):  # type: ignore[no-untyped-def]
    a, b = pair
    failing = GatedProvider(ProviderUnavailable("Cloudflare is out of capacity."))
    b.service.provider = working = CountingProvider()
    leader, follower = await lead_and_follow(a, b, failing)
    failing.gate.set()
    with pytest.raises(ProviderUnavailable):
        await leader
    await made_by_follower(follower, working)
    assert joins(b, "failed") == 1
    assert await books(a) == (1, UNIT.micro_usd)  # a's job was refunded
    assert await a.ledger.flights.count() == 0


async def test_a_leader_whose_lease_runs_out_is_taken_over(pair):  # type: ignore[no-untyped-def]
    """The leader 'dies': it stops renewing and its lease runs out (its task hangs, as a
    killed process's work would); the follower takes the flight over and makes the image."""
    a, b = pair
    b.service.provider = working = CountingProvider()
    leader, follower = await lead_and_follow(a, b, GatedProvider())
    assert await a.ledger.flights.count() == 1
    await a.ledger.database.write(  # a's lease ran out (it never renewed)
        "UPDATE instances SET lease_until = '2000-01-01T00:00:00.000+00:00' WHERE id = ?",
        (a.leases.instance_id,),
    )
    await made_by_follower(follower, working)
    assert joins(b, "taken_over") == 1
    assert await a.ledger.flights.count() == 0  # b's flight, ended by b
    leader.cancel()  # the dead process's work: refunded
    await asyncio.gather(leader, return_exceptions=True)
    assert await books(a) == (1, UNIT.micro_usd)


async def test_a_cancelled_leader_ends_its_flight(pair):  # type: ignore[no-untyped-def]
    """The leader's task is cancelled (a shutdown's drain) mid-generation: its row goes at
    once, and the follower makes the image itself instead of hanging."""
    a, b = pair
    b.service.provider = working = CountingProvider()
    leader, follower = await lead_and_follow(a, b, GatedProvider())
    leader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leader
    await made_by_follower(follower, working)
    assert joins(b, "failed") == 1
    assert await books(a) == (1, UNIT.micro_usd)
    assert await a.ledger.flights.count() == 0


async def test_a_job_cancelled_in_line_ends_its_flight(make_settings):  # type: ignore[no-untyped-def]
    """/cancel of the leader's job while it waits in its process's line: refunded, and the
    follower in the other process makes the image itself."""
    settings = make_settings(JOB_LEASE_SECONDS=3600, MAX_CONCURRENT_JOBS=1)
    async with open_runtime(settings) as a, open_runtime(settings) as b:
        busy = GatedProvider()
        a.service.provider = busy
        b.service.provider = working = CountingProvider()
        other = asyncio.create_task(a.service.generate(ask("u0", "something else")))
        await busy.started.wait()  # a's only slot is taken
        leader = asyncio.create_task(a.service.generate(ask("u1")))
        await until(lambda: bool(a.service.queue_status("u1", "g").jobs))
        follower = asyncio.create_task(b.service.generate(ask("u2")))
        await until(lambda: b.service.generation.shared.waiters == 1)
        [job] = a.service.queue_status("u1", "g").jobs
        cancelled = await a.service.cancel_job(job.job_id, requester_id="u1", guild_id="g")
        assert cancelled.outcome == "cancelled"
        with pytest.raises(JobCancelled):
            await leader
        await made_by_follower(follower, working)
        busy.gate.set()
        await other
        assert await books(a) == (2, 2 * UNIT.micro_usd)
        assert await a.ledger.flights.count() == 0


async def test_hammer_two_processes_forty_requests_each(pair):  # type: ignore[no-untyped-def]
    """2 × 40 requests at once over 10 distinct prompts: 10 generations, the books exact to the
    micro-dollar, every identical request the same image, no flight left."""
    a, b = pair
    provider = CountingProvider(delay=0.2)
    a.service.provider = b.service.provider = provider
    requests = [
        runtime.service.generate(ask(f"u{name}{n}", f"subject number {n % 10}"))
        for name, runtime in (("a", a), ("b", b))
        for n in range(40)
    ]
    results = await asyncio.gather(*requests)
    assert provider.calls == 10
    assert sum(not r.cached for r in results) == 10
    by_prompt: dict[str, set[str]] = {}
    for result in results:
        by_prompt.setdefault(result.prompt, set()).add(result.images[0].storage_key)
    assert len(by_prompt) == 10 and all(len(keys) == 1 for keys in by_prompt.values())
    assert await books(a) == (10, 10 * UNIT.micro_usd)
    assert await a.ledger.flights.count() == 0


async def test_two_statements_per_fresh_generation_none_on_a_hit(local_runtime, monkeypatch):  # type: ignore[no-untyped-def]
    database = local_runtime.ledger.database
    seen: list[str] = []
    write, read = database.write, database.all

    async def counted_write(sql: str, params: Any = ()) -> int:
        seen.extend(["claim" if sql.startswith("INSERT") else "release"] * ("flights" in sql))
        return await write(sql, params)

    async def counted_read(sql: str, params: Any = ()) -> list[Any]:
        seen.extend(["read"] * ("FROM flights" in sql))
        return await read(sql, params)

    monkeypatch.setattr(database, "write", counted_write)
    monkeypatch.setattr(database, "all", counted_read)
    await local_runtime.service.generate(ask("u1"))
    assert seen == ["claim", "release"]
    seen.clear()
    again = await local_runtime.service.generate(ask("u2"))
    assert again.cached and seen == []


async def test_a_dead_process_flights_are_taken_over_and_swept(ledger_location, tmp_path):  # type: ignore[no-untyped-def]
    clock = Clock()
    a = await Ledger.open(ledger_location, clock=clock, instance_id="a")
    b = await Ledger.open(ledger_location, clock=clock, instance_id="b")
    try:
        await a.leases.register(10)
        await b.leases.register(10)
        assert await a.flights.claim("k1", "s") and await a.flights.claim("k2", "s")
        assert not await b.flights.claim("k1", "s")  # a live process leads it
        assert await b.flights.live(["k1", "k2", "k3"], "s") == {"k1": True, "k2": True}
        clock.advance(11)
        await b.leases.renew(10)  # b renewed on time; a did not
        assert await b.flights.live(["k1"], "s") == {"k1": False}
        assert await b.flights.claim("k1", "s")  # stale: taken over
        store = LocalImageStore(tmp_path / "images", "http://127.0.0.1:1")
        await CrashRecovery(b, store).run()  # sweeps a's k2, keeps b's k1
        assert await b.flights.live(["k1", "k2"], "s") == {"k1": True}
        await a.flights.release(["k1"], "s")  # a, back late, cannot end b's flight
        assert await b.flights.count() == 1
        await b.flights.release(["k1"], "s")
        assert await b.flights.count() == 0
    finally:
        await a.close()
        await b.close()


async def test_postgresql_wakes_waiters_by_notify(ledger_location, ledger_backend):  # type: ignore[no-untyped-def]
    """On PostgreSQL a flight's end reaches the other process's waiters as a notification
    (delivered when the release commits); SQLite has none, and its waiters poll."""
    a = await Ledger.open(ledger_location, instance_id="a")
    b = await Ledger.open(ledger_location, instance_id="b")
    try:
        await b.leases.register(60)
        listening = await a.flights.listening()
        assert listening == (ledger_backend == "postgresql")
        if not listening:
            return
        woken = a.flights.watch(["k1"])
        other = a.flights.watch(["k2"])
        assert await b.flights.claim("k1", "s")
        await b.flights.release(["k1"], "s")
        await asyncio.wait_for(woken.wait(), 30)  # no poll here: only the notification sets it
        assert not other.is_set()
        a.flights.unwatch(["k1"], woken)
        a.flights.unwatch(["k2"], other)
    finally:
        await a.close()
        await b.close()


async def test_kill_9_of_the_leader_process_the_follower_takes_over(tmp_path, fake_cloudflare):  # type: ignore[no-untyped-def]
    """Real processes: two ``serve`` on one SQLite file (leases of 2 s). The leader is killed
    with SIGKILL while its Cloudflare call hangs; the follower, waiting for it, takes the
    flight over once the lease runs out and makes the image, charged once."""
    from tests.test_kill9 import bot_env, create_key, free_port, start_server

    fake_cloudflare.latency = 60.0  # the leader's generation hangs until it is killed
    data = tmp_path / "data"
    data.mkdir()
    env = bot_env(data, free_port(), fake_cloudflare, "local")
    other_env = {**env, "WEB_PORT": str(free_port())}
    key = await create_key(env, tmp_path)
    leader = await start_server(env, tmp_path)
    follower = await start_server(other_env, tmp_path)
    try:
        async with httpx.AsyncClient(timeout=120) as client:

            def generate(on: dict[str, str]) -> asyncio.Task[httpx.Response]:
                return asyncio.create_task(client.post(
                    f"http://127.0.0.1:{on['WEB_PORT']}/api/generate",
                    json={"prompt": "one lighthouse"}, headers={"Authorization": f"Bearer {key}"},
                ))  # fmt: skip

            async def follower_metrics() -> str:
                return (await client.get(f"http://127.0.0.1:{other_env['WEB_PORT']}/metrics")).text

            first = generate(env)
            await until(lambda: fake_cloudflare.ai_calls == 1)  # the leader is generating
            second = generate(other_env)
            for _ in range(1000):  # until the follower waits for the leader's flight
                if "imagebot_flight_waiters 1.0" in await follower_metrics():
                    break
                await asyncio.sleep(0.02)
            else:
                raise AssertionError("the follower never waited")
            fake_cloudflare.latency = 0.0
            leader.send_signal(signal.SIGKILL)
            await leader.wait()
            [lost] = await asyncio.gather(first, return_exceptions=True)
            assert isinstance(lost, httpx.TransportError)
            response = await second
            assert response.status_code == 201, response.text
            # its wait ended by seeing the lease run out, or the row its own sweep deleted
            scraped = await follower_metrics()
            assert joins_in(scraped, "taken_over") + joins_in(scraped, "failed") == 1
            assert joins_in(scraped, "image") == 0
        assert fake_cloudflare.ai_calls == 2  # the killed one's, and the follower's own
        ledger = await Ledger.open(data / "bot.sqlite3")
        try:
            for _ in range(1000):  # the follower's sweep refunds the killed process's job
                if (await ledger.audit())["open_jobs"] == 0:
                    break
                await asyncio.sleep(0.02)
            assert await ledger.audit() == {"counter_mismatches": 0, "open_jobs": 0}
            report = await ledger.report(ledger.today(), ledger.today())
            assert report.total_images == 1 and report.total_micro_usd > 0
            assert await ledger.flights.count() == 0
        finally:
            await ledger.close()
    finally:
        follower.terminate()
        await follower.wait()
