"""Crash recovery: every job a stopped process left open is closed, by any live process.

It runs at start-up and then every half lease (``bot.leases``), over the *orphans*: open jobs
whose process holds no live lease (it was killed, its machine was lost, or it stopped with work
unfinished). Each is claimed first, so two processes never close the same job. A job records the
ids of its images before storing them, so for each orphan we can ask the store what it holds:
images found are recorded (marked ``recovered``) and charged, since the provider was paid for
them; a job with nothing stored is refunded.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from bot import imaging
from bot.catalog import ZERO_COST, Cost
from bot.image_records import StoredBytes, image_record
from bot.ledger import ImageRecord, Job, Ledger
from bot.stores.base import ImageStore, StoredImage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecoveryReport:
    settled: int = 0
    refunded: int = 0
    images_recovered: int = 0


class CrashRecovery:
    def __init__(self, ledger: Ledger, store: ImageStore) -> None:
        self.ledger = ledger
        self.store = store

    async def run(self) -> RecoveryReport:
        """Settle or refund the jobs stopped processes left open; record stored images nobody
        recorded."""
        await self.ledger.flights.forget_dead()  # their generations in flight ended with them
        settled = refunded = recovered = 0
        for job in await self.ledger.orphaned_jobs():
            if not await self.ledger.claim_job(job.id):
                continue  # another process took it, or it closed meanwhile
            was_settled, images = await self._close(job)
            settled += was_settled
            refunded += not was_settled
            recovered += images
        if settled or refunded:
            log.warning(
                "crash recovery: %d job(s) settled, %d refunded, %d stored image(s) recorded",
                settled, refunded, recovered,
            )  # fmt: skip
        return RecoveryReport(settled, refunded, recovered)

    async def _close(self, job: Job) -> tuple[bool, int]:
        """Settle what was made (True) or refund (False); how many stored images were found."""
        recorded = [i for i in await self.ledger.images_for_job(job.id) if not i.cached]
        known = {image.id for image in recorded}
        found = 0
        if job.state == "storing":
            for planned in job.planned_image_ids:
                if planned in known:
                    continue
                record = await self._recover_image(job, planned)
                if record is not None:
                    recorded.append(record)
                    found += 1
        if recorded and job.kind == "generate":
            unit = Cost(job.params["unit_micro_usd"], job.params["unit_milli_neurons"])
            made = len(recorded)
            await self.ledger.settle(
                job.id, made, Cost(unit.micro_usd * made, unit.milli_neurons * made)
            )
        elif recorded:
            await self.ledger.settle(job.id, 0, ZERO_COST)
        else:
            await self.ledger.refund(
                job.id, "interrupted", "The bot stopped before this finished."
            )
        await self.ledger.note_job(job.id, "closed by crash recovery (its process had stopped)")
        return bool(recorded), found

    async def _recover_image(self, job: Job, image_id: str) -> ImageRecord | None:
        key = await self.store.find(image_id)
        if key is None:
            return None
        data = await self.store.get(key)
        info = await asyncio.to_thread(imaging.probe, data)
        params: dict[str, Any] = job.params
        generated = job.kind == "generate"
        unit = Cost(params.get("unit_micro_usd", 0), params.get("unit_milli_neurons", 0))
        held = StoredBytes(StoredImage(key, self.store.url(key)), self.store.name,
                           info.content_type, info.width, info.height, len(data))  # fmt: skip
        record = image_record(
            job, image_id, held, cost=unit if generated else ZERO_COST, seed_shown=True,
            created_at=self.ledger.now_iso(), extra_metadata={"recovered": "true"},
        )  # fmt: skip
        await self.ledger.add_image(record)
        return record
