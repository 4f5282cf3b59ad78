"""Jobs and reservations: reserve (the quota check and the reservation in ONE statement),
settle, refund, free jobs, delivery, and looking jobs up.

Every write money depends on is one atomic statement; triggers keep the daily counters in step
(see ``migrations``). ``RESERVE_SQL`` is an ``INSERT … SELECT … WHERE`` that inserts nothing
when a limit would be crossed; its ``FROM (SELECT 1) AS one LEFT JOIN …`` form is portable
(the CASTs tell PostgreSQL the parameters' types). SQLite runs it under its single writer;
PostgreSQL under the ledger's writer lock (``bot.ledger.postgres``), taken before the
statement's snapshot, so concurrent reservations in any number of processes stay exact.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC

from bot.catalog import Cost
from bot.ledger.core import ConstraintViolation, LedgerDatabase
from bot.ledger.images import ImageTable
from bot.ledger.records import OPEN_STATES, ImageRecord, Job, Limits, NewJob, new_id, utc_day
from bot.ledger.usage import UsageCounters, user_scope
from bot.refusals import quota_exceeded

UNDELIVERED_MESSAGE = "Discord would not show that result anywhere, so it was not charged."
_OPEN = f"state IN {OPEN_STATES!r}"  # ('reserved', 'generating', 'storing')

STATE_COUNTS_SQL = f"""
SELECT state, COUNT(*) AS n FROM jobs WHERE {_OPEN} GROUP BY state
UNION ALL
SELECT state, COUNT(*) AS n FROM jobs WHERE day = :day AND state IN ('settled', 'refunded')
GROUP BY state
"""  # noqa: S608

# What a charge must fit: the user's images (a batch's hold counting as room), the user's
# and the server's money, the bot's Neurons; a reservation and a late charge check alike.
_QUOTA_ROOM = """FROM (SELECT 1) AS one
LEFT JOIN usage_counters u ON u.day = :day AND u.scope = 'user' AND u.scope_id = :user_scope
LEFT JOIN quota_resets r ON r.day = :day AND r.user_scope = :user_scope
LEFT JOIN usage_counters g ON g.day = :day AND g.scope = 'guild' AND g.scope_id = :guild
LEFT JOIN usage_counters a ON a.day = :day AND a.scope = 'all' AND a.scope_id = ''
WHERE COALESCE(u.images, 0) - COALESCE(r.images, 0) + :images
        <= :user_images + COALESCE((SELECT CASE WHEN h.state = 'reserved' AND h.day = :day
                                                THEN h.images END
                                    FROM jobs h WHERE h.id = :hold), 0)
  AND COALESCE(u.micro_usd, 0) - COALESCE(r.micro_usd, 0) + :usd <= :user_usd
  AND (:guild = '' OR COALESCE(g.micro_usd, 0) + :usd <= :guild_usd)
  AND COALESCE(a.milli_neurons, 0) + :mn <= :neurons
"""
RESERVE_SQL = (
    """
INSERT INTO jobs (id, idempotency_key, kind, user_id, guild_id, day, model, state,
                  images, micro_usd, milli_neurons, params, request_fingerprint, bytes,
                  hold_id, owner, created_at, updated_at)
SELECT :id, :key, :kind, :user, :guild, :day, :model, 'reserved',
       CAST(:images AS BIGINT), CAST(:usd AS BIGINT), CAST(:mn AS BIGINT), :params,
       :fingerprint, CAST(:bytes AS BIGINT), :hold, :owner, :now, :now
"""
    + _QUOTA_ROOM
)
# The hold is looked up by ``id`` alone (its state and day checked in the CASE): on PostgreSQL
# a connection keeps one generic plan of this statement, and one made on a new ledger searched
# ``h.id = … AND h.state = … AND h.day = …`` through jobs_day or jobs_open, every job of the day
# (tests/test_postgres_plans.py).
# An upload also fits the user's daily upload allowance (all servers together), in the same
# statement, so concurrent uploads can never pass it.
_UPLOAD_ROOM = """  AND (SELECT COUNT(*) + 1 <= :uploads
                 AND COALESCE(SUM(bytes), 0) + :bytes <= :upload_bytes
       FROM jobs WHERE user_id = :user AND day = :day AND kind = 'upload'
                   AND state != 'refunded')
