"""The SQLite ledger (aiosqlite): reservations, charges, images, templates and quota policies.

Every write that money depends on is ONE SQL statement, atomic on its own: the quota check and
the reservation are the same ``INSERT … SELECT … WHERE``, and triggers keep the daily counters
in step with the jobs table. Concurrent writes are group-committed (see ``GroupCommit``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite

from bot.catalog import Cost
from bot.config import QuotaDefaults
from bot.errors import Conflict, LedgerUnavailable, NotFound, QuotaExceeded
from bot.ledger.group_commit import GroupCommit
from bot.ledger.migrations import MIGRATIONS
from bot.ledger.records import (
    OPEN_STATES,
    ApiKey,
    Batch,
    BatchItem,
    ImageRecord,
    Job,
    Limits,
    Template,
    Usage,
    UsageReport,
    UserUsage,
    new_id,
    next_utc_midnight,
    utc_day,
)
from bot.logs import quiet_chatty_libraries, register_secret
from bot.money import format_usd
from bot.validation import format_megabytes

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
UNDELIVERED_MESSAGE = "Discord would not show that result anywhere, so it was not charged."


def utc_now() -> datetime:
    return datetime.now(UTC)


def _unavailable(exc: sqlite3.OperationalError) -> LedgerUnavailable:
    """A database that is locked, full or failing, as a user-safe domain error."""
    text = str(exc).lower()
    if "full" in text:
        log.error("the database is full: %s", exc)
        return LedgerUnavailable("The bot's storage is full, so nothing was done or charged. "
                                 "The operator needs to free some space.")  # fmt: skip
    log.warning("database unavailable: %s", exc)
    return LedgerUnavailable(
        "The bot's database is busy right now; nothing was charged. Try again in a moment."
    )


def user_scope(guild_id: str, user_id: str) -> str:
    """Per-user counters are per server: '<guild>:<user>' (guild '' outside a server)."""
    return f"{guild_id}:{user_id}"


def _api_key(row: Any) -> ApiKey:
    """An API key row; its webhook secret is masked in every log from now on."""
    key = ApiKey.from_row(row)
    register_secret(key.webhook_secret)
    return key


class DuplicateRequest(Exception):
    """The idempotency key was seen before; ``job`` is the first request's job."""

    def __init__(self, job: Job) -> None:
        super().__init__(job.id)
        self.job = job


@dataclass(frozen=True)
class Policy:
    limits: Limits
    usage: Usage
    blocklist: list[str]


@dataclass(frozen=True)
class NewJob:
    kind: str
    user_id: str
    guild_id: str
    cost: Cost
    images: int
    model: str | None = None
    idempotency_key: str | None = None
    params: dict[str, Any] | None = None
    fingerprint: str | None = None
    bytes: int = 0


_RESERVE_SQL = """
INSERT INTO jobs (id, idempotency_key, kind, user_id, guild_id, day, model, state,
                  images, micro_usd, milli_neurons, params, request_fingerprint, bytes,
                  hold_id, created_at, updated_at)
SELECT :id, :key, :kind, :user, :guild, :day, :model, 'reserved',
       :images, :usd, :mn, :params, :fingerprint, :bytes, :hold, :now, :now
FROM (SELECT 1) AS one
LEFT JOIN usage_counters u ON u.day = :day AND u.scope = 'user' AND u.scope_id = :user_scope
LEFT JOIN quota_resets r ON r.day = :day AND r.user_scope = :user_scope
LEFT JOIN usage_counters g ON g.day = :day AND g.scope = 'guild' AND g.scope_id = :guild
LEFT JOIN usage_counters a ON a.day = :day AND a.scope = 'all' AND a.scope_id = ''
WHERE COALESCE(u.images, 0) - COALESCE(r.images, 0) + :images
        <= :user_images + COALESCE((SELECT h.images FROM jobs h
                                    WHERE h.id = :hold AND h.state = 'reserved'
                                      AND h.day = :day), 0)
  AND COALESCE(u.micro_usd, 0) - COALESCE(r.micro_usd, 0) + :usd <= :user_usd
  AND (:guild = '' OR COALESCE(g.micro_usd, 0) + :usd <= :guild_usd)
  AND COALESCE(a.milli_neurons, 0) + :mn <= :neurons
"""

# An upload also fits the user's daily upload allowance (all servers together), in the same
# statement, so concurrent uploads can never pass it.
_RESERVE_UPLOAD_SQL = (
    _RESERVE_SQL  # noqa: S608 (constant text, no input)
    + """  AND (SELECT COUNT(*) + 1 <= :uploads
                 AND COALESCE(SUM(bytes), 0) + :bytes <= :upload_bytes
       FROM jobs WHERE user_id = :user AND day = :day AND kind = 'upload'
                   AND state != 'refunded')
"""
)


