"""The one service every front calls: Discord cogs, the CLI, the HTTP API.

A facade over two services: the generation pipeline (``bot/generation/``: plan → cache →
single-flight → reserve → run → store → settle) and the image library (``bot/library.py``:
list, show, fetch bytes, delete, upload). Fronts keep one object to call, and no front ever
needs the provider, the store or the ledger behind it; batches and placeholders use the same.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

from bot.backends import Backends
from bot.catalog import Catalog, ModelSpec
from bot.generation import GenerationPipeline
from bot.generation.enhancement import PromptEnhancer
from bot.generation.moderation import ContentModerator, moderation_key
from bot.generation.plan import Planner
from bot.generation.shared_flights import SharedFlights
from bot.grids import GridComposer
from bot.imaging import Grid
from bot.ledger import ImageRecord, Ledger, UsageReport
from bot.library import ImageLibrary
from bot.metrics import Metrics
from bot.presentation import shows_fresh_urls
from bot.providers.base import ImageProvider
from bot.reports import PersonalUsage, ServerUsage, personal_usage, server_usage
from bot.requests import Cancellation, GenerateRequest, GenerationResult, QueueStatus, Remaining
from bot.scheduler import JobScheduler
from bot.stores.base import ImageStore


class ImageService:
    def __init__(
        self,
        *,
        ledger: Ledger,
        provider: ImageProvider,
        store: ImageStore,
        catalog: Catalog,
        scheduler: JobScheduler,
        default_model: str,
        enhance_model: str,
        moderation_model: str | None = None,
        cache_scope: str = "guild",
        upload_micro_usd: int = 0,
        http: httpx.AsyncClient | None = None,
        allow_private_urls: bool = False,
        metrics: Metrics | None = None,
        flight_wait_seconds: float = 300.0,
    ) -> None:
        self.ledger = ledger
        self.catalog = catalog
        self.scheduler = scheduler
        self.metrics = metrics = metrics or Metrics()
        metrics.watch_queue(lambda: scheduler.waiting, lambda: scheduler.running)
        self.backends = Backends(provider, store, metrics)
        self.library = ImageLibrary(
            ledger, self.backends, upload_micro_usd=upload_micro_usd, http=http,
            allow_private_urls=allow_private_urls,
        )  # fmt: skip
        planner = Planner(
            ledger, catalog, default_model=default_model, cache_scope=cache_scope,
            upload_start=self._upload_start, visible_start=self._visible_start,
        )  # fmt: skip
        self.grids = GridComposer(self.library)
        self.generation = GenerationPipeline(
            ledger=ledger,
            backends=self.backends,
            scheduler=scheduler,
            planner=planner,
            enhancer=PromptEnhancer(ledger, catalog, self.backends, enhance_model),
            moderator=ContentModerator(ledger, catalog, self.backends, moderation_model),
            record_or_unstore=self.library.record_or_unstore,
            shared=SharedFlights(
                ledger, metrics, wait_seconds=flight_wait_seconds, max_waiters=scheduler.max_queue
            ),
        )

    # The backends are swappable (tests and benchmarks do it); every part sees the swap.
    @property
    def provider(self) -> ImageProvider:
        return self.backends.provider

    @provider.setter
    def provider(self, provider: ImageProvider) -> None:
        self.backends.provider = provider

    @property
    def store(self) -> ImageStore:
        return self.backends.store

    @store.setter
    def store(self, store: ImageStore) -> None:
        self.backends.store = store

    @property
    def closing(self) -> bool:
        return self.generation.closing

    @closing.setter
    def closing(self, closing: bool) -> None:
        self.generation.closing = closing

    @property
    def renders_previews(self) -> bool:
        """True when images are drawn by the local preview renderer, not by AI."""
        return self.backends.provider.previews_only

    # -- generation -----------------------------------------------------------------------

    @shows_fresh_urls
    async def generate(self, request: GenerateRequest) -> GenerationResult:
        return await self.generation.generate(request)

    async def drain(self, grace_seconds: float) -> int:
        """Refuse new work, let running jobs finish for up to ``grace_seconds``, then cancel
        the rest (each cancelled job refunds itself). Returns how many were cancelled."""
        return await self.generation.drain(grace_seconds)

    def cut_short(self, task: asyncio.Task[Any]) -> bool:
        """Whether ``drain`` cancelled ``task`` (its job refunded): a front then says the
        process is stopping, instead of dropping the request."""
        return task in self.generation.drained

    async def cancel_job(
        self, job_id: str, *, requester_id: str, guild_id: str, is_admin: bool = False
    ) -> Cancellation:
        """Cancel a job (its owner, or an admin of its server): refunded before the provider
        call, else still made, charged and delivered privately (``bot/generation/live.py``)."""
        return await self.generation.cancel(
            job_id, requester_id=requester_id, guild_id=guild_id, is_admin=is_admin
        )

    def queue_status(self, user_id: str, guild_id: str) -> QueueStatus:
        """A user's jobs in flight in one server, with places and ETAs, and its queue length."""
        return self.generation.queue_status(user_id, guild_id)

    async def _upload_start(self, request: GenerateRequest) -> ImageRecord:
        """A starting image given as bytes becomes the user's upload (idempotent with it)."""
        assert request.init_image is not None
        key = f"{request.idempotency_key}:init" if request.idempotency_key else None
        return await self.library.upload(
            request.init_image, user_id=request.user_id, guild_id=request.guild_id,
            idempotency_key=key, role_ids=request.role_ids,
        )  # fmt: skip

    async def _visible_start(self, request: GenerateRequest) -> tuple[ImageRecord, bytes]:
        assert request.image_id is not None
        source = await self.library.visible_image(
            request.image_id, request.user_id, request.guild_id
        )
        return source, await self.library.image_bytes(source)

    # -- delivery -----------------------------------------------------------------------------

    async def record_delivery(self, job_id: str, way: str) -> None:
        """Note how a result reached its user (``DELIVERY_WAYS``): shown in Details."""
        await self.ledger.set_delivery(job_id, way)
        self.metrics.deliveries.labels(way).inc()

    async def refund_undelivered(self, job_id: str) -> int:
        """A result no way could show is not charged: its job (and the prompt enhancement and
        content check made for it) refunded with reason ``undelivered``; its images stay in the
        owner's list. Returns the micro-dollars given back (0 if nothing was settled)."""
        job = await self.ledger.get_job(job_id)
        jobs = [job] if job is not None else []
        if job is not None and job.idempotency_key:
            for key in (f"{job.idempotency_key}:enhance", moderation_key(job.idempotency_key)):
                step = await self.ledger.job_by_key(key or "")
                jobs += [step] if step is not None else []
        refunded = 0
        for each in jobs:
            if await self.ledger.refund_undelivered(each.id):
                refunded += each.micro_usd
        self.metrics.deliveries.labels("undelivered").inc()
        return refunded

    async def job_charge(self, job_id: str) -> int | None:
        """What a closed job is charged, in micro-dollars; None if it was refunded (or is
        unknown, or still open)."""
        job = await self.ledger.get_job(job_id)
        return job.micro_usd if job is not None and job.state == "settled" else None

    async def delivery_of(self, job_id: str | None) -> str | None:
        job = await self.ledger.get_job(job_id) if job_id else None
        return job.delivery if job is not None else None

    # -- the image library (``bot/library.py``) ------------------------------------------------

    async def upload(
        self,
        data: bytes,
        *,
        user_id: str,
        guild_id: str = "",
        idempotency_key: str | None = None,
        metadata: dict[str, str] | None = None,
        role_ids: Sequence[str] = (),
    ) -> ImageRecord:
        return await self.library.upload(
            data, user_id=user_id, guild_id=guild_id, idempotency_key=idempotency_key,
            metadata=metadata, role_ids=role_ids,
        )  # fmt: skip

    async def upload_from_url(
        self,
        url: str,
        *,
        user_id: str,
        guild_id: str = "",
        idempotency_key: str | None = None,
        role_ids: Sequence[str] = (),
    ) -> ImageRecord:
        return await self.library.upload_from_url(
            url, user_id=user_id, guild_id=guild_id, idempotency_key=idempotency_key,
            role_ids=role_ids,
        )  # fmt: skip

    async def check_upload_allowance(
        self, user_id: str, guild_id: str = "", role_ids: Sequence[str] = ()
    ) -> None:
        await self.library.check_upload_allowance(user_id, guild_id, role_ids)

    async def get_image(self, image_id: str) -> ImageRecord:
        return await self.library.get_image(image_id)

    async def visible_image(self, image_id: str, user_id: str, guild_id: str) -> ImageRecord:
        return await self.library.visible_image(image_id, user_id, guild_id)

    async def user_images(
        self, user_id: str, prefix: str = "", limit: int = 25
    ) -> list[ImageRecord]:
        return await self.library.user_images(user_id, prefix, limit)

    async def user_images_page(
        self, user_id: str, *, limit: int, before: str | None
    ) -> list[ImageRecord]:
        return await self.library.user_images_page(user_id, limit=limit, before=before)

    async def delete_image(
        self, image_id: str, *, requester_id: str, is_admin: bool = False
    ) -> ImageRecord:
        return await self.library.delete_image(
            image_id, requester_id=requester_id, is_admin=is_admin
        )

    async def bytes_to_attach(self, image: ImageRecord) -> bytes | None:
        return await self.library.bytes_to_attach(image)

    def local_file(self, image: ImageRecord) -> Path | None:
        return self.library.local_file(image)

    async def grid(self, images: Sequence[ImageRecord], *, max_bytes: int) -> Grid:
        """2 to 4 images as one numbered picture for a front to show (not stored, not charged)."""
        return await self.grids.compose(images, max_bytes=max_bytes)

    # -- quotas and reports --------------------------------------------------------------------

    def today(self) -> str:
        """The current UTC day (the day quotas and reports count)."""
        return self.ledger.today()

    async def remaining(
        self, user_id: str, guild_id: str, role_ids: Sequence[str] = ()
    ) -> Remaining:
        return await self.generation.remaining(user_id, guild_id, role_ids)

    async def personal_usage(self, guild_id: str, user_id: str) -> PersonalUsage:
        return await personal_usage(self.ledger, guild_id, user_id)

    async def server_usage(self, guild_id: str, days: int = 30) -> ServerUsage:
        return await server_usage(self.ledger, guild_id, days)

    async def usage_report(
        self,
        start_day: str,
        end_day: str | None = None,
        *,
        guild_id: str | None = None,
        user_id: str | None = None,
    ) -> UsageReport:
        """Settled charges between two UTC days, optionally for one server and/or user."""
        return await self.ledger.report(
            start_day, end_day or start_day, guild_id=guild_id, user_id=user_id
        )

    def models(self) -> list[ModelSpec]:
        return self.catalog.enabled_image_models()

    # -- health -----------------------------------------------------------------------------

    def health_checks(self) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
        """The parts a health endpoint checks, by name, each a cheap reachability call."""
        return [
            ("database", self.ledger.ping),
            ("migrations", self.ledger.check_schema),
            ("provider", self.backends.provider.check),
            ("store", self.backends.store.check),
        ]

    async def refresh_metrics(self) -> None:
        """Read what /metrics takes from the ledger (jobs by state), just before a scrape."""
        self.metrics.set_jobs(await self.ledger.job_states())

