"""Cancelling a request that asked for prompt enhancement, at each stage, on SQLite and on
PostgreSQL: the enhancement that ran was billed, so it stays charged; the image part is refunded
if the provider call had not started; the totals (ledger, counters, report) are exact to the
micro-dollar and the cancel's answers say what stays charged. Each stage is held on an event
(no sleeps decide the order)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from bot.catalog import Cost, ModelSpec
from bot.config import Settings
from bot.errors import JobCancelled
from bot.ledger import Job as LedgerJob
from bot.moderation import Verdict
from bot.money import format_usd
from bot.providers.base import GeneratedImage, ImageRequest, TextCompletion
from bot.providers.local import LocalProvider
from bot.requests import GenerationResult
from bot.runtime import Runtime, open_runtime
from cogs.cancel import CANCELLED, answer, cancelled_text
from tests.test_cancel import GUILD, Job, until
from tests.test_lease_fence import Stall

pytestmark = pytest.mark.both_ledgers

ENHANCER = "@cf/meta/llama-3.1-8b-instruct-fp8-fast"
GUARD = "@cf/meta/llama-guard-3-8b"
IN_TOKENS, OUT_TOKENS = 40, 60  # what the text model "bills", under the enhancement's estimate
BOOKS_EXACT = {"counter_mismatches": 0, "open_jobs": 0}


class BilledProvider(LocalProvider):
    """The local renderer with a text model that reports billed tokens (as Workers AI does);
    the content check, the enhancement and the image call can each be held."""

    def __init__(self) -> None:
        self.check, self.enhancing, self.generating = Stall(), Stall(), Stall()
        for step in (self.check, self.enhancing, self.generating):
            step.go.set()  # not held unless a test clears it
        self.completes = self.images = 0

    async def moderate(self, model: ModelSpec, text: str) -> Verdict:
        await self.check.stall()
        return await super().moderate(model, text)

    async def complete(
        self, model: ModelSpec, system: str, user: str, *, max_tokens: int
    ) -> TextCompletion:
        self.completes += 1
        await self.enhancing.stall()
        answer = await super().complete(model, system, user, max_tokens=max_tokens)
        return TextCompletion(answer.text, IN_TOKENS, OUT_TOKENS)

    async def generate(self, request: ImageRequest) -> GeneratedImage:
        self.images += 1
        await self.generating.stall()
        return await super().generate(request)


def enhancement_cost(runtime: Runtime) -> int:
    """What the enhancement costs, in micro-dollars, from the catalog's price."""
    spec = runtime.catalog.get(ENHANCER)
    return Cost.from_nano_usd(spec.price.tokens_nano_usd(IN_TOKENS, OUT_TOKENS)).micro_usd


@pytest.fixture
async def billed(
    make_settings: Callable[..., Settings],
) -> AsyncIterator[tuple[Runtime, BilledProvider]]:
    env = {"MAX_CONCURRENT_JOBS": 1, "MAX_JOBS_PER_USER": 4, "QUOTA_USER_DAILY_IMAGES": 100,
           "QUOTA_USER_DAILY_USD": 10, "QUOTA_GUILD_DAILY_USD": 100}  # fmt: skip
    async with open_runtime(make_settings(**env)) as runtime:
        provider = BilledProvider()
        runtime.service.provider = provider
        yield runtime, provider
        for step in (provider.check, provider.enhancing, provider.generating):
            step.go.set()
        await runtime.service.drain(10.0)


async def jobs_of(runtime: Runtime, user_id: str) -> list[LedgerJob]:
    rows = await runtime.ledger.database.all(
        "SELECT * FROM jobs WHERE user_id = ? ORDER BY created_at", (user_id,)
    )
    return [LedgerJob.from_row(row) for row in rows]


async def totals(runtime: Runtime, user_id: str) -> tuple[int, int, int]:
    """The user's counters today (images, micro-dollars) and the report's dollars: one truth."""
    usage = await runtime.ledger.user_usage(user_id, GUILD)
    today = runtime.ledger.today()
    report = await runtime.ledger.report(today, today, user_id=user_id)
    assert report.total_images == usage.images
    return usage.images, usage.micro_usd, report.total_micro_usd


async def test_stopped_during_the_enhancement_charges_nothing(billed):
    """No job to press Cancel on yet; a request stopped here (a shutdown's drain, a dropped
    HTTP request) refunds the enhancement in flight: its answer is never used."""
    runtime, provider = billed
    provider.enhancing.go.clear()
    asked = Job(runtime, "u1", "a red fox", enhance=True)
    await provider.enhancing.reached.wait()
    asked.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asked.task
    (enhancement,) = await jobs_of(runtime, "u1")  # no image was reserved
    assert (enhancement.kind, enhancement.state, enhancement.error_code) == (
        "enhance", "refunded", "cancelled"
    )
    assert await totals(runtime, "u1") == (0, 0, 0)
    assert provider.images == 0 and asked.job_id is None
    assert await runtime.ledger.audit() == BOOKS_EXACT


async def test_stopped_before_the_enhancement_charges_nothing(make_settings):
    """Stopped in the content check, before the enhancement: neither is charged or made."""
    async with open_runtime(make_settings(MODERATION_MODEL=GUARD)) as runtime:
        runtime.service.provider = provider = BilledProvider()
        provider.check.go.clear()
        asked = Job(runtime, "u1", "a red fox", enhance=True)
        await provider.check.reached.wait()
        asked.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asked.task
        (check,) = await jobs_of(runtime, "u1")
        assert (check.params["step"], check.state, check.error_code) == (
            "moderation", "refunded", "cancelled"
        )
        assert provider.completes == 0 and provider.images == 0
        assert await totals(runtime, "u1") == (0, 0, 0)
        assert await runtime.ledger.audit() == BOOKS_EXACT


