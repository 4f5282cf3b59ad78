"""The lease fence: a process that outlived its lease never hands out an image nobody paid for.

A process stalled past its lease (SIGSTOP, a VM pause, a long blocking call) can wake to find
that crash recovery in another process claimed its job and closed it (``bot.recovery``). Its
image records are fenced: ``Ledger.add_job_image`` writes one only while the job is open and
still this process's, so no image is recorded twice or without a charge. For the images it
could not record, ``LeaseFence.settle`` closes the job exactly, by what recovery did:

- refunded (nothing was stored when recovery looked): a *late charge*, one conditional
  statement that settles the job for them only if the quotas still have room, as a reservation
  counts; then they are recorded and delivered. No room: their bytes are deleted, nothing is
  recorded or charged, and the user is told (``TooLate``).
- settled (recovery found the stored images, recorded and charged them): what it recorded is
  delivered; bytes stored after it looked (not charged) are deleted.
- still open (recovery is closing it right now): waited for, a bounded time.
"""

from __future__ import annotations

import asyncio
import logging

from bot.backends import Backends
from bot.catalog import Cost
from bot.errors import LedgerUnavailable, TooLate
from bot.ledger import ImageRecord, Job, Ledger
from bot.ledger.records import Limits

log = logging.getLogger(__name__)

WAIT_POLLS, POLL_SECONDS = 120, 0.5  # recovery closes a claimed job in a few store calls
STILL_OPEN = (
    "This took too long here and another instance of the bot is finishing it; if it was "
    "made it appears in your gallery, charged once."
)


class LeaseFence:
    def __init__(self, ledger: Ledger, backends: Backends) -> None:
        self.ledger = ledger
        self.backends = backends

    async def settle(
        self,
        job: Job,
        limits: Limits,
        made: dict[int, ImageRecord],
        unrecorded: list[ImageRecord],
        images: int,
        cost: Cost,
    ) -> dict[int, ImageRecord]:
        """Charge ``images`` and ``cost`` for ``made`` and say what of it may be delivered:
        all of it when every image was recorded (the usual settle), else once the job another
        process closed is closed exactly. TooLate if nothing may be."""
        if not unrecorded:
            await self.ledger.settle(job.id, images, cost)
            return made
        now = await self._closed(job.id)
        if now.state == "refunded":
            if await self.ledger.late_charge(job, images, cost, limits):
                for record in unrecorded:
                    await self.ledger.add_image(record)
                log.warning("job %s outlived its lease and was refunded by crash recovery; "
                            "charged late", job.id)  # fmt: skip
                return made
            log.warning(
                "job %s outlived its lease and was refunded by crash recovery; no quota room "
                "to charge it late: not delivered, unbilled cost %d micro-USD, %d milli-Neurons",
                job.id, cost.micro_usd, cost.milli_neurons,
            )  # fmt: skip
            await self._unstore(unrecorded)
            raise TooLate()
        kept = {record.id: record for record in await self.ledger.images_for_job(job.id)}
        await self._unstore([r for r in unrecorded if r.id not in kept])
        delivered = {index: kept[r.id] for index, r in made.items() if r.id in kept}
        log.warning(
            "job %s outlived its lease; crash recovery settled it for %d image(s), %d of %d "
            "made here", job.id, now.images, len(delivered), len(made),
        )  # fmt: skip
        if not delivered:
            raise TooLate()
        return delivered

    async def settle_call(self, job: Job, limits: Limits, cost: Cost) -> bool:
        """Settle a model call's job (an enhancement, a content check: no images); False if
        recovery refunded it meanwhile and there is no room to charge it late (then its answer
        must not be used)."""
        if await self.ledger.settle(job.id, 0, cost):
            return True
        try:
            now = await self.ledger.get_job(job.id)
        except LedgerUnavailable:
            return True  # the settlement was deferred, and lands later
        if now is None or now.state != "refunded":
            return True  # settled, or its settlement deferred
        if await self.ledger.late_charge(job, 0, cost, limits):
            log.warning("job %s outlived its lease and was refunded by crash recovery; "
                        "charged late", job.id)  # fmt: skip
            return True
        log.warning("job %s outlived its lease and was refunded by crash recovery; no quota "
                    "room to charge it late: its answer is not used, unbilled cost %d micro-USD",
                    job.id, cost.micro_usd)  # fmt: skip
        return False

    async def _closed(self, job_id: str) -> Job:
        """The job once closed (recovery elsewhere may be closing it now); TooLate if it is
        still open after the wait (its images are then recovery's to settle)."""
        for _ in range(WAIT_POLLS):
            job = await self.ledger.get_job(job_id)
            assert job is not None
            if not job.is_open:
                return job
            await asyncio.sleep(POLL_SECONDS)
        raise TooLate(STILL_OPEN)

    async def _unstore(self, records: list[ImageRecord]) -> None:
        """Take bytes nobody is charged for out of the store (recorded nowhere)."""
        for record in records:
            try:
                await self.backends.delete(record.storage_key)
            except Exception:
                log.warning("could not remove unbilled image %s from the store", record.id)
