"""The ledger facade: every number the bot keeps, behind one object the service uses.

``Ledger`` owns a ``Database`` (the core: connection, group commit, migrations, checkpoints,
busy/full mapping) and delegates each concern to its module: ``jobs`` (reservations and job
states), ``usage`` (counters and refusals), ``images``, ``servers`` (templates and server
policy), ``api_keys``, ``batches``, ``placeholders`` and ``reports``. Each module holds its
own SQL; a second dialect replaces the core and those statements, not this interface.
Refusals are structured (``bot.errors.Refusal`` on ``QuotaExceeded``); ``bot.refusals`` words
them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from bot.catalog import Cost
from bot.config import QuotaDefaults
from bot.errors import QuotaExceeded
from bot.ledger.api_keys import ApiKeyTable
from bot.ledger.batches import BatchTable
from bot.ledger.core import Clock, LedgerDatabase, is_postgres_url, utc_now
from bot.ledger.database import Database
from bot.ledger.flights import FlightTable
from bot.ledger.images import ImageTable
from bot.ledger.jobs import UNDELIVERED_MESSAGE, DuplicateRequest, JobTable
from bot.ledger.leases import Leases, new_instance_id
from bot.ledger.limits import SharedLimits
from bot.ledger.placeholders import PlaceholderTable
from bot.ledger.records import (
    ApiKey,
    Batch,
    ImageRecord,
    Job,
    Limits,
    NewJob,
    Template,
    Usage,
    UsageReport,
)
from bot.ledger.reports import Reports
from bot.ledger.servers import LimitRule, Policy, ServerPolicy, TemplateTable
from bot.ledger.usage import UsageCounters, user_scope
from bot.metrics import Metrics
from bot.refusals import quota_exceeded

__all__ = [
    "UNDELIVERED_MESSAGE", "DuplicateRequest", "Ledger", "LimitRule", "NewJob", "Policy",
    "user_scope",
]  # fmt: skip


class Ledger:
    """Open with ``await Ledger.open(path_or_url, defaults)``; close with
    ``await ledger.close()``."""

    def __init__(
        self, database: LedgerDatabase, defaults: QuotaDefaults, instance_id: str | None = None
    ) -> None:
        self.database = database
        self._policy = ServerPolicy(database, defaults)
        self._usage = UsageCounters(database)
        self._images = ImageTable(database)
        self.leases = Leases(database, instance_id or new_instance_id())
        self.flights = FlightTable(database, self.leases.instance_id)  # shared single-flight
        self._jobs = JobTable(database, self._usage, self._images, self.leases.instance_id)
        self._templates = TemplateTable(database)
        self._keys = ApiKeyTable(database)
        self._batches = BatchTable(database)
        self._placeholders = PlaceholderTable(database)
        self.limits = SharedLimits(database, self.leases.instance_id)  # shared rate limits
        self._reports = Reports(database)

    @classmethod
    async def open(
        cls,
        location: Path | str,
        defaults: QuotaDefaults | None = None,
        clock: Clock = utc_now,
        instance_id: str | None = None,
        *,
        metrics: Metrics | None = None,
    ) -> Ledger:
        """``location``: a SQLite file, or a ``postgresql://`` URL (DATABASE_URL);
        ``instance_id`` names this process in leases (default: host, pid and a random)."""
        database: LedgerDatabase
        if is_postgres_url(location):
            # asyncpg (~3 MB) is loaded only by a process whose ledger is on PostgreSQL.
            from bot.ledger.postgres import PostgresDatabase

            database = await PostgresDatabase.open(str(location), clock)
        else:
            database = await Database.open(Path(location), clock, metrics)
        return cls(database, defaults or QuotaDefaults(), instance_id)

    async def close(self) -> None:
        await self.database.close()

    @property
    def defaults(self) -> QuotaDefaults:
        return self._policy.defaults

    @property
    def clock(self) -> Clock:
        return self.database.clock

    async def schema_version(self) -> int:
        return await self.database.schema_version()

    async def ping(self) -> None:
        await self.database.ping()

    async def check_schema(self) -> None:
        """LedgerUnavailable unless the schema is exactly the one this code migrates to."""
        await self.database.check_schema()

    def now_iso(self) -> str:
        return self.database.now_iso()

    def today(self) -> str:
        return self.database.today()

    # -- quota policy ---------------------------------------------------------------------

    async def limits_for(
        self, user_id: str, guild_id: str, role_ids: Sequence[str] = ()
    ) -> Limits:
        """Per-user override in this guild, else the most generous of the member's roles, else
        the guild's user defaults, else global."""
        return (await self._policy.policy(user_id, guild_id, role_ids)).limits

    async def limits_and_usage(
        self, user_id: str, guild_id: str, role_ids: Sequence[str] = ()
    ) -> tuple[Limits, Usage]:
        policy = await self._policy.policy(user_id, guild_id, role_ids)
        return policy.limits, policy.usage

    async def policy(self, user_id: str, guild_id: str, role_ids: Sequence[str] = ()) -> Policy:
        """The user's limits (and their rules), today's usage, the server's blocklist and
        content rule."""
        return await self._policy.policy(user_id, guild_id, role_ids)

    async def set_role_quota(
        self, guild_id: str, role_id: str, daily_images: int | None, daily_micro_usd: int | None
    ) -> None:
        await self._policy.set_role_quota(guild_id, role_id, daily_images, daily_micro_usd)

    async def clear_role_quota(self, guild_id: str, role_id: str) -> bool:
        """Whether the role had limits to clear."""
        return await self._policy.clear_role_quota(guild_id, role_id)

    async def allowed_channels(self, guild_id: str) -> list[str]:
        """The channels generation answers in (empty: every channel)."""
        return await self._policy.allowed_channels(guild_id)

    async def allow_channel(self, guild_id: str, channel_id: str) -> None:
        await self._policy.allow_channel(guild_id, channel_id)

    async def deny_channel(self, guild_id: str, channel_id: str) -> bool:
        """Whether the channel was on the allow list."""
        return await self._policy.deny_channel(guild_id, channel_id)

    async def set_user_quota(
        self, guild_id: str, user_id: str, daily_images: int | None, daily_micro_usd: int | None
    ) -> None:
        await self._policy.set_user_quota(guild_id, user_id, daily_images, daily_micro_usd)

    async def set_guild_quota(
        self,
        guild_id: str,
        daily_micro_usd: int | None,
        user_daily_images: int | None,
        user_daily_micro_usd: int | None,
    ) -> None:
        await self._policy.set_guild_quota(
            guild_id, daily_micro_usd, user_daily_images, user_daily_micro_usd
        )

    async def blocklist(self, guild_id: str) -> list[str]:
        return await self._policy.blocklist(guild_id)

    async def set_blocklist(self, guild_id: str, terms: list[str]) -> None:
        await self._policy.set_blocklist(guild_id, terms)

    async def adult_content(self, guild_id: str) -> str:
        """The server's content rule: 'off' or 'age_restricted' (``ADULT_CONTENT_RULES``)."""
        return await self._policy.adult_content(guild_id)

    async def set_adult_content(self, guild_id: str, rule: str) -> None:
        await self._policy.set_adult_content(guild_id, rule)

    # -- usage ----------------------------------------------------------------------------

    async def user_usage(self, user_id: str, guild_id: str = "", day: str | None = None) -> Usage:
        """What counts against the user's quota in this server today (after any reset)."""
        return await self._usage.user_usage(user_id, guild_id, day)

    async def reset_user_day(self, guild_id: str, user_id: str, reset_by: str) -> None:
        """Clear the user's counters for today in this server (their charges stay recorded)."""
        await self._usage.reset_user_day(guild_id, user_id, reset_by)

    async def usage(self, scope: str, scope_id: str, day: str | None = None) -> Usage:
        """Raw counters: scope 'user' (id from ``user_scope``), 'guild' or 'all' (id '')."""
        return await self._usage.usage(scope, scope_id, day)

    async def uploads_today(self, user_id: str, day: str | None = None) -> tuple[int, int]:
        """How many uploads the user made today (all servers together), and their bytes."""
        return await self._usage.uploads_today(user_id, day)

    async def upload_refusal(
        self, user_id: str, limits: Limits, size: int, now: datetime | None = None
    ) -> QuotaExceeded | None:
        """Why an upload of ``size`` bytes would not fit the user's allowance today, if not."""
        refusal = await self._usage.upload_refusal(user_id, limits, size, now or self.clock())
        return quota_exceeded(refusal) if refusal is not None else None

    # -- jobs and reservations ------------------------------------------------------------

    async def reserve(self, new: NewJob, limits: Limits, hold: str | None = None) -> Job:
        """Atomically check every limit and reserve the estimate. QuotaExceeded (with its
        ``refusal``) if any fails; DuplicateRequest if the idempotency key was used before.

        ``hold`` is a job that reserved images ahead (a batch's allowance): its images count
        as available to this reservation, which takes them from it in the same statement
        (trigger ``jobs_draw_from_hold``)."""
        return await self._jobs.reserve(new, limits, hold)

    async def set_state(
        self, job_id: str, state: str, planned_image_ids: list[str] | None = None
    ) -> None:
        await self._jobs.set_state(job_id, state, planned_image_ids)

    async def settle(self, job_id: str, images: int, cost: Cost) -> bool:
        """Replace the reserved estimate by the actual charge. False if not open, or deferred
        (a locked or full database: retried in the background, never raised)."""
        return await self._jobs.settle(job_id, images, cost)

    async def refund(
        self, job_id: str, error_code: str | None = None, error_message: str | None = None
    ) -> bool:
        """Give the reservation back. False if the job was not open (never refunds twice), or
        deferred (as for ``settle``)."""
        return await self._jobs.refund(job_id, error_code, error_message)

    async def late_charge(self, job: Job, images: int, cost: Cost, limits: Limits) -> bool:
        """A job crash recovery refunded while its process, stalled past its lease, made its
        images: settled for them in one statement if the quotas (as ``reserve`` checks them)
        still have room; False and nothing changed if not (``bot.lease_fence``)."""
        return await self._jobs.late_charge(job, images, cost, limits)

    async def record_free_job(self, new: NewJob, job_id: str, images: list[ImageRecord]) -> Job:
        """A request that costs nothing (a cache hit) still gets a job, for idempotency, and
        its image records: written together, in one batch."""
        return await self._jobs.record_free_job(new, job_id, images)

    async def set_delivery(self, job_id: str, way: str) -> None:
        """Record how a settled job's result reached its user (one of DELIVERY_WAYS)."""
        await self._jobs.set_delivery(job_id, way)

    async def refund_undelivered(self, job_id: str) -> bool:
        """A settled job whose result no way could show: refunded, reason ``undelivered``.

        One statement: the counters' trigger takes the charge back in the same write, and a
        second call (or a job already refunded) changes nothing. False if it was not settled.
        """
        return await self._jobs.refund_undelivered(job_id)

    async def get_job(self, job_id: str) -> Job | None:
        return await self._jobs.get(job_id)

    async def job_by_key(self, key: str) -> Job | None:
        return await self._jobs.by_key(key)

    async def open_jobs(self) -> list[Job]:
        return await self._jobs.open_jobs()

    async def orphaned_jobs(self) -> list[Job]:
        """Open jobs no live process holds (see ``leases``)."""
        return await self.leases.orphans()

    async def claim_job(self, job_id: str) -> bool:
        """Take over an orphaned job; False if another process took it first or it closed."""
        return await self.leases.claim(job_id)

    async def job_states(self) -> dict[str, int]:
        """How many jobs are in each state: open ones of any day, finished ones of today."""
        return await self._jobs.state_counts()

    async def note_job(self, job_id: str, note: str) -> None:
        await self._jobs.note(job_id, note)

    # -- images ---------------------------------------------------------------------------

    async def add_image(self, image: ImageRecord) -> None:
        await self._images.add(image)

    async def add_job_image(self, image: ImageRecord) -> bool:
        """Record an image of a job this process still runs (open and its own); False, and
        nothing written, once another process's recovery has taken the job."""
        return await self._images.add_own(image, self.leases.instance_id)

    async def get_image(self, image_id: str) -> ImageRecord:
        return await self._images.get(image_id)

    async def images_for_job(self, job_id: str) -> list[ImageRecord]:
        return await self._images.of_job(job_id)

    async def images_by_ids(self, image_ids: list[str]) -> list[ImageRecord]:
        return await self._images.by_ids(image_ids)

    async def find_cached(self, cache_key: str, cache_scope: str) -> ImageRecord | None:
        return await self._images.find_cached(cache_key, cache_scope)

    async def list_images(
        self, user_id: str, *, limit: int = 25, before: str | None = None, prefix: str = ""
    ) -> list[ImageRecord]:
        """A user's live images, newest first; ``prefix`` filters ids or prompts."""
        return await self._images.of_user(user_id, limit=limit, before=before, prefix=prefix)

    async def gallery_images(
        self, *, user_id: str | None, guild_id: str | None, limit: int, offset: int
    ) -> tuple[list[ImageRecord], int]:
        """One page of live images (a user's, a server's, or one user's in one server), newest
        first, and how many there are in all (the gallery shows "page 2 of 7")."""
        return await self._images.gallery_page(
            user_id=user_id, guild_id=guild_id, limit=limit, offset=offset
        )

    async def mark_deleted(self, image_id: str) -> bool:
        return await self._images.mark_deleted(image_id)

    async def live_images_stored_at(self, storage_key: str) -> list[ImageRecord]:
        """The live records (an original and its cache hits) whose bytes are at this key."""
        return await self._images.live_at(storage_key)

    async def move_storage(
        self, old_key: str, new_key: str, new_url: str, *, except_id: str
    ) -> int:
        """Point every live record at ``old_key`` but one to a copy of its bytes at
        ``new_key``."""
        return await self._images.move_storage(old_key, new_key, new_url, except_id)

    async def mark_deleted_stored_at(self, storage_key: str) -> int:
        """Mark every live record at this key deleted (a moderator's delete)."""
        return await self._images.mark_deleted_at(storage_key)

    # -- templates ------------------------------------------------------------------------

    async def add_template(self, template: Template) -> None:
        await self._templates.add(template)

    async def get_template(self, guild_id: str, name_or_id: str) -> Template:
        return await self._templates.get(guild_id, name_or_id)

    async def list_templates(self, guild_id: str, prefix: str = "") -> list[Template]:
        return await self._templates.of_guild(guild_id, prefix)

    async def delete_template(self, template_id: str) -> bool:
        return await self._templates.delete(template_id)

    # -- API keys -------------------------------------------------------------------------

    async def add_api_key(self, key: ApiKey) -> None:
        await self._keys.add(key)

    async def api_key_by_hash(self, key_hash: str) -> ApiKey | None:
        return await self._keys.by_hash(key_hash)

    async def get_api_key(self, key_id: str) -> ApiKey | None:
        return await self._keys.get(key_id)

    async def api_keys_of(self, user_id: str) -> list[ApiKey]:
        return await self._keys.of_user(user_id)

    async def revoke_api_key(self, key_id: str) -> bool:
        return await self._keys.revoke(key_id)

    # -- batches --------------------------------------------------------------------------

    async def add_batch(self, batch: Batch) -> None:
        await self._batches.add(batch)

    async def update_batch_item(
        self,
        batch_id: str,
        position: int,
        state: str,
        image_id: str | None = None,
        error_code: str | None = None,
        error_message: str | None = None,
    ) -> None:
        await self._batches.update_item(
            batch_id, position, state, image_id, error_code, error_message
        )

    async def finish_batch(self, batch_id: str) -> None:
        await self._batches.finish(batch_id)

    async def record_webhook(self, batch_id: str, state: str, attempts: int) -> None:
        await self._batches.record_webhook(batch_id, state, attempts)

    async def get_batch(self, batch_id: str) -> Batch | None:
        return await self._batches.get(batch_id)

    async def unfinished_batches(self) -> list[str]:
        return await self._batches.unfinished()

    # -- placeholders ---------------------------------------------------------------------

    async def placeholder(self, path: str) -> str | None:
        return await self._placeholders.get(path)

    async def set_placeholder(self, path: str, image_id: str) -> None:
        await self._placeholders.set(path, image_id)

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
        return await self._reports.report(start_day, end_day, guild_id, user_id)

    async def settled_jobs(
        self, start_day: str, end_day: str, *, guild_id: str | None = None, limit: int = 100_000
    ) -> list[Job]:
        """Settled charges between two UTC days inclusive, oldest first (CSV exports)."""
        return await self._reports.settled_jobs(start_day, end_day, guild_id, limit)

    async def audit(self) -> dict[str, int]:
        """Invariant check: counters must equal the sum of non-refunded jobs. Returns the
        number of mismatching counter rows (0 when consistent) and open reservations."""
        return await self._reports.audit()
