"""The PostgreSQL ledger across processes: reservations from several processes at once, each
with its own pool of connections, never pass a user's, a server's or the whole bot's daily
limit, and the counters still equal the charges after settles and refunds race them."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from bot.catalog import Cost
from bot.errors import LedgerUnavailable
from bot.ledger import Ledger, Limits
from bot.ledger.images import INSERT_IMAGE_SQL
from bot.ledger.jobs import INSERT_FREE_JOB_SQL
from bot.ledger.ledger import NewJob
from bot.ledger.postgres import PostgresDatabase, masked_url, translate
from bot.ledger.records import ImageRecord

ROOT = Path(__file__).resolve().parent.parent
PROCESSES = 4
# One process of the hammer: connect, say ready, wait for "go", then 80 reservations at once
# (a quarter settled at a different price, a quarter refunded), and print what it was granted.
HAMMER = r"""
import asyncio, json, sys
from bot.catalog import Cost
from bot.errors import QuotaExceeded
from bot.ledger import Ledger, Limits
from bot.ledger.ledger import NewJob

async def main(url, me):
    ledger = await Ledger.open(url)
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    user = Limits(user_images=37, user_micro_usd=10**12, guild_micro_usd=10**12,
                  milli_neurons=10**15)
    guild = Limits(10**6, 10**12, guild_micro_usd=634 * 29, milli_neurons=10**15)
    neurons = Limits(10**6, 10**12, 10**12, milli_neurons=57_600 * 23)

    async def one(i):
        kind = i % 3
        if kind == 0:
            new, limits = NewJob("generate", "u1", "g1", Cost(1, 0), 1, "m", None), user
        elif kind == 1:
            new = NewJob("generate", f"p{me}-{i}", "g2", Cost(634, 0), 1, "m", None)
            limits = guild
        else:
            new = NewJob("generate", f"n{me}-{i}", "g3", Cost(1, 57_600), 1, "m", None)
            limits = neurons
        try:
            job = await ledger.reserve(new, limits)
        except QuotaExceeded as refused:
            return ("refused", refused.limit)
        return ("granted", job.id)

    outcomes = await asyncio.gather(*(one(i) for i in range(240)))
    granted = [o[1] for o in outcomes if o[0] == "granted"]
    print(json.dumps({"granted": len(granted),
                      "refused": sorted({o[1] for o in outcomes if o[0] == "refused"})}))
    await ledger.close()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def hammer(url: str) -> list[dict[str, object]]:
    children = [
        subprocess.Popen(  # noqa: S603
            [sys.executable, "-c", HAMMER, url, str(n)],
            cwd=ROOT,
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        for n in range(PROCESSES)
    ]
    for child in children:  # every process connected and migrated before any reserves
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    for child in children:
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
    results = []
    for child in children:
        out, _ = child.communicate(timeout=120)
        assert child.returncode == 0
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


async def test_processes_reserving_at_once_never_pass_any_limit(postgres_url: str) -> None:
    results = await asyncio.to_thread(hammer, postgres_url)
    # 4 processes x 80 of each kind, against limits of 37 images, 29 and 23: exactly those.
    assert sum(int(r["granted"]) for r in results) == 37 + 29 + 23  # type: ignore[call-overload]
    ledger = await Ledger.open(postgres_url)
    try:
        assert (await ledger.user_usage("u1", "g1")).images == 37
        assert (await ledger.usage("guild", "g2")).micro_usd == 634 * 29
        assert (await ledger.usage("all", "")).milli_neurons == 57_600 * 23
        assert await ledger.audit() == {"counter_mismatches": 0, "open_jobs": 37 + 29 + 23}
    finally:
        await ledger.close()
    refused = set().union(*(r["refused"] for r in results))  # type: ignore[arg-type]
    assert refused == {"user_daily_images", "guild_daily_usd", "daily_neurons"}


async def test_settles_and_refunds_racing_reservations_keep_the_counters_exact(
    postgres_url: str,
) -> None:
    first, second = await Ledger.open(postgres_url), await Ledger.open(postgres_url)
    limits = Limits(user_images=50, user_micro_usd=10**12, guild_micro_usd=10**12,
                    milli_neurons=10**15)  # fmt: skip

    async def cycle(ledger: Ledger, i: int) -> int:
        try:
            job = await ledger.reserve(NewJob("generate", "u", "g", Cost(634, 57_600), 1, "m",
                                              None), limits)  # fmt: skip
        except Exception:
            return 0
        if i % 2:
            await ledger.settle(job.id, 1, Cost(700 + i, 60_000))
            return 1
        await ledger.refund(job.id, "test", "refunded")
        return 0

    try:
        settled = await asyncio.gather(
            *(cycle(first if i % 2 else second, i) for i in range(300))
        )
        assert await first.audit() == {"counter_mismatches": 0, "open_jobs": 0}
        usage = await first.user_usage("u", "g")
        assert usage.images == sum(settled) <= 50
        report = await first.report(first.today(), first.today())
        assert report.total_micro_usd == usage.micro_usd
    finally:
        await first.close()
        await second.close()


async def test_a_batch_is_a_few_round_trips_however_many_writes_it_holds(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """50 reservations that arrive together: BEGIN and the writer lock, the 50 pipelined,
    COMMIT; three round trips (each statement on its own would be 52), and no session reset
    when the connection goes back to the pool (asyncpg's default, a fourth)."""
    ledger = await Ledger.open(postgres_url)
    calls: list[str] = []
    execute, fetchmany = asyncpg.Connection.execute, asyncpg.Connection.fetchmany

    async def counted_execute(self: asyncpg.Connection, query: str, *args: Any, **kw: Any) -> Any:
        calls.append("execute " + query.split()[0])
        return await execute(self, query, *args, **kw)

    async def counted_fetchmany(self: asyncpg.Connection, query: str, args: Any, **kw: Any) -> Any:
        calls.append(f"fetchmany {len(list(args))}")
        return await fetchmany(self, query, args, **kw)

    monkeypatch.setattr(asyncpg.Connection, "execute", counted_execute)
    monkeypatch.setattr(asyncpg.Connection, "fetchmany", counted_fetchmany)
    wide = Limits(10**6, 10**12, 10**12, 10**15)
    try:
        jobs = await asyncio.gather(
            *(ledger.reserve(NewJob("generate", f"u{n}", "g", Cost(634, 0), 1, "m", None), wide)
              for n in range(50))
        )  # fmt: skip
        assert calls == ["execute BEGIN;", "fetchmany 50", "execute COMMIT"]
        assert len({j.id for j in jobs}) == 50
        assert (await ledger.usage("guild", "g")).micro_usd == 634 * 50
    finally:
        await ledger.close()


async def test_a_pipelined_group_counts_each_writes_rows_even_several(postgres_url: str) -> None:
    """One statement text written at once by four callers is one pipelined group; each caller
    gets the rows its own execution changed (2, 0, 1, 2: read back from the mark each changed
    row returns), whatever the others changed."""
    database = await PostgresDatabase.open(postgres_url)
    now = database.now_iso()
    try:
        for n, user in enumerate(["a", "a", "b", "c", "c"]):
            await database.write(INSERT_FREE_JOB_SQL, (f"job_{n}", None, "generate", user, "g",
                                 database.today(), "m", "[]", "{}", None, now, now))  # fmt: skip
        note = "UPDATE jobs SET note = ? WHERE user_id = ?"
        outcomes = await asyncio.gather(
            *(database.write(note, ("seen", user)) for user in ("a", "nobody", "b", "c"))
        )
        assert outcomes == [2, 0, 1, 2]
        assert await database.scalar("SELECT count(*) FROM jobs WHERE note = 'seen'") == 5
    finally:
        await database.close()


async def test_a_batch_whose_grouping_breaks_a_foreign_key_runs_again_in_order(
    postgres_url: str,
) -> None:
    """A batch runs grouped by statement; an image arriving before the insert of its job (in
    the same batch) would fail that way, so the batch runs again in arrival order and all land."""
    database = await PostgresDatabase.open(postgres_url)

    def free_job(job_id: str) -> tuple[object, ...]:
        now = database.now_iso()
        return (job_id, None, "generate", "u", "g", database.today(), "m", "[]", "{}", None,
                now, now)  # fmt: skip

    def image(image_id: str, job_id: str) -> tuple[object, ...]:
        return ImageRecord(image_id, "generated", "u", "g", 8, 8, "local", image_id, "u",
                           "image/png", 10, database.now_iso(), job_id=job_id).to_row()  # fmt: skip

    try:
        await database.write(INSERT_FREE_JOB_SQL, free_job("job_a"))
        outcomes = await asyncio.gather(
            database.write(INSERT_IMAGE_SQL, image("img_a", "job_a")),
            database.write(INSERT_FREE_JOB_SQL, free_job("job_b")),
            database.write(INSERT_IMAGE_SQL, image("img_b", "job_b")),
            return_exceptions=True,
        )
        assert outcomes == [1, 1, 1]
        rows = await database.all("SELECT id, job_id FROM images ORDER BY id")
        assert [tuple(r) for r in rows] == [("img_a", "job_a"), ("img_b", "job_b")]
    finally:
        await database.close()


async def test_an_unreachable_server_is_unavailable_and_its_password_never_shown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = "postgresql://bot:TEST-SECRET-pg-password-5e1@127.0.0.1:9/ledger"
    with pytest.raises(LedgerUnavailable):
        await Ledger.open(url)
    assert masked_url(url) == "postgresql://bot:***@127.0.0.1:9/ledger"
    assert "127.0.0.1:9" in caplog.text and "TEST-SECRET" not in caplog.text


def test_parameters_are_translated_in_one_place() -> None:
    assert translate("SELECT ? + ?, '?', x::text", (1, 2)) == ("SELECT $1 + $2, '?', x::text",
                                                             (1, 2))  # fmt: skip
    text, args = translate("SELECT :a, :b, :a, ':c'", {"b": 2, "a": 1})
    assert (text, list(args)) == ("SELECT $1, $2, $1, ':c'", [1, 2])
