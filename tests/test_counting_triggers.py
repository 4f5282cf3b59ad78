"""The counting triggers: a job's change reaches exactly its user's, its server's (none outside
a server) and the daily 'all' counter row, on both ledgers; on PostgreSQL (one upsert for the
three rows, migration 13) a settle at the reserved amounts changes nothing the counters see and
so runs no counting trigger at all."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg
import pytest

from bot.catalog import Cost
from bot.ledger import Ledger, Limits
from bot.ledger.jobs import RESERVE_SQL, SETTLE_SQL
from bot.ledger.ledger import NewJob
from bot.ledger.postgres import translate

WIDE = 10**12
COUNTERS_SQL = (
    "SELECT scope, scope_id, images, micro_usd, milli_neurons FROM usage_counters "
    "ORDER BY scope, scope_id"
)


@pytest.mark.both_ledgers
async def test_each_change_reaches_the_users_the_servers_and_the_daily_row(
    ledger_location: Path | str,
) -> None:
    ledger = await Ledger.open(ledger_location)
    limits = Limits(*[WIDE] * 4)
    try:
        in_server = await ledger.reserve(NewJob("generate", "u1", "g1", Cost(634, 57_600), 1, "m"),
                                         limits)  # fmt: skip
        direct = await ledger.reserve(NewJob("generate", "u1", "", Cost(100, 9_000), 2, "m"),
                                      limits)  # fmt: skip
        refunded = await ledger.reserve(NewJob("generate", "u2", "g1", Cost(50, 5), 1, "m"),
                                        limits)  # fmt: skip
        assert await ledger.settle(in_server.id, 1, Cost(700, 60_000))  # a different price
        assert await ledger.settle(direct.id, 2, Cost(100, 9_000))  # the reserved amounts
        assert await ledger.refund(refunded.id)
        rows = [tuple(row) for row in await ledger.database.all(COUNTERS_SQL)]
        assert await ledger.audit() == {"counter_mismatches": 0, "open_jobs": 0}
    finally:
        await ledger.close()
    assert rows == [
        ("all", "", 3, 800, 69_000),
        ("guild", "g1", 1, 700, 60_000),  # no row for the direct message's guild ''
        ("user", ":u1", 2, 100, 9_000),
        ("user", "g1:u1", 1, 700, 60_000),
        ("user", "g1:u2", 0, 0, 0),
    ]


async def run(connection: asyncpg.Connection, sql: str, params: Any) -> str:
    text, args = translate(sql, params)
    return str(await connection.execute(text, *args))


async def counting_calls(connection: asyncpg.Connection) -> dict[str, int]:
    """Calls of the counting trigger functions this backend has not yet reported."""
    rows = await connection.fetch(
        "SELECT funcname, calls FROM pg_stat_xact_user_functions "
        "WHERE funcname IN ('jobs_count_insert', 'jobs_count_update', 'ledger_count')"
    )
    return {str(row["funcname"]): int(row["calls"]) for row in rows}


def calls_since(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {name: n - before.get(name, 0) for name, n in after.items() if n != before.get(name, 0)}


async def test_a_settle_at_the_reserved_amounts_runs_no_counting_trigger(
    postgres_url: str,
) -> None:
    reservation: dict[str, Any] = {
        "id": "job-1", "key": None, "kind": "generate", "user": "u1", "user_scope": "g1:u1",
        "guild": "g1", "day": "2026-12-02", "model": "m", "images": 1, "usd": 634,
        "mn": 57_600, "params": "{}", "fingerprint": None, "bytes": 0,
        "now": "2026-12-02T00:00:00.000+00:00", "user_images": WIDE, "user_usd": WIDE,
        "guild_usd": WIDE, "neurons": WIDE, "hold": None, "owner": None,
    }  # fmt: skip
    connection = await asyncpg.connect(postgres_url)
    try:
        await connection.execute("SET track_functions = 'pl'")
        # The view counts calls not yet flushed to the server's statistics: compare deltas.
        async with connection.transaction():
            before = await counting_calls(connection)
            assert await run(connection, RESERVE_SQL, reservation) == "INSERT 0 1"
            assert calls_since(before, await counting_calls(connection)) == {"jobs_count_insert": 1}
            before = await counting_calls(connection)
            same = (1, 634, 57_600, "2026-12-02T00:00:01", "job-1")
            assert await run(connection, SETTLE_SQL, same) == "UPDATE 1"
            assert calls_since(before, await counting_calls(connection)) == {}
        async with connection.transaction():
            reservation["id"] = "job-2"
            await run(connection, RESERVE_SQL, reservation)
            before = await counting_calls(connection)
            other = (1, 700, 60_000, "2026-12-02T00:00:01", "job-2")
            assert await run(connection, SETTLE_SQL, other) == "UPDATE 1"
            assert calls_since(before, await counting_calls(connection)) == {
                "jobs_count_update": 1, "ledger_count": 1,
            }  # fmt: skip
        rows = await connection.fetch(COUNTERS_SQL)
    finally:
        await connection.close()
    assert [tuple(row) for row in rows] == [
        ("all", "", 2, 1334, 117_600),
        ("guild", "g1", 2, 1334, 117_600),
        ("user", "g1:u1", 2, 1334, 117_600),
    ]
