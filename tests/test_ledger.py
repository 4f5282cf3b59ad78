"""The ledger on real SQLite files: atomic reservations, exact totals, idempotency, migrations."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot.catalog import Cost
from bot.config import QuotaDefaults
from bot.errors import QuotaExceeded
from bot.ledger import Ledger, Limits
from bot.ledger.ledger import DuplicateRequest, NewJob
from bot.ledger.migrations import MIGRATIONS

SCHNELL_COST = Cost(634, 57_600)
WIDE = 10**12


def job(user: str = "u1", guild: str = "g1", cost: Cost = SCHNELL_COST, key: str | None = None,
        images: int = 1) -> NewJob:  # fmt: skip
    return NewJob("generate", user, guild, cost, images, "m", key)


pytestmark = pytest.mark.both_ledgers


@pytest.fixture
async def ledger(ledger_location: Path | str):
    opened = await Ledger.open(ledger_location)
    yield opened
    await opened.close()


async def test_200_concurrent_reservations_against_a_quota_of_10_give_exactly_10(ledger):
    limits = Limits(user_images=10, user_micro_usd=WIDE, guild_micro_usd=WIDE, milli_neurons=WIDE)
    outcomes = await asyncio.gather(
        *(ledger.reserve(job(key=f"k{i}"), limits) for i in range(200)), return_exceptions=True
    )
    granted = [o for o in outcomes if not isinstance(o, BaseException)]
    refused = [o for o in outcomes if isinstance(o, QuotaExceeded)]
    assert len(granted) == 10
    assert len(refused) == 190
    assert refused[0].limit == "user_daily_images"
    assert (await ledger.user_usage("u1", "g1")).images == 10


async def test_money_quota_holds_to_the_micro_dollar_under_concurrency(ledger):
    # 50,000 µ$ fits 78 images of 634 µ$ (49,452) and not 79 (50,086).
    limits = Limits(WIDE, user_micro_usd=50_000, guild_micro_usd=WIDE, milli_neurons=WIDE)
    outcomes = await asyncio.gather(
        *(ledger.reserve(job(), limits) for _ in range(150)), return_exceptions=True
    )
    granted = [o for o in outcomes if not isinstance(o, BaseException)]
    assert len(granted) == 78
    usage = await ledger.user_usage("u1", "g1")
    assert usage.micro_usd == 78 * 634 <= 50_000
    refusal = next(o for o in outcomes if isinstance(o, QuotaExceeded))
    assert refusal.limit == "user_daily_usd"
    assert "$0.000634" in refusal.user_message


async def test_guild_and_neuron_limits_span_users(ledger):
    guild_limits = Limits(WIDE, WIDE, guild_micro_usd=634 * 5, milli_neurons=WIDE)
    results = await asyncio.gather(
        *(ledger.reserve(job(user=f"u{i}"), guild_limits) for i in range(20)),
        return_exceptions=True,
    )
    assert sum(not isinstance(r, BaseException) for r in results) == 5
    assert {r.limit for r in results if isinstance(r, QuotaExceeded)} == {"guild_daily_usd"}

    neuron_limits = Limits(WIDE, WIDE, WIDE, milli_neurons=57_600 * 3)
    other_guild = await asyncio.gather(
        *(ledger.reserve(job(user=f"v{i}", guild="g2"), neuron_limits) for i in range(10)),
        return_exceptions=True,
    )
    # The 5 earlier reservations already hold 288,000 mN, over this cap: nothing more fits.
    assert all(isinstance(r, QuotaExceeded) for r in other_guild)
    assert other_guild[0].limit == "daily_neurons"


async def test_refund_gives_back_and_never_twice(ledger):
    limits = Limits(1, WIDE, WIDE, WIDE)
    first = await ledger.reserve(job(), limits)
    with pytest.raises(QuotaExceeded):
        await ledger.reserve(job(), limits)
    assert await ledger.refund(first.id, "provider_error", "boom")
    assert not await ledger.refund(first.id)  # already closed
    assert not await ledger.settle(first.id, 1, SCHNELL_COST)  # a refunded job stays refunded
    assert await ledger.user_usage("u1", "g1") == (await ledger.user_usage("nobody", "g1"))
    second = await ledger.reserve(job(), limits)
    assert second.state == "reserved"


async def test_settle_records_the_actual_charge(ledger):
    reserved = await ledger.reserve(
        job(cost=Cost(4 * 634, 4 * 57_600), images=4), Limits(*[WIDE] * 4)
    )
    assert await ledger.settle(reserved.id, 3, Cost(3 * 634, 3 * 57_600))
    usage = await ledger.user_usage("u1", "g1")
    assert (usage.images, usage.micro_usd, usage.milli_neurons) == (3, 1902, 172_800)
    settled = await ledger.get_job(reserved.id)
    assert settled is not None and settled.state == "settled"


async def test_idempotency_key_reserves_once(ledger):
    limits = Limits(*[WIDE] * 4)
    first = await ledger.reserve(job(key="interaction-1"), limits)
    with pytest.raises(DuplicateRequest) as duplicate:
        await ledger.reserve(job(key="interaction-1"), limits)
    assert duplicate.value.job.id == first.id
    assert (await ledger.user_usage("u1", "g1")).images == 1


async def test_hammered_totals_equal_the_sum_of_settled_charges(ledger):
    """Random reserve/settle/refund under concurrency: counters always equal the jobs."""
    rng = random.Random(7)
    limits = Limits(user_images=40, user_micro_usd=20_000, guild_micro_usd=150_000,
                    milli_neurons=WIDE)  # fmt: skip

    async def one(n: int) -> int:
        user = f"u{n % 9}"
        cost = Cost(rng.randint(0, 900), rng.randint(0, 80_000))
        try:
            reserved = await ledger.reserve(job(user=user, guild=f"g{n % 2}", cost=cost), limits)
        except QuotaExceeded:
            return 0
        await asyncio.sleep(0)
        if rng.random() < 0.3:
            await ledger.refund(reserved.id)
            return 0
        actual = Cost(cost.micro_usd // 2, cost.milli_neurons // 2)
        await ledger.settle(reserved.id, 1, actual)
        return actual.micro_usd

    charged = await asyncio.gather(*(one(n) for n in range(600)))
    report = await ledger.report(ledger.today(), ledger.today())
    assert report.total_micro_usd == sum(charged)
    assert await ledger.audit() == {"counter_mismatches": 0, "open_jobs": 0}
    for guild in ("g0", "g1"):  # user limits are per server
        per_guild = await ledger.report(ledger.today(), ledger.today(), guild_id=guild)
        for user in per_guild.users:
            assert user.micro_usd <= 20_000 and user.images <= 40


async def test_days_are_utc_days(ledger_location: Path | str):
    moment = [datetime(2026, 3, 1, 23, 59, 30, tzinfo=UTC)]
    ledger = await Ledger.open(ledger_location, clock=lambda: moment[0])
    try:
        limits = Limits(1, WIDE, WIDE, WIDE)
        await ledger.reserve(job(), limits)
        with pytest.raises(QuotaExceeded) as refused:
            await ledger.reserve(job(), limits)
        assert refused.value.resets_at == datetime(2026, 3, 2, tzinfo=UTC)
        moment[0] += timedelta(minutes=1)  # 00:00:30 UTC the next day
        assert (await ledger.reserve(job(), limits)).day == "2026-03-02"
    finally:
        await ledger.close()


async def test_limits_resolve_user_then_guild_then_defaults(ledger):
    defaults = ledger.defaults
    assert await ledger.limits_for("u1", "g1") == Limits(
        defaults.user_daily_images, defaults.user_daily_micro_usd,
        defaults.guild_daily_micro_usd, defaults.daily_milli_neurons,
        defaults.user_daily_uploads, defaults.user_daily_upload_bytes,
    )  # fmt: skip
    await ledger.set_guild_quota("g1", 2_000_000, 5, None)
    await ledger.set_user_quota("g1", "u1", None, 7_000)
    limits = await ledger.limits_for("u1", "g1")
    assert (limits.user_images, limits.user_micro_usd, limits.guild_micro_usd) == (
        5,
        7_000,
        2_000_000,
    )
    other = await ledger.limits_for("u2", "g1")
    assert (other.user_images, other.user_micro_usd) == (5, defaults.user_daily_micro_usd)
    elsewhere = await ledger.limits_for("u1", "g2")
    assert elsewhere.user_images == defaults.user_daily_images


async def test_migrations_set_user_version_and_are_not_applied_twice(tmp_path: Path):
    path = tmp_path / "m.sqlite3"
    first = await Ledger.open(path, QuotaDefaults())
    assert await first.schema_version() == len(MIGRATIONS)
    await first.reserve(job(), Limits(*[WIDE] * 4))
    await first.close()
    again = await Ledger.open(path)
    try:
        assert await again.schema_version() == len(MIGRATIONS)
        assert (await again.user_usage("u1", "g1")).images == 1
    finally:
        await again.close()
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_two_connections_to_one_database_still_hold_the_quota(
    ledger_location: Path | str,
):
    """Two processes (here: two connections, or two pools) sharing the database cannot
    overshoot (tests/test_postgres_ledger.py hammers PostgreSQL from four processes)."""
    a = await Ledger.open(ledger_location)
    b = await Ledger.open(ledger_location)
    try:
        limits = Limits(15, WIDE, WIDE, WIDE)
        outcomes = await asyncio.gather(
            *(ledger.reserve(job(), limits) for ledger in (a, b) for _ in range(40)),
            return_exceptions=True,
        )
        assert sum(not isinstance(o, BaseException) for o in outcomes) == 15
        assert all(isinstance(o, (QuotaExceeded, type(None))) or not isinstance(o, BaseException)
                   for o in outcomes)  # fmt: skip
    finally:
        await a.close()
        await b.close()


async def test_user_quotas_are_per_server_and_reset_clears_today_only(ledger):
    limits = Limits(2, WIDE, WIDE, WIDE)
    for guild in ("g1", "g2"):
        await ledger.reserve(job(guild=guild), limits)
        await ledger.reserve(job(guild=guild), limits)
    with pytest.raises(QuotaExceeded):
        await ledger.reserve(job(guild="g1"), limits)
    await ledger.reset_user_day("g1", "u1", reset_by="admin")
    assert (await ledger.user_usage("u1", "g1")).images == 0
    assert (await ledger.user_usage("u1", "g2")).images == 2  # other servers untouched
    await ledger.reserve(job(guild="g1"), limits)
    await ledger.reserve(job(guild="g1"), limits)
    with pytest.raises(QuotaExceeded):
        await ledger.reserve(job(guild="g1"), limits)
    limits_now, used = await ledger.limits_and_usage("u1", "g1")
    assert used.images == 2 and limits_now.user_images == 25
    assert (await ledger.usage("guild", "g1")).images == 4  # what was spent is all still there
    assert await ledger.audit() == {"counter_mismatches": 0, "open_jobs": 4 + 2}


async def test_each_write_of_a_batch_gets_its_own_row_count(ledger):
    """Writes that arrive together run together (PostgreSQL pipelines the ones of one
    statement): each caller still gets its own statement's row count, in its own place."""
    first, second = [await ledger.reserve(job(key=f"rc-{n}"), Limits(*[WIDE] * 4)) for n in (1, 2)]
    outcomes = await asyncio.gather(
        ledger.settle(first.id, 1, SCHNELL_COST),
        ledger.settle("job_missing_1", 1, SCHNELL_COST),
        ledger.settle(second.id, 1, SCHNELL_COST),
        ledger.settle("job_missing_2", 1, SCHNELL_COST),
        ledger.settle(first.id, 1, SCHNELL_COST),  # already settled, earlier in this batch
    )
    assert outcomes == [True, False, True, False, False]
    assert await ledger.audit() == {"counter_mismatches": 0, "open_jobs": 0}


