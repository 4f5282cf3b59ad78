"""Limits every process on one ledger shares, each change ONE atomic statement (portable SQL:
``ON CONFLICT … DO UPDATE … WHERE`` and ``INSERT … SELECT … WHERE`` read the same in SQLite ≥ 3.35
and PostgreSQL; both cores serialise writers, so a check and its count cannot interleave).

``api_rate_windows``: a counter per API key per fixed window; the upsert adds one only while the
count is under the limit, so its changed row count (1 or 0) is the answer. ``cloudflare_grants``:
blocks of slots of a Cloudflare budget (``budget``: 'account', 'ai_run', 'ai_img2img'); a block is
granted only while the slots of every live grant of that budget plus the new block stay within its
limit. ``cloudflare_pause``: one row, until when a 429 paused the account. Times are Unix
milliseconds (integers, both dialects).
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.ledger.core import LedgerDatabase
from bot.ledger.records import new_id

# The budgets a grant can be of (the CHECK of ``cloudflare_grants.budget``): the account's API
# limit, and Workers AI's per-minute limits of text-to-image runs and of the img2img model.
ACCOUNT, AI_RUN, AI_IMG2IMG = "account", "ai_run", "ai_img2img"

RATE_HIT_SQL = """
INSERT INTO api_rate_windows (key_id, window_start, requests) VALUES (:key, :window, 1)
ON CONFLICT (key_id, window_start) DO UPDATE SET requests = api_rate_windows.requests + 1
WHERE api_rate_windows.requests < :limit
"""
RATE_FORGET_SQL = "DELETE FROM api_rate_windows WHERE window_start < :window"
# The grant: at most :block slots, fewer when the budget is short, none while paused.
GRANT_SQL = """
INSERT INTO cloudflare_grants (id, instance_id, budget, slots, granted_ms, expires_ms)
SELECT :id, :me, :budget,
       CASE WHEN CAST(:block AS BIGINT) < CAST(:limit AS BIGINT) - live.used
            THEN CAST(:block AS BIGINT) ELSE CAST(:limit AS BIGINT) - live.used END,
       CAST(:now AS BIGINT), CAST(:expires AS BIGINT)
FROM (SELECT CAST(COALESCE(SUM(slots), 0) AS BIGINT) AS used
      FROM cloudflare_grants
      WHERE budget = :budget AND expires_ms > CAST(:now AS BIGINT)) AS live
WHERE live.used < CAST(:limit AS BIGINT)
AND NOT EXISTS (SELECT 1 FROM cloudflare_pause WHERE paused_until_ms > CAST(:now AS BIGINT))
"""
GRANTED_SQL = "SELECT slots FROM cloudflare_grants WHERE id = ?"
BUDGET_SQL = """
SELECT (SELECT COALESCE(MAX(paused_until_ms), 0) FROM cloudflare_pause),
       (SELECT MIN(expires_ms) FROM cloudflare_grants
        WHERE budget = :budget AND expires_ms > CAST(:now AS BIGINT))
"""
PAUSE_SQL = """
INSERT INTO cloudflare_pause (id, paused_until_ms) VALUES (1, :until)
ON CONFLICT (id) DO UPDATE SET paused_until_ms = excluded.paused_until_ms
WHERE cloudflare_pause.paused_until_ms < excluded.paused_until_ms
"""
PAUSED_SQL = "SELECT COALESCE(MAX(paused_until_ms), 0) FROM cloudflare_pause"
GRANTS_FORGET_SQL = "DELETE FROM cloudflare_grants WHERE expires_ms <= :now"


@dataclass(frozen=True)
class Refused:
    """Why no block was granted: until when the account is paused (0: it is not), and when
    the first live grant runs out (None: none is live)."""

    paused_until_ms: int
    next_expiry_ms: int | None


class SharedLimits:
    """The statements behind the shared API rate limit and the Cloudflare account budget."""

    def __init__(self, db: LedgerDatabase, instance_id: str) -> None:
        self._db = db
        self.instance_id = instance_id

    def now_ms(self) -> int:
        """The ledger's clock in Unix milliseconds (every process's grants compare on it)."""
        return int(self._db.clock().timestamp() * 1000)

    # -- API rate windows -----------------------------------------------------------------

    async def hit(self, key_id: str, window_start: int, limit: int) -> bool:
        """Count one request of ``key_id`` in its window; False (nothing counted) when the
        window already holds ``limit``."""
        params = {"key": key_id, "window": window_start, "limit": limit}
        return await self._db.write(RATE_HIT_SQL, params) == 1

    async def forget_windows(self, before: int) -> int:
        return await self._db.write(RATE_FORGET_SQL, {"window": before})

    # -- the Cloudflare account budget ----------------------------------------------------

    async def grant(
        self, block: int, limit: int, hold_ms: int, now: int | None = None,
        budget: str = ACCOUNT,
    ) -> int | Refused:  # fmt: skip
        """Take up to ``block`` slots of ``budget``, counted against ``limit`` for ``hold_ms``
        from now: the number granted, or why none was."""
        now = self.now_ms() if now is None else now
        grant_id = new_id("grant")
        params = {"id": grant_id, "me": self.instance_id, "block": block, "limit": limit,
                  "now": now, "expires": now + hold_ms, "budget": budget}  # fmt: skip
        if await self._db.write(GRANT_SQL, params) == 1:
            return await self._db.scalar(GRANTED_SQL, (grant_id,))
        row = await self._db.one(BUDGET_SQL, {"now": now, "budget": budget})
        paused = int(row[0]) if row is not None else 0
        expiry = int(row[1]) if row is not None and row[1] is not None else None
        return Refused(paused if paused > now else 0, expiry)

    async def live_slots(self, now: int | None = None, budget: str = ACCOUNT) -> int:
        now = self.now_ms() if now is None else now
        return await self._db.scalar(
            "SELECT COALESCE(SUM(slots), 0) FROM cloudflare_grants"
            " WHERE budget = ? AND expires_ms > ?",
            (budget, now),
        )

    async def pause(self, until_ms: int) -> None:
        await self._db.write(PAUSE_SQL, {"until": until_ms})

    async def paused_until(self) -> int:
        return await self._db.scalar(PAUSED_SQL)

    async def forget_grants(self, now: int | None = None) -> int:
        return await self._db.write(
            GRANTS_FORGET_SQL, {"now": self.now_ms() if now is None else now}
        )
