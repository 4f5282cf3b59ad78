"""Generations in flight, shared by every process on the ledger: one row per (cache key, scope)
while one process generates that image, so an identical request in another process waits for
it instead of paying for it again (``bot/generation/shared_flights.py`` decides who waits).

A row names its owner process. A row whose owner holds no live lease (``leases``) is stale:
the next claim takes it over, and lease recovery deletes it. Claim and release are one
statement each. On PostgreSQL the release also NOTIFYs ``CHANNEL`` with each cache key (sent
when its transaction commits, so after the image's record), and waiters wake at once; on
SQLite, and whenever the listening connection is gone, waiters poll.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from bot.ledger.core import LedgerDatabase

log = logging.getLogger(__name__)

CHANNEL = "image_flights"
_LIVE = "EXISTS (SELECT 1 FROM instances i WHERE i.id = flights.owner AND i.lease_until >= :now)"
# One statement: a new row, or a stale one (or this process's own leftover) taken over.
CLAIM_SQL = (
    "INSERT INTO flights (cache_key, scope, owner, started_at) VALUES (:key, :scope, :me, :now) "  # noqa: S608
    "ON CONFLICT (cache_key, scope) DO UPDATE SET owner = excluded.owner, "
    f"started_at = excluded.started_at WHERE flights.owner = :me OR NOT {_LIVE}"
)
FORGET_DEAD_SQL = f"DELETE FROM flights WHERE NOT {_LIVE}"  # noqa: S608


def _keys(count: int) -> str:
    return ", ".join(f":k{n}" for n in range(count))


def state_sql(count: int) -> str:
    return (
        f"SELECT cache_key, CASE WHEN {_LIVE} THEN 1 ELSE 0 END AS live FROM flights "  # noqa: S608
        f"WHERE scope = :scope AND cache_key IN ({_keys(count)})"
    )


def release_sql(dialect: str, count: int) -> str:
    delete = (
        f"DELETE FROM flights WHERE owner = :me AND scope = :scope "  # noqa: S608
        f"AND cache_key IN ({_keys(count)})"
    )
    if dialect != "postgresql":
        return delete
    return (
        f"WITH gone AS ({delete} RETURNING cache_key) "  # noqa: S608
        f"SELECT pg_notify('{CHANNEL}', cache_key) FROM gone"
    )


class FlightTable:
    """This process's flights, other processes' flights, and wake-ups when one ends."""

    def __init__(self, db: LedgerDatabase, instance_id: str) -> None:
        self._db = db
        self.instance_id = instance_id
        # cache key → the wake-up events of this process's waiters for it (one per waiter:
        # bounded by the number of waiters, each removed when its wait ends)
        self._watchers: dict[str, set[asyncio.Event]] = {}

    def _params(self, scope: str, keys: Sequence[str]) -> dict[str, str]:
        params = {"me": self.instance_id, "now": self._db.now_iso(), "scope": scope}
        params.update({f"k{n}": key for n, key in enumerate(keys)})
        return params

    async def claim(self, cache_key: str, scope: str) -> bool:
        """Lead the generation of this image: True unless a live process already does."""
        params = self._params(scope, ()) | {"key": cache_key}
        return await self._db.write(CLAIM_SQL, params) == 1

    async def release(self, cache_keys: Sequence[str], scope: str) -> None:
        """End this process's flights for these images (made or not), and wake the waiters.
        A busy or full database does not leave the row to block others while this process
        lives: the release is retried in the background until it lands."""
        if cache_keys:
            sql = release_sql(self._db.dialect, len(cache_keys))
            await self._db.write_eventually(sql, self._params(scope, cache_keys), "a flight")

    async def live(self, cache_keys: Sequence[str], scope: str) -> dict[str, bool]:
        """Each key still in flight, and whether its owner's lease holds; absent: ended."""
        rows = await self._db.all(state_sql(len(cache_keys)), self._params(scope, cache_keys))
        return {row[0]: bool(row[1]) for row in rows}

    async def forget_dead(self) -> int:
        """Delete the flights of processes whose lease ran out (lease recovery)."""
        return await self._db.write(FORGET_DEAD_SQL, {"now": self._db.now_iso()})

    async def count(self) -> int:
        return await self._db.scalar("SELECT COUNT(*) FROM flights")

    # -- waking -------------------------------------------------------------------------------

    async def listening(self) -> bool:
        """Whether flights that end wake waiters here at once (PostgreSQL's LISTEN, started on
        first use); False: waiters poll."""
        return await self._db.listen(CHANNEL, self._notified)

    def watch(self, cache_keys: Sequence[str]) -> asyncio.Event:
        """An event set when any of these flights ends: take it before looking, so an end
        between the look and the wait is not missed."""
        event = asyncio.Event()
        for key in cache_keys:
            self._watchers.setdefault(key, set()).add(event)
        return event

    def unwatch(self, cache_keys: Sequence[str], event: asyncio.Event) -> None:
        for key in cache_keys:
            watchers = self._watchers.get(key)
            if watchers is not None:
                watchers.discard(event)
                if not watchers:
                    del self._watchers[key]

    def _notified(self, cache_key: str) -> None:
        for event in self._watchers.get(cache_key, ()):
            event.set()