"""
RESERVE_UPLOAD_SQL = RESERVE_SQL + _UPLOAD_ROOM
# A job crash recovery refunded ('interrupted') while its process, stalled past its lease, still
# made its images: settled for them in one statement, only if the quotas still have room for
# them, exactly as a reservation counts (the job itself, refunded, counts as nothing until then;
# the counting trigger adds it in the same write). No hold: a batch item's hold is its own
# process's older job, so the same recovery refunded it first (RELIABILITY.md, lease fence).
_LATE_CHARGE = (
    "UPDATE jobs SET state = 'settled', images = CAST(:images AS BIGINT), "
    "micro_usd = CAST(:usd AS BIGINT), milli_neurons = CAST(:mn AS BIGINT), "
    "error_code = NULL, error_message = NULL, note = :note, updated_at = :now "
    "WHERE id = :id AND state = 'refunded' AND error_code = 'interrupted' AND EXISTS (SELECT 1 "
)
LATE_CHARGE_SQL = _LATE_CHARGE + _QUOTA_ROOM + ")"
LATE_CHARGE_UPLOAD_SQL = _LATE_CHARGE + _QUOTA_ROOM + _UPLOAD_ROOM + ")"
LATE_NOTE = "charged late: its process outlived its lease while crash recovery refunded it"
INSERT_FREE_JOB_SQL = (
    "INSERT INTO jobs (id, idempotency_key, kind, user_id, guild_id, day, model, "
    "state, planned_image_ids, params, request_fingerprint, created_at, updated_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, 'settled', ?, ?, ?, ?, ?)"
)
SET_STATE_SQL = f"UPDATE jobs SET state = ?, updated_at = ? WHERE id = ? AND {_OPEN}"  # noqa: S608
SET_STATE_PLANNED_SQL = (
    "UPDATE jobs SET state = ?, planned_image_ids = ?, updated_at = ? "  # noqa: S608
    f"WHERE id = ? AND {_OPEN}"
)
SETTLE_SQL = (
    "UPDATE jobs SET state = 'settled', images = ?, micro_usd = ?, "  # noqa: S608
    f"milli_neurons = ?, updated_at = ? WHERE id = ? AND {_OPEN}"
)
REFUND_SQL = (
    "UPDATE jobs SET state = 'refunded', error_code = ?, error_message = ?, "  # noqa: S608
    f"updated_at = ? WHERE id = ? AND {_OPEN}"
)
SET_DELIVERY_SQL = "UPDATE jobs SET delivery = ? WHERE id = ?"
REFUND_UNDELIVERED_SQL = (
    "UPDATE jobs SET state = 'refunded', delivery = 'undelivered', "
    "error_code = 'undelivered', error_message = ?, updated_at = ? "
    "WHERE id = ? AND state = 'settled'"
)
JOB_BY_ID_SQL = "SELECT * FROM jobs WHERE id = ?"
JOB_BY_KEY_SQL = "SELECT * FROM jobs WHERE idempotency_key = ?"
OPEN_JOBS_SQL = f"SELECT * FROM jobs WHERE {_OPEN} ORDER BY created_at"  # noqa: S608
NOTE_JOB_SQL = "UPDATE jobs SET note = ? WHERE id = ?"


class DuplicateRequest(Exception):
    """The idempotency key was seen before; ``job`` is the first request's job."""

    def __init__(self, job: Job) -> None:
        super().__init__(job.id)
        self.job = job


def _job_from(
    new: NewJob, job_id: str, day: str, state: str, created_at: str, planned: list[str]
) -> Job:
    """The row just inserted, without reading it back."""
    reserved = state == "reserved"
    return Job(
        id=job_id,
        idempotency_key=new.idempotency_key,
        kind=new.kind,
        user_id=new.user_id,
        guild_id=new.guild_id,
        day=day,
        model=new.model,
        state=state,
        images=new.images if reserved else 0,
        micro_usd=new.cost.micro_usd if reserved else 0,
        milli_neurons=new.cost.milli_neurons if reserved else 0,
        planned_image_ids=planned,
        params=dict(new.params or {}),
        error_code=None,
        error_message=None,
        created_at=created_at,
        fingerprint=new.fingerprint,
        bytes=new.bytes,
    )