async def test_a_failing_write_in_a_batch_fails_alone(ledger):
    """Concurrent writes share a transaction; a constraint failure rolls back only itself."""
    from bot.errors import Conflict
    from bot.ledger import Template

    def template(name: str, n: int) -> Template:
        return Template(id=f"tpl_{n}", guild_id="g1", name=name, prompt="a style",
                        created_by="u1", created_at=ledger.now_iso())  # fmt: skip

    names = ["a", "b", "a", "c", "b", "d"]
    outcomes = await asyncio.gather(
        *(ledger.add_template(template(name, n)) for n, name in enumerate(names)),
        *(ledger.reserve(job(key=f"batch-{n}"), Limits(*[WIDE] * 4)) for n in range(5)),
        ledger.reserve(job(key="batch-0"), Limits(*[WIDE] * 4)),
        return_exceptions=True,
    )
    template_outcomes, reserve_outcomes = outcomes[:6], outcomes[6:]
    assert [type(o).__name__ for o in template_outcomes] == [
        "NoneType", "NoneType", "Conflict", "NoneType", "Conflict", "NoneType"
    ]  # fmt: skip
    assert all(isinstance(o, Conflict) for o in template_outcomes if o is not None)
    assert sum(not isinstance(o, BaseException) for o in reserve_outcomes) == 5
    assert isinstance(reserve_outcomes[-1], DuplicateRequest)
    assert sorted(t.name for t in await ledger.list_templates("g1")) == ["a", "b", "c", "d"]
    assert (await ledger.user_usage("u1", "g1")).images == 5
