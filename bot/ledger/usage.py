"""Usage: the daily counters a quota is checked against, admin resets, and why a request was
refused, in numbers (a ``Refusal``; ``bot.refusals`` words it).

The counters themselves are kept by triggers on ``jobs`` (see ``migrations``). Portable SQL;
``||`` concatenation is standard (PostgreSQL has it too).
"""

from __future__ import annotations

from datetime import datetime

from bot.errors import Refusal
from bot.ledger.core import LedgerDatabase
from bot.ledger.records import Limits, NewJob, Usage, next_utc_midnight, utc_day
from bot.refusals import (
    DAILY_NEURONS,
    GUILD_DAILY_USD,
    USER_DAILY_IMAGES,
    USER_DAILY_UPLOAD_BYTES,
    USER_DAILY_UPLOADS,
    USER_DAILY_USD,
)

COUNTER_SQL = (
    "SELECT images, micro_usd, milli_neurons FROM usage_counters "
    "WHERE day = ? AND scope = ? AND scope_id = ?"
)
USER_USAGE_SQL = (
    "SELECT c.images - COALESCE(r.images, 0), c.micro_usd - COALESCE(r.micro_usd, 0), "
    "c.milli_neurons FROM usage_counters c LEFT JOIN quota_resets r "
    "ON r.day = c.day AND r.user_scope = c.scope_id "
    "WHERE c.day = ? AND c.scope = 'user' AND c.scope_id = ?"
)
RESET_USER_DAY_SQL = """
INSERT INTO quota_resets (day, user_scope, images, micro_usd, reset_by, reset_at)
SELECT :day, :scope, COALESCE(SUM(images), 0), COALESCE(SUM(micro_usd), 0), :by, :now
FROM usage_counters WHERE day = :day AND scope = 'user' AND scope_id = :scope
ON CONFLICT (day, user_scope) DO UPDATE SET images = excluded.images,
    micro_usd = excluded.micro_usd, reset_by = excluded.reset_by, reset_at = excluded.reset_at
"""
UPLOADS_TODAY_SQL = (
    "SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM jobs WHERE user_id = ? AND day = ? "
    "AND kind = 'upload' AND state != 'refunded'"
)


def user_scope(guild_id: str, user_id: str) -> str:
    """Per-user counters are per server: '<guild>:<user>' (guild '' outside a server)."""
    return f"{guild_id}:{user_id}"


class UsageCounters:
    """Reads the counters and explains refusals; writes only admin resets."""

    def __init__(self, db: LedgerDatabase) -> None:
        self._db = db

    async def usage(self, scope: str, scope_id: str, day: str | None = None) -> Usage:
        """Raw counters: scope 'user' (id from ``user_scope``), 'guild' or 'all' (id '')."""
        row = await self._db.one(COUNTER_SQL, (day or self._db.today(), scope, scope_id))
        return Usage(*row) if row else Usage()

    async def user_usage(self, user_id: str, guild_id: str = "", day: str | None = None) -> Usage:
        """What counts against the user's quota in this server today (after any reset)."""
        scope = user_scope(guild_id, user_id)
        row = await self._db.one(USER_USAGE_SQL, (day or self._db.today(), scope))
        return Usage(*row) if row else Usage()

    async def reset_user_day(self, guild_id: str, user_id: str, reset_by: str) -> None:
        """Clear the user's counters for today in this server (their charges stay recorded)."""
        await self._db.write(
            RESET_USER_DAY_SQL,
            {"day": self._db.today(), "scope": user_scope(guild_id, user_id), "by": reset_by,
             "now": self._db.now_iso()},
        )  # fmt: skip

    async def uploads_today(self, user_id: str, day: str | None = None) -> tuple[int, int]:
        """How many uploads the user made today (all servers together), and their bytes."""
        row = await self._db.one(UPLOADS_TODAY_SQL, (user_id, day or self._db.today()))
        return int(row[0]), int(row[1])

    async def upload_refusal(
        self, user_id: str, limits: Limits, size: int, now: datetime
    ) -> Refusal | None:
        """Why an upload of ``size`` bytes would not fit the user's allowance today, if not."""
        resets = next_utc_midnight(now)
        count, used = await self.uploads_today(user_id, utc_day(now))
        if count + 1 > limits.user_uploads:
            return Refusal(USER_DAILY_UPLOADS, count, limits.user_uploads, 1, resets)
        if used + size > limits.user_upload_bytes:
            return Refusal(USER_DAILY_UPLOAD_BYTES, used, limits.user_upload_bytes, size, resets)
        return None

    async def refusal(self, new: NewJob, limits: Limits, now: datetime) -> Refusal:
        """Which limit a refused reservation crossed (the first that does, in this order)."""
        if new.kind == "upload":
            refused = await self.upload_refusal(new.user_id, limits, new.bytes, now)
            if refused is not None:
                return refused
        day = utc_day(now)
        resets = next_utc_midnight(now)
        usd, neurons = new.cost.micro_usd, new.cost.milli_neurons
        user = await self.user_usage(new.user_id, new.guild_id, day)
        if user.images + new.images > limits.user_images:
            return Refusal(USER_DAILY_IMAGES, user.images, limits.user_images, new.images, resets)
        if user.micro_usd + usd > limits.user_micro_usd:
            return Refusal(USER_DAILY_USD, user.micro_usd, limits.user_micro_usd, usd, resets)
        guild = await self.usage("guild", new.guild_id, day)
        if new.guild_id and guild.micro_usd + usd > limits.guild_micro_usd:
            return Refusal(GUILD_DAILY_USD, guild.micro_usd, limits.guild_micro_usd, usd, resets)
        everyone = await self.usage("all", "", day)
        return Refusal(DAILY_NEURONS, everyone.milli_neurons, limits.milli_neurons, neurons, resets)