class JobTable:
    """Reservations and every change of a job's state."""

    def __init__(
        self, db: LedgerDatabase, usage: UsageCounters, images: ImageTable, owner: str
    ) -> None:
        self._db = db
        self._usage = usage
        self._images = images
        self._owner = owner  # this process's instance id (see ``leases``)

    async def reserve(self, new: NewJob, limits: Limits, hold: str | None) -> Job:
        """Atomically check every limit and reserve the estimate (see ``Ledger.reserve``)."""
        now = self._db.clock()
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
            "params": json.dumps(new.params, sort_keys=True) if new.params else "{}",
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
            "owner": self._owner,
        }
        sql = RESERVE_UPLOAD_SQL if new.kind == "upload" else RESERVE_SQL
        try:
            inserted = await self._db.write(sql, params)
        except ConstraintViolation as refused:
            raise await self._duplicate_of(new, refused) from None
        if inserted != 1:
            raise quota_exceeded(await self._usage.refusal(new, limits, now))
        return _job_from(new, job_id, day, "reserved", created_at, [])

    async def _duplicate_of(self, new: NewJob, refused: ConstraintViolation) -> Exception:
        """A refused insert: the first request with this idempotency key, else the refusal."""
        existing = await self.by_key(new.idempotency_key or "")
        return refused if existing is None else DuplicateRequest(existing)

    async def set_state(self, job_id: str, state: str, planned: list[str] | None) -> None:
        now = self._db.now_iso()
        if planned is None:
            await self._db.write(SET_STATE_SQL, (state, now, job_id))
        else:
            await self._db.write(SET_STATE_PLANNED_SQL, (state, json.dumps(planned), now, job_id))

    async def settle(self, job_id: str, images: int, cost: Cost) -> bool:
        params = (images, cost.micro_usd, cost.milli_neurons, self._db.now_iso(), job_id)
        return await self._db.write_eventually(SETTLE_SQL, params, f"job {job_id}") == 1

    async def late_charge(self, job: Job, images: int, cost: Cost, limits: Limits) -> bool:
        """Settle a job crash recovery refunded while its process still ran it, for what it
        made, if the quotas have room (``LATE_CHARGE_SQL``); False, and nothing changed, if not."""
        params = {
            "id": job.id, "user": job.user_id, "user_scope": user_scope(job.guild_id, job.user_id),
            "guild": job.guild_id, "day": job.day, "images": images, "usd": cost.micro_usd,
            "mn": cost.milli_neurons, "bytes": job.bytes, "hold": None, "note": LATE_NOTE,
            "now": self._db.now_iso(), "user_images": limits.user_images,
            "user_usd": limits.user_micro_usd, "guild_usd": limits.guild_micro_usd,
            "neurons": limits.milli_neurons, "uploads": limits.user_uploads,
            "upload_bytes": limits.user_upload_bytes,
        }  # fmt: skip
        sql = LATE_CHARGE_UPLOAD_SQL if job.kind == "upload" else LATE_CHARGE_SQL
        return await self._db.write(sql, params) == 1

    async def refund(self, job_id: str, error_code: str | None, error_message: str | None) -> bool:
        params = (error_code, error_message, self._db.now_iso(), job_id)
        return await self._db.write_eventually(REFUND_SQL, params, f"job {job_id}") == 1

    async def record_free_job(self, new: NewJob, job_id: str, images: list[ImageRecord]) -> Job:
        """A job that costs nothing and its image records, written together in one batch."""
        now = self._db.now_iso()
        day = self._db.today()
        image_ids = [image.id for image in images]
        job_insert = self._db.write(
            INSERT_FREE_JOB_SQL,
            (
                job_id, new.idempotency_key, new.kind, new.user_id, new.guild_id,
                day, new.model, json.dumps(image_ids),
                json.dumps(new.params or {}, sort_keys=True), new.fingerprint, now, now,
            ),
        )  # fmt: skip
        outcomes = await asyncio.gather(
            job_insert, *(self._images.add(image) for image in images), return_exceptions=True
        )
        if isinstance(outcomes[0], ConstraintViolation):
            raise await self._duplicate_of(new, outcomes[0]) from None
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return _job_from(new, job_id, day, "settled", now, image_ids)

    async def set_delivery(self, job_id: str, way: str) -> None:
        await self._db.write(SET_DELIVERY_SQL, (way, job_id))

    async def refund_undelivered(self, job_id: str) -> bool:
        params = (UNDELIVERED_MESSAGE, self._db.now_iso(), job_id)
        return await self._db.write(REFUND_UNDELIVERED_SQL, params) == 1

    async def get(self, job_id: str) -> Job | None:
        row = await self._db.one(JOB_BY_ID_SQL, (job_id,))
        return Job.from_row(row) if row else None

    async def by_key(self, key: str) -> Job | None:
        row = await self._db.one(JOB_BY_KEY_SQL, (key,))
        return Job.from_row(row) if row else None

    async def open_jobs(self) -> list[Job]:
        return [Job.from_row(r) for r in await self._db.all(OPEN_JOBS_SQL)]

    async def state_counts(self) -> dict[str, int]:
        """Jobs per state (two index lookups, for /metrics): open ones of every day, settled
        and refunded ones of today."""
        rows = await self._db.all(STATE_COUNTS_SQL, {"day": self._db.today()})
        return {str(row["state"]): int(row["n"]) for row in rows}

    async def note(self, job_id: str, note: str) -> None:
        await self._db.write(NOTE_JOB_SQL, (note, job_id))
