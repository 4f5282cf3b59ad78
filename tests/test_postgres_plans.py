"""The ledger's hot writes keep a cheap plan on PostgreSQL whatever the statistics.

asyncpg prepares every statement, and after five runs PostgreSQL may keep one generic plan,
made with the statistics of that moment, until they change (autovacuum's ANALYZE). Made on a
new (empty) ledger, the reservation's lookup of its batch hold scanned ``jobs_day`` or
``jobs_open`` (every job of the day, or every open one) instead of the primary key, so each
reservation cost more as the day went on (bench_postgres.py: 0.7-2 ms of server CPU a
reserve+settle pair before, ~0.23 ms after). Here the plans are forced generic on an empty
database, the worst case, and must read jobs only through indexes that do not grow with the
day's jobs."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import pytest

from bot.ledger.jobs import REFUND_SQL, RESERVE_SQL, RESERVE_UPLOAD_SQL, SET_STATE_SQL, SETTLE_SQL
from bot.ledger.postgres import translate

WIDE = 10**15
RESERVATION: dict[str, object] = {
    "id": "job-1", "key": None, "kind": "generate", "user": "u1", "user_scope": "g1:u1",
    "guild": "g1", "day": "2026-12-02", "model": "m", "images": 1, "usd": 634, "mn": 57_600,
    "params": "{}", "fingerprint": None, "bytes": 0, "now": "2026-12-02T00:00:00.000+00:00",
    "user_images": WIDE, "user_usd": WIDE, "guild_usd": WIDE, "neurons": WIDE, "uploads": WIDE,
    "upload_bytes": WIDE, "hold": "job-0", "owner": None,
}  # fmt: skip
STATEMENTS: dict[str, tuple[str, Any]] = {
    "reserve": (RESERVE_SQL, RESERVATION),
    "reserve_upload": (RESERVE_UPLOAD_SQL, RESERVATION),
    "settle": (SETTLE_SQL, (1, 634, 57_600, "2026-12-02T00:00:01", "job-1")),
    "refund": (REFUND_SQL, ("failed", "it failed", "2026-12-02T00:00:01", "job-1")),
    "set_state": (SET_STATE_SQL, ("generating", "2026-12-02T00:00:01", "job-1")),
}
# Indexes of jobs whose entries for one key grow with the day's (or every open) job.
GROWING = {"jobs_day", "jobs_open"}


def literal(value: object) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, int):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


def scans_of_jobs(plan: dict[str, Any]) -> list[str]:
    """How each node of the plan reads the jobs table: its index, or its node type."""
    found = []
    if plan.get("Relation Name") == "jobs" and "Scan" in plan["Node Type"]:
        found.append(plan.get("Index Name", plan["Node Type"]))
    for child in plan.get("Plans", []):
        found += scans_of_jobs(child)
    return found


@pytest.mark.parametrize("name", list(STATEMENTS))
async def test_a_generic_plan_made_on_an_empty_ledger_reads_jobs_by_narrow_indexes(
    postgres_url: str, name: str
) -> None:
    sql, params = STATEMENTS[name]
    text, args = translate(sql, params)
    connection = await asyncpg.connect(postgres_url)
    try:
        await connection.execute("SET plan_cache_mode = force_generic_plan")
        await connection.execute(f"PREPARE hot AS {text}")
        arguments = ", ".join(literal(arg) for arg in args)
        async with connection.transaction():
            explained = await connection.fetchval(f"EXPLAIN (FORMAT JSON) EXECUTE hot({arguments})")
    finally:
        await connection.close()
    scans = scans_of_jobs(json.loads(explained)[0]["Plan"])
    assert scans, "the statement reads jobs somewhere"
    assert not GROWING & set(scans), scans
    assert "Seq Scan" not in scans, scans


async def test_a_reservation_against_a_hold_finds_it_by_key_under_generic_plans(
    postgres_url: str,
) -> None:
    """The reservation and the hold trigger (plpgsql, its own cached plans) run with generic
    plans made on an empty ledger; the scans this transaction made show which indexes."""
    connection = await asyncpg.connect(postgres_url)
    transaction = connection.transaction()
    try:
        await connection.execute("SET plan_cache_mode = force_generic_plan")
        await transaction.start()  # rolled back: nothing kept
        await connection.execute(
            "INSERT INTO jobs (id, kind, user_id, guild_id, day, state, images, created_at, "
            "updated_at) VALUES ('job-0', 'generate', 'u1', 'g1', '2026-12-02', 'reserved', 3, "
            "'x', 'x')"
        )
        text, args = translate(RESERVE_SQL, RESERVATION)
        assert await connection.execute(text, *args) == "INSERT 0 1"
        scans = {
            index: await connection.fetchval(
                "SELECT pg_stat_get_xact_numscans($1::regclass)", index
            )
            for index in ("jobs_pkey", "jobs_day", "jobs_open")
        }
        assert await connection.fetchval("SELECT images FROM jobs WHERE id = 'job-0'") == 2
    finally:
        await transaction.rollback()
        await connection.close()
    assert scans["jobs_pkey"] == 2, scans  # the hold's images read, then drawn from
    assert scans["jobs_day"] == scans["jobs_open"] == 0, scans
