"""Processes and their leases: which process runs each open job, and which jobs are orphans.

A process registers an instance row and renews its ``lease_until``; every job it reserves names
it as ``owner``. A job is an orphan when it is open and no live lease covers its owner (the
process died, or the job is from before owners were recorded). Any process may *claim* an
orphan (one conditional UPDATE, so two processes racing for one job cannot both win: the loser
sees the winner's live lease) and then closes it as crash recovery does. Times are ISO-8601 UTC
strings of one fixed format, so they compare as text in both dialects.
"""

from __future__ import annotations

import os
import secrets
import socket
from datetime import UTC, timedelta

from bot.ledger.core import LedgerDatabase
from bot.ledger.records import OPEN_STATES, Job

_OPEN = f"j.state IN {OPEN_STATES!r}"
_NO_LIVE_OWNER = (
    "(j.owner IS NULL OR j.owner != :me) AND NOT EXISTS "
    "(SELECT 1 FROM instances i WHERE i.id = j.owner AND i.lease_until >= :now)"
)
REGISTER_SQL = (
    "INSERT INTO instances (id, started_at, lease_until) VALUES (:me, :now, :until) "
    "ON CONFLICT (id) DO UPDATE SET lease_until = excluded.lease_until"
)
RENEW_SQL = "UPDATE instances SET lease_until = :until WHERE id = :me AND lease_until >= :now"
RELEASE_SQL = "DELETE FROM instances WHERE id = :me"
FORGET_SQL = "DELETE FROM instances WHERE lease_until < :long_ago"
ORPHANS_SQL = f"SELECT j.* FROM jobs j WHERE {_OPEN} AND {_NO_LIVE_OWNER} ORDER BY j.created_at"  # noqa: S608
# The conditions are on the updated row itself (not a subquery over jobs), so PostgreSQL's
# re-check of a row another claim just changed sees the new owner and its live lease.
CLAIM_SQL = (
    f"UPDATE jobs SET owner = :me WHERE id = :id AND state IN {OPEN_STATES!r} "  # noqa: S608
    "AND (owner IS NULL OR owner != :me) AND NOT EXISTS "
    "(SELECT 1 FROM instances i WHERE i.id = jobs.owner AND i.lease_until >= :now)"
)
FORGET_AFTER = timedelta(days=1)


def new_instance_id() -> str:
    """Unique per process start, readable in the ``instances`` table: host, pid, random."""
    return f"{socket.gethostname()[:40]}-{os.getpid()}-{secrets.token_hex(4)}"


class Leases:
    """This process's lease (``instance_id``) and the orphaned jobs of others."""

    def __init__(self, db: LedgerDatabase, instance_id: str) -> None:
        self._db = db
        self.instance_id = instance_id

    def _times(self, seconds: float = 0.0) -> dict[str, str]:
        now = self._db.clock().astimezone(UTC)
        return {
            "me": self.instance_id,
            "now": now.isoformat(timespec="milliseconds"),
            "until": (now + timedelta(seconds=seconds)).isoformat(timespec="milliseconds"),
        }

    async def register(self, seconds: float) -> None:
        await self._db.write(REGISTER_SQL, self._times(seconds))

    async def renew(self, seconds: float) -> bool:
        """Extend the lease; False if it had already run out (others may have taken over this
        process's jobs), in which case it is registered again from now."""
        if await self._db.write(RENEW_SQL, self._times(seconds)) == 1:
            return True
        await self.register(seconds)
        return False

    async def release(self) -> None:
        """At a clean stop: whatever this process left open is at once an orphan for others."""
        await self._db.write(RELEASE_SQL, {"me": self.instance_id})
        long_ago = (self._db.clock().astimezone(UTC) - FORGET_AFTER).isoformat(
            timespec="milliseconds"
        )
        await self._db.write(FORGET_SQL, {"long_ago": long_ago})

    async def orphans(self) -> list[Job]:
        times = self._times()
        rows = await self._db.all(ORPHANS_SQL, {"me": times["me"], "now": times["now"]})
        return [Job.from_row(row) for row in rows]

    async def claim(self, job_id: str) -> bool:
        """Make an orphan this process's own; False if it is not an orphan (any more)."""
        times = self._times()
        params = {"me": times["me"], "now": times["now"], "id": job_id}
        return await self._db.write(CLAIM_SQL, params) == 1