class Ledger:
    """Owns the database connection. Open with ``await Ledger.open(path, defaults)``."""

    CHECKPOINT_SECONDS = 1.0

    def __init__(self, db: aiosqlite.Connection, defaults: QuotaDefaults, clock: Clock) -> None:
        self._db = db
        self._writes = GroupCommit(db)
        self.defaults = defaults
        self.clock = clock
        self._checkpointer: asyncio.Task[None] | None = None
        self._retries: set[asyncio.Task[None]] = set()

    @classmethod
    async def open(
        cls, path: Path, defaults: QuotaDefaults | None = None, clock: Clock = utc_now
    ) -> Ledger:
        path.parent.mkdir(parents=True, exist_ok=True)
        quiet_chatty_libraries()  # the driver logs statement parameters (secrets, prompts)
        db = await aiosqlite.connect(path, isolation_level=None)
        db.row_factory = aiosqlite.Row
        try:
            await db.execute("PRAGMA busy_timeout = 10000")
            await db.execute("PRAGMA journal_mode = WAL")
            await db.execute("PRAGMA synchronous = NORMAL")
            await db.execute("PRAGMA foreign_keys = ON")
            # Checkpoints run in the background (below), not inside a writer's commit.
            await db.execute("PRAGMA wal_autocheckpoint = 0")
            ledger = cls(db, defaults or QuotaDefaults(), clock)
            await ledger._migrate()
        except BaseException:
            await db.close()
            raise
        ledger._checkpointer = asyncio.create_task(ledger._checkpoint_forever(path))
        return ledger

    async def close(self) -> None:
        for task in list(self._retries):
            task.cancel()
        await asyncio.gather(*self._retries, return_exceptions=True)
        if self._checkpointer is not None:
            self._checkpointer.cancel()
            await asyncio.gather(self._checkpointer, return_exceptions=True)
        with contextlib.suppress(sqlite3.Error):
            await self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        await self._db.close()

    async def _checkpoint_forever(self, path: Path) -> None:
        """Copy the WAL back into the database from a connection of its own, so that no
        request's commit pays for it (SQLite's automatic checkpoint runs inside a commit)."""
        async with aiosqlite.connect(path, isolation_level=None) as checkpointer:
            await checkpointer.execute("PRAGMA busy_timeout = 1000")
            while True:
                await asyncio.sleep(self.CHECKPOINT_SECONDS)
                try:
                    await checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error as exc:
                    log.warning("WAL checkpoint failed: %s", exc)

    async def _migrate(self) -> None:
        version = await self._scalar("PRAGMA user_version")
        for number, script in enumerate(MIGRATIONS, start=1):
            if number <= version:
                continue
            await self._db.executescript(
                f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;"
            )
            log.info("database migrated to schema version %d", number)

    async def schema_version(self) -> int:
        return await self._scalar("PRAGMA user_version")

    async def ping(self) -> None:
        await self._scalar("SELECT 1")

    # -- small helpers -------------------------------------------------------------------

    async def _scalar(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> int:
        row = await self._one(sql, params)
        return int(row[0]) if row is not None and row[0] is not None else 0

    async def _one(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> Any:
        rows = await self._all(sql, params)
        return rows[0] if rows else None

    async def _all(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[Any]:
        try:
            return list(await self._db.execute_fetchall(sql, params))
        except sqlite3.OperationalError as exc:
            raise _unavailable(exc) from None

    async def _write(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> int:
        """One atomic statement (group-committed); retried briefly if another process holds
        the database, then LedgerUnavailable."""
        for attempt in range(3):
            try:
                return await self._writes.write(sql, params)
            except sqlite3.OperationalError as exc:
                if ("locked" not in str(exc) and "busy" not in str(exc)) or attempt == 2:
                    raise _unavailable(exc) from None
                await asyncio.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")

    async def _close_job(self, sql: str, params: Sequence[Any]) -> bool:
        """Settle or refund. Never raises for a locked or full database: the change is retried
        in the background until it lands (and crash recovery covers a stop meanwhile)."""
        try:
            return await self._write(sql, params) == 1
        except LedgerUnavailable as exc:
            log.warning("could not close job %s now (%s); retrying in the background",
                        params[-1], exc.code)  # fmt: skip
            task = asyncio.create_task(self._close_later(sql, params))
            self._retries.add(task)
            task.add_done_callback(self._retries.discard)
            return False

    async def _close_later(self, sql: str, params: Sequence[Any]) -> None:
        delay = 0.5
        for _ in range(40):  # about 10 minutes in all
            await asyncio.sleep(delay)
            try:
                await self._write(sql, params)
                return
            except LedgerUnavailable:
                delay = min(delay * 2, 30.0)
        log.error("job %s is still open; the next start's recovery will close it", params[-1])

    def now_iso(self) -> str:
        return self.clock().astimezone(UTC).isoformat(timespec="milliseconds")

    def today(self) -> str:
        return utc_day(self.clock())

    # -- quota policy ---------------------------------------------------------------------

    async def limits_for(self, user_id: str, guild_id: str) -> Limits:
        """Per-user override in this guild, else the guild's user defaults, else global."""
        return (await self.policy(user_id, guild_id)).limits

    async def limits_and_usage(self, user_id: str, guild_id: str) -> tuple[Limits, Usage]:
        policy = await self.policy(user_id, guild_id)
        return policy.limits, policy.usage

    async def policy(self, user_id: str, guild_id: str) -> Policy:
        """The user's limits, today's usage and the server's blocklist, in one query."""
        d = self.defaults
        row = await self._one(
            """SELECT u.daily_images, u.daily_micro_usd, g.user_daily_images,
                      g.user_daily_micro_usd, g.daily_micro_usd,
                      c.images - COALESCE(r.images, 0), c.micro_usd - COALESCE(r.micro_usd, 0),
                      c.milli_neurons, g.blocklist
               FROM (SELECT 1) LEFT JOIN user_quotas u ON u.guild_id = ? AND u.user_id = ?
               LEFT JOIN guild_settings g ON g.guild_id = ?
               LEFT JOIN usage_counters c ON c.day = ? AND c.scope = 'user' AND c.scope_id = ?
               LEFT JOIN quota_resets r ON r.day = c.day AND r.user_scope = c.scope_id""",
            (guild_id, user_id, guild_id, self.today(), user_scope(guild_id, user_id)),
        )
        user_images, user_usd, guild_user_images, guild_user_usd, guild_usd = row[:5]

        def pick(*values: int | None) -> int:
            return next(v for v in values if v is not None)

        limits = Limits(
            user_images=pick(user_images, guild_user_images, d.user_daily_images),
            user_micro_usd=pick(user_usd, guild_user_usd, d.user_daily_micro_usd),
            guild_micro_usd=pick(guild_usd, d.guild_daily_micro_usd),
            milli_neurons=d.daily_milli_neurons,
            user_uploads=d.user_daily_uploads,
            user_upload_bytes=d.user_daily_upload_bytes,
        )
        usage = Usage(row[5] or 0, row[6] or 0, row[7] or 0)
        return Policy(limits, usage, json.loads(row[8]) if row[8] else [])

    async def set_user_quota(
        self, guild_id: str, user_id: str, daily_images: int | None, daily_micro_usd: int | None
    ) -> None:
        await self._write(
            """INSERT INTO user_quotas (guild_id, user_id, daily_images, daily_micro_usd,
                                        updated_at) VALUES (?, ?, ?, ?, ?)
               ON CONFLICT (guild_id, user_id) DO UPDATE SET
                   daily_images = excluded.daily_images,
                   daily_micro_usd = excluded.daily_micro_usd,
                   updated_at = excluded.updated_at""",
            (guild_id, user_id, daily_images, daily_micro_usd, self.now_iso()),
        )

    async def set_guild_quota(
        self,
        guild_id: str,
        daily_micro_usd: int | None,
        user_daily_images: int | None,
        user_daily_micro_usd: int | None,
    ) -> None:
        await self._write(
            """INSERT INTO guild_settings (guild_id, daily_micro_usd, user_daily_images,
                                           user_daily_micro_usd, updated_at)
               VALUES (?, ?, ?, ?, ?)
               ON CONFLICT (guild_id) DO UPDATE SET
                   daily_micro_usd = excluded.daily_micro_usd,
                   user_daily_images = excluded.user_daily_images,
                   user_daily_micro_usd = excluded.user_daily_micro_usd,
                   updated_at = excluded.updated_at""",
            (guild_id, daily_micro_usd, user_daily_images, user_daily_micro_usd, self.now_iso()),
        )

    async def user_usage(self, user_id: str, guild_id: str = "", day: str | None = None) -> Usage:
        """What counts against the user's quota in this server today (after any reset)."""
        scope = user_scope(guild_id, user_id)
        row = await self._one(
            "SELECT c.images - COALESCE(r.images, 0), c.micro_usd - COALESCE(r.micro_usd, 0), "
            "c.milli_neurons FROM usage_counters c LEFT JOIN quota_resets r "
            "ON r.day = c.day AND r.user_scope = c.scope_id "
            "WHERE c.day = ? AND c.scope = 'user' AND c.scope_id = ?",
            (day or self.today(), scope),
        )
        return Usage(*row) if row else Usage()

    async def reset_user_day(self, guild_id: str, user_id: str, reset_by: str) -> None:
        """Clear the user's counters for today in this server (their charges stay recorded)."""
        await self._write(
            """INSERT INTO quota_resets (day, user_scope, images, micro_usd, reset_by, reset_at)
               SELECT :day, :scope, COALESCE(SUM(images), 0), COALESCE(SUM(micro_usd), 0),
                      :by, :now
               FROM usage_counters WHERE day = :day AND scope = 'user' AND scope_id = :scope
               ON CONFLICT (day, user_scope) DO UPDATE SET images = excluded.images,
                   micro_usd = excluded.micro_usd, reset_by = excluded.reset_by,
                   reset_at = excluded.reset_at""",
            {"day": self.today(), "scope": user_scope(guild_id, user_id), "by": reset_by,
             "now": self.now_iso()},
        )  # fmt: skip

    async def usage(self, scope: str, scope_id: str, day: str | None = None) -> Usage:
        """Raw counters: scope 'user' (id from ``user_scope``), 'guild' or 'all' (id '')."""
        row = await self._one(
            "SELECT images, micro_usd, milli_neurons FROM usage_counters "
            "WHERE day = ? AND scope = ? AND scope_id = ?",
            (day or self.today(), scope, scope_id),
        )
        return Usage(*row) if row else Usage()

    # -- reservations ---------------------------------------------------------------------

    async def reserve(self, new: NewJob, limits: Limits, hold: str | None = None) -> Job:
        """Atomically check every limit and reserve the estimate. QuotaExceeded if any fails;
        DuplicateRequest if the idempotency key was used before.

        ``hold`` is a job that reserved images ahead (a batch's allowance): its images count
        as available to this reservation, which takes them from it in the same statement
        (trigger ``jobs_draw_from_hold``)."""
        now = self.clock()
        job_id = new_id("job")
        day = utc_day(now)
        created_at = now.astimezone(UTC).isoformat(timespec="milliseconds")
        params = {
            "id": job_id,
            "key": new.idempotency_key,
            "kind": new.kind,
            "user": new.user_id,
            "user_scope": user_scope(new.guild_id, new.user_id),
            "guild": new.guild_id,
            "day": day,
            "model": new.model,
            "images": new.images,
            "usd": new.cost.micro_usd,
            "mn": new.cost.milli_neurons,
            "params": json.dumps(new.params or {}, sort_keys=True),
            "fingerprint": new.fingerprint,
            "bytes": new.bytes,
            "now": created_at,
            "user_images": limits.user_images,
            "user_usd": limits.user_micro_usd,
            "guild_usd": limits.guild_micro_usd,
            "neurons": limits.milli_neurons,
            "uploads": limits.user_uploads,
            "upload_bytes": limits.user_upload_bytes,
            "hold": hold,
        }
        sql = _RESERVE_UPLOAD_SQL if new.kind == "upload" else _RESERVE_SQL
        try:
            inserted = await self._write(sql, params)
        except sqlite3.IntegrityError:
            existing = await self.job_by_key(new.idempotency_key or "")
            if existing is None:
                raise
            raise DuplicateRequest(existing) from None
        if inserted != 1:
            raise await self._explain_refusal(new, limits, now)
        return self._job_from(new, job_id, day, "reserved", created_at, [])

    @staticmethod
    def _job_from(
        new: NewJob, job_id: str, day: str, state: str, created_at: str, planned: list[str]
    ) -> Job:
        """The row just inserted, without reading it back."""
        return Job(
            id=job_id,
            idempotency_key=new.idempotency_key,
            kind=new.kind,
            user_id=new.user_id,
            guild_id=new.guild_id,
            day=day,
            model=new.model,
            state=state,
            images=new.images if state == "reserved" else 0,
            micro_usd=new.cost.micro_usd if state == "reserved" else 0,
            milli_neurons=new.cost.milli_neurons if state == "reserved" else 0,
            planned_image_ids=planned,
            params=dict(new.params or {}),
            error_code=None,
            error_message=None,
            created_at=created_at,
            fingerprint=new.fingerprint,
            bytes=new.bytes,
        )

    async def uploads_today(self, user_id: str, day: str | None = None) -> tuple[int, int]:
        """How many uploads the user made today (all servers together), and their bytes."""
        row = await self._one(
            "SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM jobs WHERE user_id = ? AND day = ? "
            "AND kind = 'upload' AND state != 'refunded'",
            (user_id, day or self.today()),
        )
        return int(row[0]), int(row[1])

    async def upload_refusal(
        self, user_id: str, limits: Limits, size: int, now: datetime | None = None
    ) -> QuotaExceeded | None:
        """Why an upload of ``size`` bytes would not fit the user's allowance today, if not."""
        now = now or self.clock()
        resets = next_utc_midnight(now)
        count, used = await self.uploads_today(user_id, utc_day(now))
        if count + 1 > limits.user_uploads:
            if limits.user_uploads == 0:
                return QuotaExceeded("user_daily_uploads", "Uploads are turned off here.", resets)
            return QuotaExceeded(
                "user_daily_uploads",
                f"You have made {count} of your {limits.user_uploads} uploads for today.",
                resets,
            )
        if used + size > limits.user_upload_bytes:
            return QuotaExceeded(
                "user_daily_upload_bytes",
                f"This upload is {format_megabytes(size)}; you have "
                f"{format_megabytes(max(0, limits.user_upload_bytes - used))} of your "
                f"{format_megabytes(limits.user_upload_bytes)} daily upload allowance left.",
                resets,
            )
        return None

    async def _explain_refusal(self, new: NewJob, limits: Limits, now: datetime) -> QuotaExceeded:
        day = utc_day(now)
        resets = next_utc_midnight(now)
        if new.kind == "upload":
            refusal = await self.upload_refusal(new.user_id, limits, new.bytes, now)
            if refusal is not None:
                return refusal
        user = await self.user_usage(new.user_id, new.guild_id, day)
        if user.images + new.images > limits.user_images:
            return QuotaExceeded(
                "user_daily_images",
                f"You have used {user.images} of your {limits.user_images} images for today.",
                resets,
            )
        if user.micro_usd + new.cost.micro_usd > limits.user_micro_usd:
            return QuotaExceeded(
                "user_daily_usd",
                f"This would cost {format_usd(new.cost.micro_usd)}; you have "
                f"{format_usd(max(0, limits.user_micro_usd - user.micro_usd))} of your "
                f"{format_usd(limits.user_micro_usd)} daily budget left.",
                resets,
            )
        guild = await self.usage("guild", new.guild_id, day)
        if new.guild_id and guild.micro_usd + new.cost.micro_usd > limits.guild_micro_usd:
            return QuotaExceeded(
                "guild_daily_usd",
                f"This server has used {format_usd(guild.micro_usd)} of its "
                f"{format_usd(limits.guild_micro_usd)} daily budget.",
                resets,
            )
        return QuotaExceeded(
            "daily_neurons",
            "The bot has reached its daily image allowance for everyone.",
            resets,
        )

    async def set_state(
        self, job_id: str, state: str, planned_image_ids: list[str] | None = None
    ) -> None:
        if planned_image_ids is None:
            await self._write(
                "UPDATE jobs SET state = ?, updated_at = ? WHERE id = ? AND state IN "
                "('reserved', 'generating', 'storing')",
                (state, self.now_iso(), job_id),
            )
        else:
            await self._write(
                "UPDATE jobs SET state = ?, planned_image_ids = ?, updated_at = ? "
                "WHERE id = ? AND state IN ('reserved', 'generating', 'storing')",
                (state, json.dumps(planned_image_ids), self.now_iso(), job_id),
            )

    async def settle(self, job_id: str, images: int, cost: Cost) -> bool:
        """Replace the reserved estimate by the actual charge. False if not open (or deferred:
        see ``_close_job``)."""
        return await self._close_job(
            "UPDATE jobs SET state = 'settled', images = ?, micro_usd = ?, milli_neurons = ?, "
            "updated_at = ? WHERE id = ? AND state IN ('reserved', 'generating', 'storing')",
            (images, cost.micro_usd, cost.milli_neurons, self.now_iso(), job_id),
        )

    async def refund(
        self, job_id: str, error_code: str | None = None, error_message: str | None = None
    ) -> bool:
        """Give the reservation back. False if the job was not open (never refunds twice), or
        deferred (see ``_close_job``)."""
        return await self._close_job(
            "UPDATE jobs SET state = 'refunded', error_code = ?, error_message = ?, "
            "updated_at = ? WHERE id = ? AND state IN ('reserved', 'generating', 'storing')",
            (error_code, error_message, self.now_iso(), job_id),
        )

    async def record_free_job(self, new: NewJob, job_id: str, images: list[ImageRecord]) -> Job:
        """A request that costs nothing (a cache hit) still gets a job, for idempotency, and
        its image records: written together, in one batch."""
        now = self.now_iso()
        day = self.today()
        image_ids = [image.id for image in images]
        job_insert = self._write(
            "INSERT INTO jobs (id, idempotency_key, kind, user_id, guild_id, day, model, "
            "state, planned_image_ids, params, request_fingerprint, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, 'settled', ?, ?, ?, ?, ?)",
            (
                job_id, new.idempotency_key, new.kind, new.user_id, new.guild_id,
                day, new.model, json.dumps(image_ids),
                json.dumps(new.params or {}, sort_keys=True), new.fingerprint, now, now,
            ),
        )  # fmt: skip
        outcomes = await asyncio.gather(
            job_insert, *(self.add_image(image) for image in images), return_exceptions=True
        )
        if isinstance(outcomes[0], sqlite3.IntegrityError):
            existing = await self.job_by_key(new.idempotency_key or "")
            if existing is None:
                raise outcomes[0]
            raise DuplicateRequest(existing) from None
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return self._job_from(new, job_id, day, "settled", now, image_ids)

    async def set_delivery(self, job_id: str, way: str) -> None:
        """Record how a settled job's result reached its user (one of DELIVERY_WAYS)."""
        await self._write("UPDATE jobs SET delivery = ? WHERE id = ?", (way, job_id))

    async def refund_undelivered(self, job_id: str) -> bool:
        """A settled job whose result no way could show: refunded, reason ``undelivered``.

        One statement: the counters' trigger takes the charge back in the same write, and a
        second call (or a job already refunded) changes nothing. False if it was not settled.
        """
        return (
            await self._write(
                "UPDATE jobs SET state = 'refunded', delivery = 'undelivered', "
                "error_code = 'undelivered', error_message = ?, updated_at = ? "
                "WHERE id = ? AND state = 'settled'",
                (UNDELIVERED_MESSAGE, self.now_iso(), job_id),
            )
            == 1
        )

    async def get_job(self, job_id: str) -> Job | None:
        row = await self._one("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return Job.from_row(row) if row else None

    async def job_by_key(self, key: str) -> Job | None:
        row = await self._one("SELECT * FROM jobs WHERE idempotency_key = ?", (key,))
        return Job.from_row(row) if row else None

    async def open_jobs(self) -> list[Job]:
        rows = await self._all(
            "SELECT * FROM jobs WHERE state IN ('reserved', 'generating', 'storing') "
            "ORDER BY created_at"
        )
        return [Job.from_row(r) for r in rows]

    async def note_job(self, job_id: str, note: str) -> None:
        await self._write("UPDATE jobs SET note = ? WHERE id = ?", (note, job_id))

    # -- images ---------------------------------------------------------------------------

    async def add_image(self, image: ImageRecord) -> None:
        placeholders = ", ".join("?" for _ in ImageRecord.COLUMNS)
        await self._write(
            f"INSERT INTO images ({', '.join(ImageRecord.COLUMNS)}) VALUES ({placeholders})",  # noqa: S608
            image.to_row(),
        )

    async def get_image(self, image_id: str) -> ImageRecord:
        row = await self._one("SELECT * FROM images WHERE id = ?", (image_id,))
        if row is None:
            raise NotFound(f"No image with id {image_id}.")
        return ImageRecord.from_row(row)

    async def images_for_job(self, job_id: str) -> list[ImageRecord]:
        rows = await self._all(
            "SELECT * FROM images WHERE job_id = ? ORDER BY created_at, id", (job_id,)
        )
        return [ImageRecord.from_row(r) for r in rows]

    async def images_by_ids(self, image_ids: list[str]) -> list[ImageRecord]:
        found = {}
        for image_id in image_ids:
            row = await self._one("SELECT * FROM images WHERE id = ?", (image_id,))
            if row is not None:
                found[image_id] = ImageRecord.from_row(row)
        return [found[i] for i in image_ids if i in found]

    async def find_cached(self, cache_key: str, cache_scope: str) -> ImageRecord | None:
        row = await self._one(
            "SELECT * FROM images WHERE cache_key = ? AND cache_scope = ? AND is_deleted = 0 "
            "ORDER BY cached, created_at LIMIT 1",
            (cache_key, cache_scope),
        )
        return ImageRecord.from_row(row) if row else None

    async def list_images(
        self, user_id: str, *, limit: int = 25, before: str | None = None, prefix: str = ""
    ) -> list[ImageRecord]:
        """A user's live images, newest first; ``prefix`` filters ids or prompts."""
        rows = await self._all(
            "SELECT * FROM images WHERE user_id = ? AND is_deleted = 0 "
            "AND (? IS NULL OR created_at < ?) "
            "AND (id LIKE ? OR prompt LIKE ?) ORDER BY created_at DESC LIMIT ?",
            (user_id, before, before, f"{prefix}%", f"%{prefix}%", limit),
        )
        return [ImageRecord.from_row(r) for r in rows]

    async def gallery_images(
        self, *, user_id: str | None, guild_id: str | None, limit: int, offset: int
    ) -> tuple[list[ImageRecord], int]:
        """One page of live images (a user's, a server's, or one user's in one server), newest
        first, and how many there are in all (the gallery shows "page 2 of 7")."""
        where = "is_deleted = 0 AND (? IS NULL OR user_id = ?) AND (? IS NULL OR guild_id = ?)"
        params = (user_id, user_id, guild_id, guild_id)
        total = await self._scalar(f"SELECT COUNT(*) FROM images WHERE {where}", params)  # noqa: S608
        rows = await self._all(
            f"SELECT * FROM images WHERE {where} "  # noqa: S608
            "ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?",
            (*params, limit, offset),
        )
        return [ImageRecord.from_row(r) for r in rows], total

    async def mark_deleted(self, image_id: str) -> bool:
        changed = await self._write(
            "UPDATE images SET is_deleted = 1, deleted_at = ? WHERE id = ? AND is_deleted = 0",
            (self.now_iso(), image_id),
        )
        return changed == 1

    async def live_images_stored_at(self, storage_key: str) -> list[ImageRecord]:
        """The live records (an original and its cache hits) whose bytes are at this key."""
        rows = await self._all(
            "SELECT * FROM images WHERE storage_key = ? AND is_deleted = 0 "
            "ORDER BY created_at, id",
            (storage_key,),
        )
        return [ImageRecord.from_row(r) for r in rows]

    async def move_storage(
        self, old_key: str, new_key: str, new_url: str, *, except_id: str
    ) -> int:
        """Point every live record at ``old_key`` but one to a copy of its bytes at
        ``new_key``."""
        return await self._write(
            "UPDATE images SET storage_key = ?, url = ? WHERE storage_key = ? AND is_deleted = 0 "
            "AND id != ?",
            (new_key, new_url, old_key, except_id),
        )

    async def mark_deleted_stored_at(self, storage_key: str) -> int:
        """Mark every live record at this key deleted (a moderator's delete)."""
        return await self._write(
            "UPDATE images SET is_deleted = 1, deleted_at = ? WHERE storage_key = ? "
            "AND is_deleted = 0",
            (self.now_iso(), storage_key),
        )

    # -- templates ------------------------------------------------------------------------

    async def add_template(self, template: Template) -> None:
        placeholders = ", ".join("?" for _ in Template.COLUMNS)
        try:
            await self._write(
                f"INSERT INTO templates ({', '.join(Template.COLUMNS)}) VALUES ({placeholders})",  # noqa: S608
                tuple(getattr(template, c) for c in Template.COLUMNS),
            )
        except sqlite3.IntegrityError:
            raise Conflict(f"A template named {template.name!r} already exists here.") from None

    async def get_template(self, guild_id: str, name_or_id: str) -> Template:
        row = await self._one(
            "SELECT * FROM templates WHERE guild_id = ? AND (name = ? OR id = ?)",
            (guild_id, name_or_id, name_or_id),
        )
        if row is None:
            raise NotFound(f"No template named {name_or_id!r} in this server.")
        return Template.from_row(row)

    async def list_templates(self, guild_id: str, prefix: str = "") -> list[Template]:
        rows = await self._all(
            "SELECT * FROM templates WHERE guild_id = ? AND name LIKE ? ORDER BY name LIMIT 100",
            (guild_id, f"{prefix}%"),
        )
        return [Template.from_row(r) for r in rows]

    async def delete_template(self, template_id: str) -> bool:
        return await self._write("DELETE FROM templates WHERE id = ?", (template_id,)) == 1

    # -- API keys -------------------------------------------------------------------------

    async def add_api_key(self, key: ApiKey) -> None:
        placeholders = ", ".join("?" for _ in ApiKey.COLUMNS)
        await self._write(
            f"INSERT INTO api_keys ({', '.join(ApiKey.COLUMNS)}) VALUES ({placeholders})",  # noqa: S608
            tuple(getattr(key, c) for c in ApiKey.COLUMNS),
        )

    async def api_key_by_hash(self, key_hash: str) -> ApiKey | None:
        row = await self._one("SELECT * FROM api_keys WHERE key_hash = ?", (key_hash,))
        return _api_key(row) if row else None

    async def get_api_key(self, key_id: str) -> ApiKey | None:
        row = await self._one("SELECT * FROM api_keys WHERE id = ?", (key_id,))
        return _api_key(row) if row else None

    async def api_keys_of(self, user_id: str) -> list[ApiKey]:
        rows = await self._all(
            "SELECT * FROM api_keys WHERE user_id = ? ORDER BY created_at", (user_id,)
        )
        return [_api_key(r) for r in rows]

    async def revoke_api_key(self, key_id: str) -> bool:
        changed = await self._write(
            "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
            (self.now_iso(), key_id),
        )
        return changed == 1

    # -- batches ----------------------------------------------------------------------------

    async def add_batch(self, batch: Batch) -> None:
        writes = [
            self._write(
                "INSERT INTO batches (id, key_id, user_id, guild_id, model, webhook_url, state, "
                "webhook_state, created_at) VALUES (?, ?, ?, ?, ?, ?, 'running', ?, ?)",
                (
                    batch.id,
                    batch.key_id,
                    batch.user_id,
                    batch.guild_id,
                    batch.model,
                    batch.webhook_url,
                    "pending" if batch.webhook_url else None,
                    batch.created_at,
                ),
            )
        ]
        writes += [
            self._write(
                "INSERT INTO batch_items (batch_id, position, prompt, state, error_code, "
                "error_message) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    batch.id,
                    item.position,
                    item.prompt,
                    item.state,
                    item.error_code,
                    item.error_message,
                ),
            )
            for item in batch.items
        ]
        for outcome in await asyncio.gather(*writes, return_exceptions=True):
            if isinstance(outcome, BaseException):
                raise outcome

    async def update_batch_item(
        self,
        batch_id: str,
        position: int,
        state: str,
        image_id: str | None = None,
        error_code: str | None = None,
        error_message: str | None = None,
    ) -> None:
        await self._write(
            "UPDATE batch_items SET state = ?, image_id = ?, error_code = ?, error_message = ? "
            "WHERE batch_id = ? AND position = ?",
            (state, image_id, error_code, error_message, batch_id, position),
        )

    async def finish_batch(self, batch_id: str) -> None:
        await self._write(
            "UPDATE batches SET state = 'done', finished_at = ? WHERE id = ?",
            (self.now_iso(), batch_id),
        )

    async def record_webhook(self, batch_id: str, state: str, attempts: int) -> None:
        await self._write(
            "UPDATE batches SET webhook_state = ?, webhook_attempts = ? WHERE id = ?",
            (state, attempts, batch_id),
        )

    async def get_batch(self, batch_id: str) -> Batch | None:
        row = await self._one("SELECT * FROM batches WHERE id = ?", (batch_id,))
        if row is None:
            return None
        items = await self._all(
            "SELECT * FROM batch_items WHERE batch_id = ? ORDER BY position", (batch_id,)
        )
        return Batch.from_row(row, [BatchItem.from_row(r) for r in items])

    async def unfinished_batches(self) -> list[str]:
        rows = await self._all("SELECT id FROM batches WHERE state = 'running'")
        return [r[0] for r in rows]

    # -- placeholders -------------------------------------------------------------------------

    async def placeholder(self, path: str) -> str | None:
        row = await self._one("SELECT image_id FROM placeholders WHERE path = ?", (path,))
        return row[0] if row else None

    async def set_placeholder(self, path: str, image_id: str) -> None:
        await self._write(
            "INSERT INTO placeholders (path, image_id, created_at) VALUES (?, ?, ?) "
            "ON CONFLICT (path) DO UPDATE SET image_id = excluded.image_id, "
            "created_at = excluded.created_at",
            (path, image_id, self.now_iso()),
        )

    # -- blocklist ------------------------------------------------------------------------

    async def blocklist(self, guild_id: str) -> list[str]:
        row = await self._one(
            "SELECT blocklist FROM guild_settings WHERE guild_id = ?", (guild_id,)
        )
        return list(json.loads(row[0])) if row else []

    async def set_blocklist(self, guild_id: str, terms: list[str]) -> None:
        await self._write(
            """INSERT INTO guild_settings (guild_id, blocklist, updated_at) VALUES (?, ?, ?)
               ON CONFLICT (guild_id) DO UPDATE SET blocklist = excluded.blocklist,
                   updated_at = excluded.updated_at""",
            (guild_id, json.dumps(terms), self.now_iso()),
        )

    # -- reports --------------------------------------------------------------------------

    async def report(
        self,
        start_day: str,
        end_day: str,
        *,
        guild_id: str | None = None,
        user_id: str | None = None,
    ) -> UsageReport:
        """Settled charges between two UTC days inclusive, optionally for one guild or user."""
        where = "state = 'settled' AND day BETWEEN ? AND ?"
        params: list[Any] = [start_day, end_day]
        if guild_id is not None:
            where += " AND guild_id = ?"
            params.append(guild_id)
        if user_id is not None:
            where += " AND user_id = ?"
            params.append(user_id)
        totals = await self._one(
            f"SELECT COALESCE(SUM(images), 0), COALESCE(SUM(micro_usd), 0), "  # noqa: S608
            f"COALESCE(SUM(milli_neurons), 0) FROM jobs WHERE {where}",
            params,
        )
        users = await self._all(
            f"SELECT user_id, SUM(images), SUM(micro_usd) FROM jobs WHERE {where} "  # noqa: S608
            "GROUP BY user_id ORDER BY SUM(micro_usd) DESC, SUM(images) DESC, user_id",
            params,
        )
        models = await self._all(
            f"SELECT COALESCE(model, ''), SUM(images), SUM(micro_usd) FROM jobs "  # noqa: S608
            f"WHERE {where} GROUP BY model ORDER BY SUM(micro_usd) DESC",
            params,
        )
        days = await self._all(
            f"SELECT day, SUM(images), SUM(micro_usd) FROM jobs WHERE {where} "  # noqa: S608
            "GROUP BY day ORDER BY day",
            params,
        )
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
        self, start_day: str, end_day: str, *, guild_id: str | None = None, limit: int = 100_000
    ) -> list[Job]:
        """Settled charges between two UTC days inclusive, oldest first (CSV exports)."""
        rows = await self._all(
            "SELECT * FROM jobs WHERE state = 'settled' AND day BETWEEN ? AND ? "
            "AND (? IS NULL OR guild_id = ?) AND (images > 0 OR micro_usd > 0) "
            "ORDER BY created_at LIMIT ?",
            (start_day, end_day, guild_id, guild_id, limit),
        )
        return [Job.from_row(r) for r in rows]

    async def audit(self) -> dict[str, int]:
        """Invariant check: counters must equal the sum of non-refunded jobs. Returns the
        number of mismatching counter rows (0 when consistent) and open reservations."""
        mismatches = await self._scalar(
            """
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
        )
        open_count = await self._scalar(
            f"SELECT COUNT(*) FROM jobs WHERE state IN {OPEN_STATES!r}"  # noqa: S608
        )
        return {"counter_mismatches": mismatches, "open_jobs": open_count}
