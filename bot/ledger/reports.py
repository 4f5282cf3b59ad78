"""Reports over settled charges, CSV rows, and the audit that checks the counters against the
jobs they summarise. Portable SQL (``||`` concatenation and ``WITH`` are standard)."""

from __future__ import annotations

from typing import Any

from bot.ledger.core import LedgerDatabase
from bot.ledger.records import OPEN_STATES, Job, UsageReport, UserUsage

# Each report query is completed with the filter from ``_settled_between`` (constant text).
TOTALS_SQL = (
    "SELECT COALESCE(SUM(images), 0), COALESCE(SUM(micro_usd), 0), "
    "COALESCE(SUM(milli_neurons), 0) FROM jobs WHERE {where}"
)
BY_USER_SQL = (
    "SELECT user_id, SUM(images), SUM(micro_usd) FROM jobs WHERE {where} "
    "GROUP BY user_id ORDER BY SUM(micro_usd) DESC, SUM(images) DESC, user_id"
)
BY_MODEL_SQL = (
    "SELECT COALESCE(model, ''), SUM(images), SUM(micro_usd) FROM jobs "
    "WHERE {where} GROUP BY model ORDER BY SUM(micro_usd) DESC"
)
BY_DAY_SQL = (
    "SELECT day, SUM(images), SUM(micro_usd) FROM jobs WHERE {where} GROUP BY day ORDER BY day"
)
SETTLED_JOBS_SQL = (
    "SELECT * FROM jobs WHERE state = 'settled' AND day BETWEEN ? AND ? "
    "AND (CAST(? AS TEXT) IS NULL OR guild_id = ?) AND (images > 0 OR micro_usd > 0) "
    "ORDER BY created_at LIMIT ?"
)
COUNTER_MISMATCHES_SQL = """
WITH sums AS (
    SELECT day, 'user' AS scope, guild_id || ':' || user_id AS scope_id,
           SUM(images) AS i, SUM(micro_usd) AS u, SUM(milli_neurons) AS n
      FROM jobs WHERE state != 'refunded' GROUP BY day, guild_id, user_id
    UNION ALL
    SELECT day, 'guild', guild_id, SUM(images), SUM(micro_usd), SUM(milli_neurons)
      FROM jobs WHERE state != 'refunded' AND guild_id != '' GROUP BY day, guild_id
    UNION ALL
    SELECT day, 'all', '', SUM(images), SUM(micro_usd), SUM(milli_neurons)
      FROM jobs WHERE state != 'refunded' GROUP BY day
)
SELECT COUNT(*) FROM usage_counters c
LEFT JOIN sums s ON s.day = c.day AND s.scope = c.scope AND s.scope_id = c.scope_id
WHERE c.images != COALESCE(s.i, 0) OR c.micro_usd != COALESCE(s.u, 0)
   OR c.milli_neurons != COALESCE(s.n, 0)
"""
OPEN_COUNT_SQL = f"SELECT COUNT(*) FROM jobs WHERE state IN {OPEN_STATES!r}"  # noqa: S608


def _settled_between(
    start_day: str, end_day: str, guild_id: str | None, user_id: str | None
) -> tuple[str, list[Any]]:
    """The WHERE clause and its parameters for settled charges in a period."""
    where = "state = 'settled' AND day BETWEEN ? AND ?"
    params: list[Any] = [start_day, end_day]
    if guild_id is not None:
        where += " AND guild_id = ?"
        params.append(guild_id)
    if user_id is not None:
        where += " AND user_id = ?"
        params.append(user_id)
    return where, params


class Reports:
    def __init__(self, db: LedgerDatabase) -> None:
        self._db = db

    async def report(
        self, start_day: str, end_day: str, guild_id: str | None, user_id: str | None
    ) -> UsageReport:
        where, params = _settled_between(start_day, end_day, guild_id, user_id)
        totals = await self._db.one(TOTALS_SQL.format(where=where), params)
        users = await self._db.all(BY_USER_SQL.format(where=where), params)
        models = await self._db.all(BY_MODEL_SQL.format(where=where), params)
        days = await self._db.all(BY_DAY_SQL.format(where=where), params)
        return UsageReport(
            start_day=start_day,
            end_day=end_day,
            total_images=totals[0],
            total_micro_usd=totals[1],
            total_milli_neurons=totals[2],
            users=[UserUsage(r[0], r[1], r[2]) for r in users],
            by_model={r[0]: (r[1], r[2]) for r in models},
            by_day={r[0]: (r[1], r[2]) for r in days},
        )

    async def settled_jobs(
        self, start_day: str, end_day: str, guild_id: str | None, limit: int
    ) -> list[Job]:
        params = (start_day, end_day, guild_id, guild_id, limit)
        return [Job.from_row(r) for r in await self._db.all(SETTLED_JOBS_SQL, params)]

    async def audit(self) -> dict[str, int]:
        mismatches = await self._db.scalar(COUNTER_MISMATCHES_SQL)
        open_count = await self._db.scalar(OPEN_COUNT_SQL)
        return {"counter_mismatches": mismatches, "open_jobs": open_count}
