"""Batch generation for the HTTP API: many prompts, one id to poll, a signed webhook at the end.

Each item is an ordinary generation under the key's user's quotas, with the idempotency key
``batch:<id>:<position>``, so a batch resumed after a restart never charges an item twice.

A batch reserves its whole image allowance at submission, in one atomic statement (a "hold":
a job reserving one image per prompt), or is refused whole with nothing started; each item's
reservation then draws its image from the hold, and what is left of it is given back when the
batch ends. An item that later meets a spent money budget fails alone and says why. A revoked
key stops its batches: items not yet started are cancelled (their share of the hold is given
back), also for a batch resumed after a restart.
"""

from __future__ import annotations

import asyncio
import logging

import httpx

from bot.catalog import ZERO_COST
from bot.errors import BotError, InvalidRequest, NotFound, QuotaExceeded, ShuttingDown
from bot.ledger import ImageRecord, Ledger
from bot.ledger.ledger import NewJob
from bot.ledger.records import ApiKey, Batch, BatchItem, new_id
from bot.outbound import check_url, deliver_webhook
from bot.presentation import presented
from bot.requests import GenerateRequest
from bot.service import ImageService
from bot.validation import clean_text

log = logging.getLogger(__name__)

MAX_PROMPTS = 50
ITEMS_AT_ONCE = 2


