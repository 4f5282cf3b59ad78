"""Refunds for results no way could show, and the record of how each result was delivered:
the real service on the embedded backends, a real SQLite file."""

from __future__ import annotations

import asyncio

import pytest

from bot.catalog import ModelSpec
from bot.ledger.database import ConstraintViolation
from bot.ledger.ledger import UNDELIVERED_MESSAGE
from bot.ledger.records import DELIVERY_WAYS
from bot.providers.base import TextCompletion
from bot.providers.local import LocalProvider
from bot.requests import GenerateRequest

# The ledger-level tests run on SQLite and on PostgreSQL (tests/conftest.py).
pytestmark = pytest.mark.both_ledgers


def ask(prompt: str, user: str = "u1", **fields: object) -> GenerateRequest:
    return GenerateRequest(prompt=prompt, user_id=user, guild_id="g1",
                           **fields)  # type: ignore[arg-type]  # fmt: skip


class PaidEnhancer(LocalProvider):
    """The local renderer, but its prompt rewrite reports tokens, so it costs something."""

    async def complete(
        self, model: ModelSpec, system: str, user: str, *, max_tokens: int
    ) -> TextCompletion:
        answer = await super().complete(model, system, user, max_tokens=max_tokens)
        return TextCompletion(answer.text, input_tokens=120, output_tokens=60)


async def test_an_undelivered_result_is_refunded_and_stays_in_the_owners_list(local_runtime):
    service, ledger = local_runtime.service, local_runtime.ledger
    kept = await service.generate(ask("a lighthouse that was delivered"))
    lost = await service.generate(ask("a lighthouse nobody saw", count=2))
    before = await ledger.user_usage("u1", "g1")
    assert before.images == 3

    refunded = await service.refund_undelivered(lost.job_id)

    assert refunded == lost.cost.micro_usd > 0
    job = await ledger.get_job(lost.job_id)
    assert job is not None and job.state == "refunded" and job.delivery == "undelivered"
    assert job.error_code == "undelivered" and job.error_message == UNDELIVERED_MESSAGE
    after = await ledger.user_usage("u1", "g1")
    assert after.images == 1 and after.micro_usd == kept.cost.micro_usd
    assert (await ledger.usage("guild", "g1")).micro_usd == kept.cost.micro_usd
    assert (await ledger.usage("all", "")).milli_neurons == kept.cost.milli_neurons
    assert await ledger.audit() == {"counter_mismatches": 0, "open_jobs": 0}
    listed = {image.id for image in await service.user_images("u1")}
    assert {image.id for image in lost.images} <= listed
    report = await service.usage_report(service.today(), guild_id="g1")
    assert report.total_images == 1  # refunded jobs are not in the cost report
    assert (await service.remaining("u1", "g1")).images == 24


async def test_refunding_twice_or_an_open_or_failed_job_changes_nothing(local_runtime):
    service, ledger = local_runtime.service, local_runtime.ledger
    result = await service.generate(ask("a kite over the dunes"))
    assert await service.refund_undelivered(result.job_id) > 0
    assert await service.refund_undelivered(result.job_id) == 0
    assert await service.refund_undelivered("job_does_not_exist") == 0
    assert await ledger.audit() == {"counter_mismatches": 0, "open_jobs": 0}
    assert (await ledger.user_usage("u1", "g1")).images == 0


async def test_the_prompt_enhancement_made_for_an_undelivered_result_is_refunded_too(
    local_runtime,
):
    service, ledger = local_runtime.service, local_runtime.ledger
    service.provider = PaidEnhancer()
    result = await service.generate(ask("a cat", enhance=True, idempotency_key="discord:77"))
    enhancement = await ledger.job_by_key("discord:77:enhance")
    assert enhancement is not None and enhancement.state == "settled"
    assert enhancement.micro_usd > 0
    charged = (await ledger.user_usage("u1", "g1")).micro_usd
    assert charged == result.cost.micro_usd

    assert await service.refund_undelivered(result.job_id) == charged

    assert (await ledger.user_usage("u1", "g1")).micro_usd == 0
    refunded = await ledger.job_by_key("discord:77:enhance")
    assert refunded is not None and refunded.state == "refunded"
    assert await ledger.audit() == {"counter_mismatches": 0, "open_jobs": 0}


async def test_concurrent_refunds_and_new_jobs_keep_every_counter_exact(local_runtime):
    """50 results refunded by 4 callers each while 50 more are generated: each charge comes
    back exactly once and the counters equal the jobs."""
    service, ledger = local_runtime.service, local_runtime.ledger
    await ledger.set_guild_quota("g1", daily_micro_usd=10**9, user_daily_images=10**6,
                                 user_daily_micro_usd=10**9)  # fmt: skip
    first = await asyncio.gather(
        *(service.generate(ask(f"refund me {n}", user=f"u{n % 7}")) for n in range(50))
    )
    refunds = [service.refund_undelivered(r.job_id) for r in first for _ in range(4)]
    more = [service.generate(ask(f"keep me {n}", user=f"u{n % 7}")) for n in range(50)]
    outcomes = await asyncio.gather(*refunds, *more)
    refunded = outcomes[: len(refunds)]
    kept = outcomes[len(refunds) :]
    assert sum(refunded) == sum(r.cost.micro_usd for r in first)  # each exactly once
    assert sum(1 for amount in refunded if amount) == 50
    total = await ledger.usage("guild", "g1")
    assert total.images == 50
    assert total.micro_usd == sum(r.cost.micro_usd for r in kept)
    assert await ledger.audit() == {"counter_mismatches": 0, "open_jobs": 0}


async def test_delivery_is_recorded_and_only_known_ways_are_accepted(local_runtime):
    service, ledger = local_runtime.service, local_runtime.ledger
    result = await service.generate(ask("a red bicycle"))
    assert await service.delivery_of(result.job_id) is None
    for way in DELIVERY_WAYS:
        await service.record_delivery(result.job_id, way)
        assert await service.delivery_of(result.job_id) == way
    with pytest.raises(ConstraintViolation):  # the CHECK constraint
        await ledger.set_delivery(result.job_id, "carrier-pigeon")
    assert await service.delivery_of(None) is None