async def test_cancelled_in_line_after_the_enhancement_keeps_only_the_enhancement_charged(
    billed,
):
    runtime, provider = billed
    provider.generating.go.clear()
    blocker = Job(runtime, "u2", "the job ahead")
    await provider.generating.reached.wait()
    asked = Job(runtime, "u1", "a red fox", enhance=True)
    job_id = await asked.reserved()  # enhanced, image reserved, waiting in line
    reserved = await runtime.ledger.get_job(job_id)
    assert reserved is not None and reserved.state == "reserved" and reserved.micro_usd > 0

    done = await runtime.service.cancel_job(job_id, requester_id="u1", guild_id=GUILD)
    paid = enhancement_cost(runtime)
    assert paid > 0
    assert (done.outcome, done.refunded_micro_usd, done.charged_micro_usd, done.charged_for) == (
        "cancelled", reserved.micro_usd, paid, "prompt enhancement"
    )
    with pytest.raises(JobCancelled) as cancelled:
        await asked.task
    assert cancelled.value.paid_micro_usd == paid

    enhancement, image = await jobs_of(runtime, "u1")
    assert (enhancement.kind, enhancement.state, enhancement.micro_usd) == (
        "enhance", "settled", paid
    )
    assert (image.id, image.state, image.error_code) == (job_id, "refunded", "cancelled")
    assert await totals(runtime, "u1") == (0, paid, paid)  # to the micro-dollar
    today = runtime.ledger.today()
    report = await runtime.ledger.report(today, today, user_id="u1")
    assert report.by_model == {ENHANCER: (0, paid)}  # what /usage shows "by model"
    # what the people are told
    shown = format_usd(paid)
    assert answer(done, "u1") == (
        f"❌ Cancelled (the {format_usd(reserved.micro_usd)} reserved is released): the image "
        f"is not charged; the prompt enhancement that already ran stays charged ({shown})."
    )
    assert cancelled_text(cancelled.value) == (
        "❌ Cancelled before the image was generated: the image was not charged; the prompt "
        f"enhancement that already ran stays charged ({shown})."
    )
    assert cancelled_text(JobCancelled()) == CANCELLED  # nothing ran before: nothing charged

    provider.generating.go.set()
    await blocker.task
    assert provider.images == 1  # the cancelled job's image was never asked for
    assert await runtime.ledger.audit() == BOOKS_EXACT


async def test_cancelled_while_generating_is_charged_for_both(billed):
    runtime, provider = billed
    provider.generating.go.clear()
    asked = Job(runtime, "u1", "a red fox", enhance=True)
    job_id = await asked.generating()
    await provider.generating.reached.wait()
    done = await runtime.service.cancel_job(job_id, requester_id="u1", guild_id=GUILD)
    assert done.outcome == "too_late"
    provider.generating.go.set()
    result: GenerationResult = await asked.task
    enhancement, image = await jobs_of(runtime, "u1")
    paid = enhancement_cost(runtime)
    assert result.withdrawn and enhancement.micro_usd == paid and image.state == "settled"
    assert result.cost.micro_usd == paid + image.micro_usd
    assert await totals(runtime, "u1") == (1, result.cost.micro_usd, result.cost.micro_usd)
    assert await runtime.ledger.audit() == BOOKS_EXACT


async def test_stopped_while_generating_refunds_the_image_and_keeps_the_enhancement(billed):
    """A shutdown's drain cuts the image call: the image is refunded, the enhancement (done,
    billed) stays charged."""
    runtime, provider = billed
    provider.generating.go.clear()
    asked = Job(runtime, "u1", "a red fox", enhance=True)
    job_id = await asked.generating()
    await provider.generating.reached.wait()
    assert await runtime.service.drain(0.0) == 1
    with pytest.raises(asyncio.CancelledError):
        await asked.task
    enhancement, image = await jobs_of(runtime, "u1")
    paid = enhancement_cost(runtime)
    assert (enhancement.state, enhancement.micro_usd) == ("settled", paid)
    assert (image.id, image.state) == (job_id, "refunded")
    assert await totals(runtime, "u1") == (0, paid, paid)
    assert await runtime.ledger.audit() == BOOKS_EXACT


async def test_cancelled_while_storing_is_charged_for_both(billed):
    runtime, _ = billed
    store = runtime.service.store
    held = Stall()
    put = store.put

    async def held_put(*args, **kwargs):  # type: ignore[no-untyped-def]
        await held.stall()
        return await put(*args, **kwargs)

    store.put = held_put  # type: ignore[method-assign]
    asked = Job(runtime, "u1", "a red fox", enhance=True)
    job_id = await asked.reserved()
    await held.reached.wait()
    await until(lambda: "storing" in asked.stages)
    done = await runtime.service.cancel_job(job_id, requester_id="u1", guild_id=GUILD)
    assert done.outcome == "too_late"
    held.go.set()
    result = await asked.task
    paid = enhancement_cost(runtime)
    enhancement, image = await jobs_of(runtime, "u1")
    assert enhancement.micro_usd == paid and (image.state, image.images) == ("settled", 1)
    assert result.cost.micro_usd == paid + image.micro_usd
    assert await totals(runtime, "u1") == (1, result.cost.micro_usd, result.cost.micro_usd)
    assert await runtime.ledger.audit() == BOOKS_EXACT


def test_the_words_for_both_calls_that_stay_charged() -> None:
    both = JobCancelled(30, "prompt enhancement and content check")
    assert both.user_message.endswith(
        "the prompt enhancement and content check that already ran stay charged ($0.00003)."
    )
