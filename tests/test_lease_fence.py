"""The lease fence, with real parts: two runtimes ('processes') on one ledger (a SQLite file, or
one PostgreSQL database) and one image folder. Process a's job stalls (a provider or a store
that waits on an event, so the order is exact), its lease lapses, b's crash recovery closes the
job, then a finishes: it is charged exactly once or not at all, and never delivers an image
nobody paid for. Also a hammer of late charges racing fresh reservations on one quota."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

from bot.catalog import Cost, ModelSpec
from bot.config import Settings
from bot.errors import QuotaExceeded, TooLate
from bot.ledger import Job, Ledger
from bot.ledger.ledger import NewJob
from bot.ledger.records import Limits
from bot.moderation import Verdict
from bot.providers.base import GeneratedImage, ImageRequest
from bot.providers.local import LocalProvider
from bot.recovery import CrashRecovery, RecoveryReport
from bot.requests import GenerateRequest, GenerationResult
from bot.runtime import Runtime, open_runtime
from bot.stores.base import StoredImage
from bot.stores.local import LocalImageStore
from tests.conftest import png

pytestmark = pytest.mark.both_ledgers
LAPSED = "2000-01-01T00:00:00.000+00:00"
BOOKS_EXACT = {"counter_mismatches": 0, "open_jobs": 0}
REFUNDED = RecoveryReport(refunded=1)
SLOW = GenerateRequest("a slow fox", user_id="u1")
T = TypeVar("T")


class Stall:
    """Where a process stalls: ``reached`` once it is there, on until ``go`` is set."""

    def __init__(self) -> None:
        self.reached = asyncio.Event()
        self.go = asyncio.Event()

    async def stall(self) -> None:
        self.reached.set()
        await self.go.wait()


class StalledProvider(LocalProvider, Stall):
    """The local renderer, stalled in each call."""

    async def generate(self, request: ImageRequest) -> GeneratedImage:
        await self.stall()
        return await super().generate(request)


class StalledStore(LocalImageStore, Stall):
    """The local store, stalling right after (or, ``before_put``, right before) it stores."""

    def __init__(self, root: Path, base_url: str, *, before_put: bool = False) -> None:
        LocalImageStore.__init__(self, root, base_url)
        Stall.__init__(self)
        self.before_put = before_put

    async def put(
        self, image_id: str, data: bytes, content_type: str, metadata: dict[str, str]
    ) -> StoredImage:
        if self.before_put:
            await self.stall()
        stored = await super().put(image_id, data, content_type, metadata)
        if not self.before_put:
            await self.stall()
        return stored


def stalled_store(runtime: Runtime, *, before_put: bool = False) -> StalledStore:
    settings = runtime.settings
    store = StalledStore(
        settings.data_dir / "images", settings.public_base_url, before_put=before_put
    )
    runtime.service.store = store
    return store


async def lapse(runtime: Runtime) -> None:
    """The database's view of a process stalled past its lease: its lease ran out."""
    await runtime.ledger.database.write(
        "UPDATE instances SET lease_until = ? WHERE id = ?",
        (LAPSED, runtime.ledger.leases.instance_id),
    )


@asynccontextmanager
async def two_processes(
    settings: Settings, other: Settings | None = None
) -> AsyncIterator[tuple[Runtime, Runtime]]:
    """Process a and process b on one ledger and one image folder (b may differ in settings)."""
    async with open_runtime(settings, recover=False) as a, open_runtime(
        other or settings, recover=False
    ) as b:
        yield a, b


async def stalled_then_recovered(
    a: Runtime, b: Runtime, stall: Stall, work: Coroutine[Any, Any, T], closed: RecoveryReport
) -> asyncio.Task[T]:
    """Start ``work`` on a; once it reaches ``stall``, a's lease lapses and b's recovery closes
    its job (``closed``). The task finishes once ``stall.go`` is set."""
    made = asyncio.create_task(work)
    await stall.reached.wait()
    await lapse(a)
    assert await b.leases.sweep() == closed
    return made


