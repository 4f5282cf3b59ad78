"""This process's lease, renewed in the background, and the sweep that closes the jobs of
processes whose lease ran out (``bot.recovery``), so a killed process's jobs are settled or
refunded by the others within about one lease, without waiting for it to come back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from bot.errors import LedgerUnavailable
from bot.ledger import Ledger
from bot.recovery import CrashRecovery, RecoveryReport

log = logging.getLogger(__name__)


class LeaseKeeper:
    """Start with ``await keeper.start()`` (registers, recovers once), stop with ``stop()``."""

    def __init__(self, ledger: Ledger, recovery: CrashRecovery, lease_seconds: float) -> None:
        self.ledger = ledger
        self.recovery = recovery
        self.lease_seconds = lease_seconds
        self._tasks: list[asyncio.Task[None]] = []
        self._beats: list[Callable[[], Awaitable[None]]] = []

    def on_renewal(self, refresh: Callable[[], Awaitable[None]]) -> None:
        """Run ``refresh`` every beat (the shared Cloudflare pause is read so), on the sweep's
        task, never in the renewal's way."""
        self._beats.append(refresh)

    @property
    def instance_id(self) -> str:
        return self.ledger.leases.instance_id

    async def start(self, *, recover: bool = True) -> RecoveryReport:
        await self.ledger.leases.register(self.lease_seconds)
        # A runtime that recovers nothing (``sync``) only holds a lease.
        report = await self.recovery.run() if recover else RecoveryReport()
        self._tasks = [asyncio.create_task(self._keep(), name="lease keeper")]
        if recover or self._beats:
            beat = self._sweep_beat(sweeps=recover)
            self._tasks.append(asyncio.create_task(beat, name="orphan sweep"))
        return report

    async def stop(self) -> None:
        """Stop renewing and give the lease up: jobs still open become others' to close."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        try:
            await self.ledger.leases.release()
        except (LedgerUnavailable, ValueError) as exc:  # ValueError: the connection is gone
            log.warning("could not give the lease up (%s); it runs out", type(exc).__name__)

    async def sweep(self) -> RecoveryReport:
        return await self.recovery.run()

    async def _keep(self) -> None:
        """Renew every third of a lease (two renewals may fail before it runs out), on a task
        of its own: a long sweep (many orphans, a slow store) must never hold the renewal back,
        or this live process's jobs would become others' to close while it still runs them."""
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            try:
                if not await self.ledger.leases.renew(self.lease_seconds):
                    log.error(
                        "this process's lease had run out (stalled or cut off from the "
                        "database for %.0f s); its open jobs may have been closed by others",
                        self.lease_seconds,
                    )
            except LedgerUnavailable as exc:
                log.warning("could not renew the lease now: %s", exc.code)
            except Exception:
                log.exception("the lease keeper's renewal failed; trying again next beat")

    async def _sweep_beat(self, *, sweeps: bool) -> None:
        """Every third of a lease, the refreshes, then (unless ``sweeps`` is off) a sweep for
        orphans, one sweep at a time."""
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            try:
                for refresh in self._beats:
                    await refresh()
                if sweeps:
                    await self.sweep()
            except LedgerUnavailable as exc:
                log.warning("could not sweep for orphaned jobs now: %s", exc.code)
            except Exception:
                log.exception("the lease keeper's sweep failed; trying again next beat")