class BatchService:
    def __init__(
        self,
        service: ImageService,
        ledger: Ledger,
        http: httpx.AsyncClient,
        *,
        allow_private_urls: bool = False,
    ) -> None:
        self.service = service
        self.ledger = ledger
        self.http = http
        self.allow_private_urls = allow_private_urls
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(
        self, key: ApiKey, prompts: list[str], model: str | None, webhook_url: str | None
    ) -> Batch:
        if not 1 <= len(prompts) <= MAX_PROMPTS:
            raise InvalidRequest("prompts", f"A batch holds 1 to {MAX_PROMPTS} prompts.")
        if model is not None:
            self.service.catalog.get(model)
        if webhook_url is not None:
            await check_url(webhook_url, allow_private=self.allow_private_urls, field="webhook_url")
        batch_id = new_id("bat")
        hold = await self._hold_allowance(key, batch_id, len(prompts))
        batch = Batch(
            id=batch_id,
            key_id=key.id,
            user_id=key.user_id,
            guild_id=key.guild_id,
            model=model,
            webhook_url=webhook_url,
            state="running",
            webhook_state="pending" if webhook_url else None,
            webhook_attempts=0,
            created_at=self.ledger.now_iso(),
            finished_at=None,
            items=[
                BatchItem(batch_id="", position=n, prompt=clean_text(p)[:2048], state="queued")
                for n, p in enumerate(prompts)
            ],
        )
        try:
            await self.ledger.add_batch(batch)
        except BaseException:
            await self.ledger.refund(hold, "not_used")
            raise
        self._start(batch.id, hold)
        return batch

    async def _hold_allowance(self, key: ApiKey, batch_id: str, images: int) -> str:
        """Reserve ``images`` of the user's images for this batch, atomically, or refuse it."""
        limits = await self.ledger.limits_for(key.user_id, key.guild_id)
        hold = NewJob("generate", key.user_id, key.guild_id, ZERO_COST, images,
                      params={"batch_id": batch_id, "allowance_hold": True})  # fmt: skip
        try:
            return (await self.ledger.reserve(hold, limits)).id
        except QuotaExceeded:
            remaining = await self.service.remaining(key.user_id, key.guild_id)
            raise QuotaExceeded(
                "user_daily_images",
                f"This batch needs {images} images; you have {remaining.images} left today. "
                "Nothing was started.",
                remaining.resets_at,
            ) from None

    async def get(self, batch_id: str, key: ApiKey) -> Batch:
        batch = await self.ledger.get_batch(batch_id)
        if batch is None or batch.user_id != key.user_id:
            raise NotFound(f"No batch with id {batch_id}.")
        return batch

    async def images_of(self, batch: Batch) -> dict[str, ImageRecord]:
        ids = [item.image_id for item in batch.items if item.image_id]
        images = await self.ledger.images_by_ids(ids)
        return {image.id: presented(image, self.service.store) for image in images}

    async def resume(self) -> int:
        """Start again the batches a restart interrupted (their done items are kept)."""
        unfinished = await self.ledger.unfinished_batches()
        for batch_id in unfinished:
            self._start(batch_id, None)  # crash recovery gave the old hold back
        return len(unfinished)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def wait_idle(self) -> None:
        """For tests and shutdown: until every running batch has finished."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _start(self, batch_id: str, hold: str | None) -> None:
        task = asyncio.create_task(self._run(batch_id, hold), name=f"batch {batch_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, batch_id: str, hold: str | None) -> None:
        try:
            batch = await self.ledger.get_batch(batch_id)
            key = await self.ledger.get_api_key(batch.key_id) if batch else None
            if batch is None or key is None:
                return
            gate = asyncio.Semaphore(ITEMS_AT_ONCE)
            left = [i for i in batch.items if i.state in ("queued", "running")]
            if hold is None and left and key.revoked_at is None:
                hold = await self._hold_again(key, batch_id, len(left))

            async def run_item(item: BatchItem) -> None:
                async with gate:
                    await self._run_item(batch, key, item, hold)

            await asyncio.gather(*(run_item(i) for i in left))
        finally:
            if hold is not None:  # what no item drew goes back to the user
                await self.ledger.refund(hold, "released")
        if self.service.closing:  # stopped, not finished: resumed at the next start
            log.info("batch %s stops with this process; it resumes at the next start", batch.id)
            return
        await self.ledger.finish_batch(batch.id)
        if batch.webhook_url and batch.webhook_state != "delivered":
            await self._notify(batch.id, key)

    async def _hold_again(self, key: ApiKey, batch_id: str, images: int) -> str | None:
        """A resumed batch holds what its remaining items need, if that is still free today;
        otherwise its items take their chance like any request."""
        try:
            return await self._hold_allowance(key, batch_id, images)
        except QuotaExceeded:
            log.info("resumed batch %s runs without a held allowance", batch_id)
            return None

    async def _key_revoked(self, key: ApiKey) -> bool:
        current = await self.ledger.get_api_key(key.id)
        return current is None or current.revoked_at is not None

    async def _run_item(
        self, batch: Batch, key: ApiKey, item: BatchItem, hold: str | None
    ) -> None:
        if await self._key_revoked(key):
            await self.ledger.update_batch_item(
                batch.id, item.position, "failed", None, "cancelled",
                "The API key was revoked, so this item was cancelled; nothing was charged.",
            )  # fmt: skip
            return
        await self.ledger.update_batch_item(batch.id, item.position, "running")
        try:
            result = await self.service.generate(
                GenerateRequest(
                    prompt=item.prompt,
                    user_id=key.user_id,
                    guild_id=key.guild_id,
                    model=batch.model,
                    idempotency_key=f"batch:{batch.id}:{item.position}",
                    metadata={"batch_id": batch.id, "position": str(item.position)},
                    allowance_hold=hold,
                )
            )
        except ShuttingDown:  # the process stops: the item waits for the batch's resumption
            await self.ledger.update_batch_item(batch.id, item.position, "queued")
            return
        except BotError as error:
            await self.ledger.update_batch_item(
                batch.id, item.position, "failed", None, error.code, error.user_message
            )
            return
        await self.service.record_delivery(result.job_id, "api")
        await self.ledger.update_batch_item(batch.id, item.position, "done", result.images[0].id)

    async def _notify(self, batch_id: str, key: ApiKey) -> None:
        batch = await self.ledger.get_batch(batch_id)
        if batch is None or batch.webhook_url is None:
            return
        from bot.public import public_batch  # its pydantic models: only once a batch ends

        payload = public_batch(batch, await self.images_of(batch)).to_json()
        delivery = await deliver_webhook(
            self.http,
            batch.webhook_url,
            payload,
            key.webhook_secret,
            delivery_id=batch.id,
            allow_private=self.allow_private_urls,
        )
        state = "delivered" if delivery.delivered else "failed"
        await self.ledger.record_webhook(batch.id, state, delivery.attempts)
        if not delivery.delivered:
            log.warning("webhook for batch %s not delivered: %s", batch.id, delivery.error)