async def jobs_of(ledger: Ledger, user_id: str) -> list[Job]:
    rows = await ledger.database.all(
        "SELECT * FROM jobs WHERE user_id = ? ORDER BY created_at", (user_id,)
    )
    return [Job.from_row(row) for row in rows]


async def test_refunded_by_recovery_then_finished_with_room_is_charged_once_and_delivered(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(QUOTA_USER_DAILY_IMAGES="2")
    async with two_processes(settings) as (a, b):
        a.service.provider = provider = StalledProvider()
        made = await stalled_then_recovered(a, b, provider, a.service.generate(SLOW), REFUNDED)
        (job,) = await jobs_of(b.ledger, "u1")
        assert (job.state, job.error_code) == ("refunded", "interrupted")

        provider.go.set()
        result = await made

        assert result.job_id == job.id and len(result.images) == 1
        charged = await b.ledger.get_job(job.id)
        assert charged is not None and (charged.state, charged.images) == ("settled", 1)
        assert charged.micro_usd == result.cost.micro_usd > 0
        assert charged.error_code is None and charged.note and "late" in charged.note
        usage = await b.ledger.user_usage("u1")
        assert (usage.images, usage.micro_usd, usage.milli_neurons) == (
            1, charged.micro_usd, charged.milli_neurons,
        )  # fmt: skip
        records = await b.ledger.images_for_job(job.id)
        assert [r.id for r in records] == [result.images[0].id]
        assert await b.store.get(records[0].storage_key) == await a.store.get(
            result.images[0].storage_key
        )
        assert await b.ledger.audit() == BOOKS_EXACT


async def test_refunded_by_recovery_with_no_room_left_is_not_delivered_nor_charged(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(QUOTA_USER_DAILY_IMAGES="1")
    async with two_processes(settings) as (a, b):
        a.service.provider = provider = StalledProvider()
        made = await stalled_then_recovered(a, b, provider, a.service.generate(SLOW), REFUNDED)
        (job,) = await jobs_of(b.ledger, "u1")
        other = await b.service.generate(GenerateRequest("a quick hare", user_id="u1"))
        with pytest.raises(QuotaExceeded):  # the day's one image is used now
            await b.service.generate(GenerateRequest("a third", user_id="u1"))

        provider.go.set()
        with pytest.raises(TooLate) as refused:
            await made

        assert "took too long" in str(refused.value) and "not charged" in str(refused.value)
        after = await b.ledger.get_job(job.id)
        assert after is not None and (after.state, after.error_code) == ("refunded", "interrupted")
        assert await b.ledger.images_for_job(job.id) == []
        planned = job.params["slots"][0]["id"]
        assert await a.store.find(planned) is None  # its bytes were taken out of the store
        usage = await b.ledger.user_usage("u1")
        assert (usage.images, usage.micro_usd) == (1, other.cost.micro_usd)
        assert await b.ledger.audit() == BOOKS_EXACT


async def test_settled_by_recovery_from_the_stored_image_is_delivered_as_charged_once(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    async with two_processes(settings) as (a, b):
        store = stalled_store(a)  # stored, then stalled before its record is written
        recovered = RecoveryReport(settled=1, images_recovered=1)
        made = await stalled_then_recovered(a, b, store, a.service.generate(SLOW), recovered)

        store.go.set()
        result = await made

        (job,) = await jobs_of(b.ledger, "u1")
        assert job.state == "settled" and job.images == 1
        records = await b.ledger.images_for_job(job.id)
        assert len(records) == 1 and [i.id for i in result.images] == [records[0].id]
        assert records[0].metadata["recovered"] == "true"
        assert await a.store.find(records[0].id) is not None  # kept: it was charged
        usage = await b.ledger.user_usage("u1")
        assert (usage.images, usage.micro_usd) == (1, job.micro_usd)
        assert job.micro_usd == result.cost.micro_usd > 0
        assert await b.ledger.audit() == BOOKS_EXACT


async def test_an_upload_refunded_by_recovery_is_charged_late_against_the_allowance(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(QUOTA_USER_DAILY_UPLOADS="1")
    async with two_processes(settings) as (a, b):
        store = stalled_store(a, before_put=True)
        data = png(30, 20)
        uploading = a.service.upload(data, user_id="u1")
        made = await stalled_then_recovered(a, b, store, uploading, REFUNDED)

        store.go.set()
        record = await made

        (job,) = await jobs_of(b.ledger, "u1")
        assert job.state == "settled" and [i.id for i in await b.ledger.images_for_job(job.id)] == [
            record.id
        ]
        assert await b.ledger.uploads_today("u1") == (1, len(data))
        assert await b.ledger.audit() == BOOKS_EXACT


# -- the hammer: late charges racing fresh reservations on one user's daily images -----------

UNIT = Cost(634, 57_600)
LIMIT = 5


def new_job(user: str) -> NewJob:
    params = {"prompt": "p", "unit_micro_usd": UNIT.micro_usd,
              "unit_milli_neurons": UNIT.milli_neurons, "slots": []}  # fmt: skip
    return NewJob("generate", user, "g1", UNIT, 1, "m", None, params)


async def test_late_charges_racing_reservations_never_overshoot_a_quota(
    ledger_location: Path | str, tmp_path: Path
) -> None:
    a = await Ledger.open(ledger_location, instance_id="a-stalled")
    b = await Ledger.open(ledger_location, instance_id="b-live")
    try:
        limits = Limits(user_images=LIMIT, user_micro_usd=10**9, guild_micro_usd=10**9,
                        milli_neurons=10**12)  # fmt: skip
        await a.leases.register(60)
        await b.leases.register(60)
        stalled = [await a.reserve(new_job("u1"), limits) for _ in range(LIMIT)]
        await a.database.write("UPDATE instances SET lease_until = ? WHERE id = ?",
                               (LAPSED, "a-stalled"))  # fmt: skip
        store = LocalImageStore(tmp_path / "images", "http://127.0.0.1:1")
        assert await CrashRecovery(b, store).run() == RecoveryReport(refunded=LIMIT)

        async def reserve() -> bool:
            try:
                await b.reserve(new_job("u1"), limits)
            except QuotaExceeded:
                return False
            return True

        outcomes = await asyncio.gather(
            *(a.late_charge(job, 1, UNIT, limits) for job in stalled),
            *(reserve() for _ in range(3 * LIMIT)),
        )
        assert sum(outcomes) == LIMIT  # every image of the day taken, not one more
        usage = await b.user_usage("u1", "g1")
        assert (usage.images, usage.micro_usd) == (LIMIT, LIMIT * UNIT.micro_usd)
        charged_late = [await b.get_job(job.id) for job in stalled]
        assert sum(j is not None and j.state == "settled" for j in charged_late) == sum(
            outcomes[:LIMIT]
        )
        assert (await b.audit())["counter_mismatches"] == 0
        # a charge already made is never made twice
        assert not any([await a.late_charge(job, 1, UNIT, limits) for job in stalled])
    finally:
        await a.close()
        await b.close()


# -- a model call (the content check) outlives its lease ----------------------------------------

GUARD = "@cf/meta/llama-guard-3-8b"


class StalledGuard(LocalProvider, Stall):
    """The local stand-in, stalled in each content check."""

    async def moderate(self, model: ModelSpec, text: str) -> Verdict:
        await self.stall()
        return await super().moderate(model, text)


async def stalled_check(
    a: Runtime, b: Runtime, user_id: str
) -> tuple[StalledGuard, asyncio.Task[GenerationResult], Job]:
    """a's content check for ``user_id`` stalls past a's lease and b's recovery refunds it."""
    a.service.provider = guard = StalledGuard()
    request = GenerateRequest("a slow fox", user_id=user_id)
    made = await stalled_then_recovered(a, b, guard, a.service.generate(request), REFUNDED)
    (check,) = await jobs_of(b.ledger, user_id)
    assert (check.kind, check.state) == ("enhance", "refunded")
    return guard, made, check


async def test_a_content_check_refunded_by_recovery_is_charged_late_when_there_is_room(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(MODERATION_MODEL=GUARD)
    async with two_processes(settings) as (a, b):
        guard, made, check = await stalled_check(a, b, "u1")
        guard.go.set()
        result = await made
        charged = await b.ledger.get_job(check.id)
        assert charged is not None and charged.state == "settled" and charged.micro_usd > 0
        image = await b.ledger.get_job(result.job_id)
        assert image is not None and image.state == "settled"
        usage = await b.ledger.user_usage("u1")
        assert usage.micro_usd == charged.micro_usd + image.micro_usd == result.cost.micro_usd
        assert await b.ledger.audit() == BOOKS_EXACT


async def test_a_content_check_refunded_by_recovery_with_no_room_is_not_used_nor_charged(
    make_settings: Callable[..., Settings],
) -> None:
    checked = make_settings(MODERATION_MODEL=GUARD, QUOTA_USER_DAILY_USD="0.000634")
    unchecked = make_settings(MODERATION_MODEL="off", QUOTA_USER_DAILY_USD="0.000634")
    async with two_processes(checked, unchecked) as (a, b):
        guard, made, check = await stalled_check(a, b, "u1")
        other = await b.service.generate(GenerateRequest("a quick hare", user_id="u1"))
        assert other.cost.micro_usd == 634  # the day's dollars are spent now

        guard.go.set()
        with pytest.raises(TooLate):
            await made

        after = await b.ledger.get_job(check.id)
        assert after is not None and after.state == "refunded"
        assert len(await jobs_of(b.ledger, "u1")) == 2  # no image reserved after the check
        assert (await b.ledger.user_usage("u1")).micro_usd == 634
        assert await b.ledger.audit() == BOOKS_EXACT


# -- a batch item outlives its lease: its late charge does not draw on the batch's hold ---------


class CountedStall(StalledProvider):
    """Stalled in each call, counting them (a batch runs two items at once)."""

    calls = 0

    async def generate(self, request: ImageRequest) -> GeneratedImage:
        self.calls += 1
        return await super().generate(request)


async def test_a_batch_items_late_charge_has_only_the_free_room_its_hold_was_refunded(
    make_settings: Callable[..., Settings],
) -> None:
    """The hold is a's own job and older than its items, so the sweep that refunds an item has
    refunded the hold first (orphans oldest first): its images are back in the user's free room,
    which is all a late charge may take. Limit 2, a batch of 2 whose items both stall; another
    request takes 1 image meanwhile: one item is charged late, the other is TooLate, 2 in all."""
    settings = make_settings(QUOTA_USER_DAILY_IMAGES="2")
    async with two_processes(settings) as (a, b):
        a.service.provider = provider = CountedStall()
        key, _ = await a.keys.create(user_id="u1")
        batch = await a.batches.submit(key, ["a slow fox", "a slow owl"], None, None)
        for _ in range(4000):  # bounded: both items reserved and in the provider
            if provider.calls == 2:
                break
            await asyncio.sleep(0.005)
        hold, *items = await jobs_of(b.ledger, "u1")
        assert hold.params.get("allowance_hold") and hold.images == 0  # both drawn from it
        await lapse(a)
        assert await b.leases.sweep() == RecoveryReport(refunded=3)  # the hold and both items
        other = await b.service.generate(GenerateRequest("a quick hare", user_id="u1"))

        provider.go.set()
        await a.batches.wait_idle()

        done = await b.ledger.get_batch(batch.id)
        assert done is not None
        states = sorted((item.state, item.error_code) for item in done.items)
        assert states == [("done", None), ("failed", "too_late")]
        closed = {job.id: job for job in await jobs_of(b.ledger, "u1")}
        assert (closed[hold.id].state, closed[hold.id].error_code) == ("refunded", "interrupted")
        charged = [closed[j.id] for j in items if closed[j.id].state == "settled"]
        assert len(charged) == 1 and charged[0].note and "late" in charged[0].note
        usage = await b.ledger.user_usage("u1")
        assert (usage.images, usage.micro_usd) == (
            2, other.cost.micro_usd + charged[0].micro_usd
        )  # fmt: skip
        assert await b.ledger.audit() == BOOKS_EXACT
